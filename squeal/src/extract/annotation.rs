//! SQL annotations: keys an application embeds in a statement comment,
//! `/* squeal:inv key1 key2 */` (format, encoder and parser in `marker::annotation`).
//!
//! squeal reads them from MariaDB ANNOTATE_ROWS events, MySQL Rows_query events
//! (`binlog_rows_query_log_events=ON`) and statement text in Query events. A malformed token
//! is logged and counted (`squeal_bad_annotations_total`); the other tokens and the rest of
//! the transaction are still processed. With `annotation_databases` set, a transaction's
//! annotations count only if it changed a row in one of those databases.

pub use marker::annotation::{comment, parse, AnnotationError};
