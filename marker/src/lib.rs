//! The contract every Squeal party shares.
//!
//! Applications, `squeal` and `squeal-router` must agree byte for byte on three formats, so
//! they live here, in a crate with no async runtime that any of them can link:
//!
//! - memcache key rules ([`key`]): what a legal key is, checked the same way everywhere;
//! - the SQL annotation format that embeds invalidation keys in a statement comment
//!   ([`annotation`]);
//! - the cold-cluster hold-off tombstone ([`holdoff`]);
//! - the memcache text lines Squeal writes and reads itself, and the lease rule: a lease
//!   placeholder or a stale item is a miss, never a value ([`memcache`]);
//! - remote-marker key naming and protocol ([`remote`]), and the invalidation batch wire
//!   format ([`batch`]).
//!
//! It also holds the one durable atomic file write every party's state files use
//! ([`durable`]), systemd's readiness notification ([`systemd`]) and the TLS settings
//! every party reads from PEM files ([`tls`]).

pub mod annotation;
pub mod batch;
pub mod durable;
pub mod holdoff;
pub mod key;
pub mod memcache;
pub mod remote;
pub mod systemd;
pub mod tls;
