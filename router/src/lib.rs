//! `squeal-router`: the regional memcache router.
//!
//! A request flows through the modules in this order:
//!
//! ```text
//! listener -> client (read buffer, a reply_queue slot) -> protocol (parse in place)
//!          -> route (Route trait) -> route::pool (placement: hash to a server)
//!          -> backend (pipelined connection, meta codec) -> reply_queue (slot filled)
//!          -> client (ready replies written in order)
//! ```
//!
//! The modules are layered, each importing only those below it: counters ([`stats`]),
//! [`socket`], [`protocol`], [`reply_queue`], [`placement`], [`config`], [`tls`], [`plan`],
//! [`backend`], [`route`], [`invalidation`], [`admin`], [`client`] and [`listener`],
//! [`worker`] (router/README.md, "Layout").
//!
//! Every worker thread owns a current-thread tokio runtime, its own listening socket
//! (`SO_REUSEPORT`), its client connections and its own backend connections, so a request
//! never crosses threads on the hot path. See [`worker`] for the threading model and
//! [`route`] for the seam where route trees plug in.

pub mod admin;
pub mod backend;
pub mod client;
pub mod config;
pub mod convert;
pub mod invalidation;
pub mod listener;
pub mod lograte;
pub mod placement;
pub mod plan;
pub mod protocol;
pub mod reply_queue;
pub mod route;
pub mod socket;
pub mod stats;
pub mod tls;
pub mod worker;
