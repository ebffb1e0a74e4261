//! `squeal`: tails a MySQL/MariaDB binlog and turns committed transactions into memcache
//! invalidations, delivered at least once.
//!
//! Layers, each importing only those before it: [`model`] (what flows between stages:
//! positions, committed transactions and their keys) -> [`config`] (plain data and its
//! validation) -> [`source`] (binlog connection, event decoding, table schemas) ->
//! [`extract`] (the processor: events to committed transactions and their keys) ->
//! [`batch`] -> [`sink`] (memcache, router, Kafka, debug) -> [`delivery`] (the dispatcher:
//! in-flight bound, in-order acks, retries) -> [`checkpoint`] (what the sinks acknowledged)
//! -> [`reader`] (live stream through processor into batcher) -> [`run`] (wiring only).
//! [`check`] (`--check`), [`metrics`] and [`ratelimit`] stand beside them.

pub mod batch;
pub mod check;
pub mod checkpoint;
pub mod config;
pub mod delivery;
pub mod extract;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod reader;
pub mod run;
pub mod sink;
pub mod source;
