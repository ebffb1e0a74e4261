//! Counters for `stats` and Prometheus. Each worker writes only its own [`WorkerStats`]
//! (a relaxed load and store, no locked instruction on the hot path); readers sum all
//! workers. Per-server counters change rarely (connects, errors) and are shared atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::protocol::Cmd;
use crate::worker::Plan;

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

/// Process-wide view used by `stats` and the metrics exporter, and the slot a reload
/// publishes a new [`Plan`] in: workers compare `generation` with theirs between requests.
pub struct Shared {
    pub started: Instant,
    pub workers: Vec<Arc<WorkerStats>>,
    pub threads: usize,
    plan: RwLock<Arc<Plan>>,
    /// Bumped by every published plan.
    pub generation: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Shared {
    pub fn new(plan: Arc<Plan>) -> Shared {
        let threads = plan.config.workers;
        Shared {
            started: Instant::now(),
            workers: (0..threads)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            threads,
            plan: RwLock::new(plan),
            generation: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// The plan workers should be running.
    pub fn plan(&self) -> Arc<Plan> {
        match self.plan.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes a new plan; workers switch to it before their next request.
    pub fn publish(&self, plan: Arc<Plan>) {
        match self.plan.write() {
            Ok(mut p) => *p = plan,
            Err(poisoned) => *poisoned.into_inner() = plan,
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Every server of every pool of the current plan.
    pub fn servers(&self) -> Vec<Arc<ServerStats>> {
        self.plan().servers.iter().flatten().cloned().collect()
    }

    pub fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// The body of `stats` (memcached's `STAT name value` lines and `END`).
    pub fn render(&self, args: &[u8]) -> Vec<u8> {
        let mut s = String::new();
        let args = std::str::from_utf8(args).unwrap_or("").trim();
        match args {
            "" => self.general(&mut s),
            "servers" => self.server_lines(&mut s),
            "commands" => self.command_lines(&mut s),
            "routes" => self.route_lines(&mut s),
            a if a.starts_with("route ") => {
                let mut it = a.split_ascii_whitespace().skip(1);
                match (it.next(), it.next(), it.next()) {
                    (Some(op), Some(key), None) => {
                        let plan = self.plan();
                        match crate::route::tree::describe(&plan, op, key.as_bytes()) {
                            Ok(lines) => {
                                for l in lines {
                                    let _ = write!(s, "STAT {l}\r\n");
                                }
                            }
                            Err(e) => return format!("CLIENT_ERROR {e}\r\n").into_bytes(),
                        }
                    }
                    _ => return b"CLIENT_ERROR usage: stats route <operation> <key>\r\n".to_vec(),
                }
            }
            _ => return b"ERROR\r\n".to_vec(),
        }
        s.push_str("END\r\n");
        s.into_bytes()
    }

    fn general(&self, s: &mut String) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut stat = |k: &str, v: &dyn std::fmt::Display| {
            let _ = write!(s, "STAT {k} {v}\r\n");
        };
        stat("pid", &std::process::id());
        stat("uptime", &self.started.elapsed().as_secs());
        stat("time", &now);
        stat(
            "version",
            &concat!("squeal-router-", env!("CARGO_PKG_VERSION")),
        );
        stat("threads", &self.threads);
        stat("curr_connections", &self.curr_connections());
        stat(
            "total_connections",
            &self.sum(|w| w.total_connections.get()),
        );
        stat(
            "rejected_connections",
            &self.sum(|w| w.rejected_connections.get()),
        );
        for cmd in [Cmd::Get, Cmd::Set, Cmd::Delete, Cmd::Touch, Cmd::FlushAll] {
            let v = self.ops(cmd);
            stat(&format!("cmd_{}", cmd.name()), &v);
        }
        stat("get_hits", &self.sum(|w| w.get_hits.get()));
        stat("get_misses", &self.sum(|w| w.get_misses.get()));
        stat("client_errors", &self.sum(|w| w.client_errors.get()));
        stat("output_overflows", &self.sum(|w| w.output_overflows.get()));
        stat(
            "buffered_output_bytes",
            &crate::reply_queue::buffered_output(),
        );
        stat("backend_errors", &self.sum(|w| w.backend_errors.get()));
        stat("bytes_read", &self.sum(|w| w.bytes_read.get()));
        stat("bytes_written", &self.sum(|w| w.bytes_written.get()));
        for cmd in Cmd::ALL {
            let v = self.ops(cmd);
            stat(&format!("ops_{}", cmd.name()), &v);
        }
        self.route_lines(s);
        self.server_lines(s);
    }

    /// Route tree and reload counters (`stats routes`, and part of `stats`).
    fn route_lines(&self, s: &mut String) {
        let mut stat = |k: &str, v: u64| {
            let _ = write!(s, "STAT {k} {v}\r\n");
        };
        stat("route_failovers", self.sum(|w| w.failovers.get()));
        stat("route_gutter_sets", self.sum(|w| w.gutter_sets.get()));
        stat("route_async_failures", self.sum(|w| w.async_failures.get()));
        stat("route_backfills", self.sum(|w| w.backfills.get()));
        stat("route_warm_hits", self.sum(|w| w.warm_hits.get()));
        stat("route_holdoffs", self.sum(|w| w.holdoffs.get()));
        stat("route_tko_fast_fails", self.sum(|w| w.tko_fast_fails.get()));
        stat("config_generation", self.generation.load(Relaxed));
        stat("config_reloads", self.reloads.load(Relaxed));
        stat("config_reload_failures", self.reload_failures.load(Relaxed));
    }

    fn server_lines(&self, s: &mut String) {
        for sv in &self.servers() {
            let p = format!("server:{}:{}", sv.pool, sv.addr);
            let _ = write!(s, "STAT {p}:state {}\r\n", sv.state());
            let _ = write!(s, "STAT {p}:connections_up {}\r\n", sv.up.load(Relaxed));
            let _ = write!(s, "STAT {p}:connects {}\r\n", sv.connects.load(Relaxed));
            let _ = write!(
                s,
                "STAT {p}:connect_failures {}\r\n",
                sv.connect_failures.load(Relaxed)
            );
            let _ = write!(s, "STAT {p}:timeouts {}\r\n", sv.timeouts.load(Relaxed));
            let _ = write!(s, "STAT {p}:desyncs {}\r\n", sv.desyncs.load(Relaxed));
            let _ = write!(s, "STAT {p}:resets {}\r\n", sv.resets.load(Relaxed));
            let _ = write!(s, "STAT {p}:errors {}\r\n", sv.errors.load(Relaxed));
            let _ = write!(s, "STAT {p}:tko_marks {}\r\n", sv.tko_marks.load(Relaxed));
            let _ = write!(
                s,
                "STAT {p}:probe_failures {}\r\n",
                sv.probe_failures.load(Relaxed)
            );
        }
    }

    fn command_lines(&self, s: &mut String) {
        for cmd in Cmd::ALL {
            let _ = write!(s, "STAT {} {}\r\n", cmd.name(), self.ops(cmd));
        }
    }

    pub fn ops(&self, cmd: Cmd) -> u64 {
        self.sum(|w| w.ops[cmd.index()].get())
    }

    pub fn curr_connections(&self) -> u64 {
        self.sum(|w| w.total_connections.get())
            .saturating_sub(self.sum(|w| w.closed_connections.get()))
    }
}
