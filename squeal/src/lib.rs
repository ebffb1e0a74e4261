//! `squeal`: tails a MySQL/MariaDB binlog and turns committed transactions into memcache
//! invalidations, delivered at least once.
//!
//! Data flows through the modules in this order: source -> extract -> batch -> sink, with
//! checkpoint recording what the sink acknowledged.
