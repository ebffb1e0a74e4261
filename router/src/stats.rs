//! Counters that the `stats` command (`crate::admin::stats`) and Prometheus
//! (`crate::admin::metrics`) read. Each worker writes only its own [`WorkerStats`] (a
//! relaxed load and store, no locked instruction on the hot path); readers sum all
//! workers. Per-server counters change rarely (connects, errors) and are process atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::protocol::Cmd;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Single-writer increment: only the owning worker calls it.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One worker's counters.
#[derive(Default)]
pub struct WorkerStats {
    pub ops: [Counter; Cmd::ALL.len()],
    pub get_hits: Counter,
    pub get_misses: Counter,
    pub closed_connections: Counter,
    pub total_connections: Counter,
    pub rejected_connections: Counter,
    pub client_errors: Counter,
    /// Clients disconnected for leaving too many reply bytes unread.
    pub output_overflows: Counter,
    /// Clients of a TLS port that spoke plain text first: told so and closed.
    pub not_tls: Counter,
    /// Clients of a TLS port whose handshake failed or did not finish in time.
    pub tls_handshake_failures: Counter,
    pub backend_errors: Counter,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    /// Route trees: requests a failover route sent to a later child.
    pub failovers: Counter,
    /// Sets that landed in a gutter (a failover child after the first) with a short TTL.
    pub gutter_sets: Counter,
    /// Background sends of fan-out routes (all-async, all-initial, backfills) that failed.
    pub async_failures: Counter,
    /// Values copied into a layer that missed (master-slave-l1, warm-up).
    pub backfills: Counter,
    /// Warm-up: reads answered from the warm pool.
    pub warm_hits: Counter,
    /// Warm-up: deletes that left a hold-off tombstone in the cold pool.
    pub holdoffs: Counter,
    /// Requests refused at once because their server is marked down (TKO).
    pub tko_fast_fails: Counter,
    /// Keys of an ejected server sent to another server of an ejecting pool.
    pub eject_rehashes: Counter,
}

/// One memcached server of a pool, across all workers.
pub struct ServerStats {
    pub pool: String,
    pub addr: String,
    /// Connections currently up (all workers).
    pub up: AtomicI64,
    /// Connections configured (all workers).
    pub conns: AtomicI64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
    /// Connections reset because a reply did not answer the request it was matched to
    /// (wrong or missing opaque): each one failed only the requests on that connection.
    pub desyncs: AtomicU64,
    /// Connections that went down after being up (server closed, error, timeout, desync).
    pub resets: AtomicU64,
    /// Health: consecutive failed requests (reset by any reply).
    pub fails: AtomicU32,
    /// Health: marked down (TKO); requests fail at once until a probe succeeds.
    pub tko: AtomicBool,
    /// Times the server was marked down.
    pub tko_marks: AtomicU64,
    pub probe_failures: AtomicU64,
}

impl ServerStats {
    pub fn new(pool: &str, addr: &str) -> ServerStats {
        ServerStats {
            pool: pool.to_string(),
            addr: addr.to_string(),
            up: AtomicI64::new(0),
            conns: AtomicI64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            desyncs: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            tko: AtomicBool::new(false),
            tko_marks: AtomicU64::new(0),
            probe_failures: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> &'static str {
        let up = self.up.load(Relaxed);
        if self.tko.load(Relaxed) {
            "tko"
        } else if up <= 0 {
            "down"
        } else if up < self.conns.load(Relaxed) {
            "partial"
        } else {
            "up"
        }
    }
}
