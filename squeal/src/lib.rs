//! `squeal`: tails a MySQL/MariaDB binlog and turns committed transactions into memcache
//! invalidations, delivered at least once.
//!
//! Data flows through the modules in this order: [`source`] (binlog connection, event
//! decoding, schemas) -> [`extract`] (row rules, annotations, outbox tables, transaction
//! assembly) -> [`batch`] -> [`sink`], with [`checkpoint`] recording what the sinks
//! acknowledged. [`run`] wires them together.

pub mod batch;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod delivery;
pub mod extract;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod reader;
pub mod run;
pub mod sink;
pub mod source;
