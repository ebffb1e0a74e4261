//! Outbox tables: the application inserts one row per key into a table in the same
//! transaction; squeal takes the key from the configured column of every row written to it
//! (after image for INSERT/UPDATE, before image for DELETE). The BLACKHOLE engine works:
//! rows are logged to the binlog and never stored.
//!
//! ```sql
//! CREATE TABLE cache_outbox (cache_key VARBINARY(250) NOT NULL) ENGINE=BLACKHOLE;
//! BEGIN; UPDATE users SET ... WHERE id=42;
//!        INSERT INTO cache_outbox VALUES ('user:42'), ('feed:42'); COMMIT;
//! ```
//!
//! The plan for an outbox table is built with the rules' (see `extract::plan::plan`); rows
//! are decoded by the same code.
