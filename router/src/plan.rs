//! The plan workers run, and the slot it is published in.
//!
//! `main` builds a [`Plan`] at start and the reload builds one from every valid config;
//! [`Process::publish`] hands it to the workers, which switch before their next request.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::Config;
use crate::placement::Placement;
use crate::protocol::Cmd;
use crate::stats::{ServerStats, WorkerStats};

/// What workers run: a validated config with its placements and per-server stats. Built
/// by `main` at start and on every reload, process read-only.
pub struct Plan {
    pub config: Config,
    pub placements: Vec<Arc<Placement>>,
    /// Per pool, per server.
    pub servers: Vec<Vec<Arc<ServerStats>>>,
}

impl Plan {
    pub fn new(config: Config) -> Plan {
        Plan::next(config, None)
    }

    /// A plan for `config` that keeps the stats (and health) of every server `previous`
    /// has in the same pool.
    pub fn next(config: Config, previous: Option<&Plan>) -> Plan {
        let placements = config
            .pools
            .iter()
            .map(|p| Arc::new(p.placement()))
            .collect();
        let old = |pool: &str, addr: &str| {
            previous.and_then(|prev| {
                prev.servers
                    .iter()
                    .flatten()
                    .find(|s| s.pool == pool && s.addr == addr)
                    .cloned()
            })
        };
        let servers: Vec<Vec<Arc<ServerStats>>> = config
            .pools
            .iter()
            .map(|p| {
                p.servers
                    .iter()
                    .map(|s| {
                        old(&p.name, &s.label)
                            .unwrap_or_else(|| Arc::new(ServerStats::new(&p.name, &s.label)))
                    })
                    .collect()
            })
            .collect();
        Plan {
            config,
            placements,
            servers,
        }
    }
}

/// What every thread of the process shares: the slot a reload publishes a new [`Plan`] in
/// (workers compare `generation` with theirs between requests), and every worker's
/// counters, which the `stats` command and the metrics exporter sum.
pub struct Process {
    pub started: Instant,
    pub workers: Vec<Arc<WorkerStats>>,
    pub threads: usize,
    plan: RwLock<Arc<Plan>>,
    /// Bumped by every published plan.
    pub generation: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl Process {
    pub fn new(plan: Arc<Plan>) -> Process {
        let threads = plan.config.workers;
        Process {
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

    pub fn ops(&self, cmd: Cmd) -> u64 {
        self.sum(|w| w.ops[cmd.index()].get())
    }

    pub fn curr_connections(&self) -> u64 {
        self.sum(|w| w.total_connections.get())
            .saturating_sub(self.sum(|w| w.closed_connections.get()))
    }
}
