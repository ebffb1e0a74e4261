//! `squeal-inspect`: measures how consistent the caches are, in nines per table.
//!
//! It follows the binlog as a replica of its own ([`follow`], squeal's connection and
//! extraction code), samples committed keys ([`sample`]), and at each horizon after the
//! commit reads the key from every server of every target that should have lost it
//! ([`probe`], a read that fills and extends nothing). Each copy found is placed in time
//! by its CAS against the server's heartbeat watermarks ([`classify`]): stored before the
//! commit and still there is stale; stored after the inspector received the commit is a
//! refill (consistent); in between is undetermined, never consistent. [`tally`] counts
//! the verdicts per table, target and horizon as metrics and as a summary table.
//!
//! One verdict per (sample, target, horizon): the inspector does not know the routers'
//! placement, so it reads every server of the target and keeps the worst answer (stale,
//! then unreachable, undetermined, refilled, absent). A down server therefore makes its
//! target's checks unreachable until it answers again: reported as such, never as stale.

pub mod classify;
pub mod config;
pub mod follow;
pub mod probe;
pub mod sample;
pub mod tally;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};

use classify::{classify, now_micros, Copy, Micros, Verdict};
use config::{Holds, InspectConfig};
use probe::Server;
use sample::{Pending, Sample, Sampler};
use tally::{horizon_label, Tally};

/// When a one-shot run stops sampling (then it waits for the last horizon of what it
/// sampled and returns).
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    pub duration: Option<Duration>,
    pub samples: Option<u64>,
}

impl Until {
    pub fn is_set(&self) -> bool {
        self.duration.is_some() || self.samples.is_some()
    }
}

/// Checks running at once, at most (each holds a few reads in flight).
const MAX_CHECKS_IN_FLIGHT: usize = 256;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub tally: Tally,
    pub samples: u64,
    /// Samples and checks dropped, by reason.
    pub dropped: Vec<(&'static str, u64)>,
}

/// A target: its name, what it holds, its servers.
struct Target {
    name: String,
    holds: Holds,
    servers: Vec<Arc<Server>>,
}

/// Reads per second, at most (a token bucket holding one second's worth).
struct ReadBudget {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl ReadBudget {
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec)
            .min(self.per_sec);
        self.at = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// Counts a dropped sample or check (`squeal_inspect_dropped_total{reason}`).
#[derive(Default)]
struct Drops(Mutex<Vec<(&'static str, u64)>>);

impl Drops {
    fn add(&self, reason: &'static str) {
        metrics::counter!("squeal_inspect_dropped_total", "reason" => reason).increment(1);
        let mut d = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match d.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => {
                tracing::warn!(reason, "first sample or check dropped for this reason (counted in squeal_inspect_dropped_total)");
                d.push((reason, 1));
            }
        }
    }
}

/// Runs the inspector: until stopped (SIGTERM/SIGINT), or as `until` says.
pub async fn run(cfg: InspectConfig, until: Until) -> anyhow::Result<Report> {
    let horizons = cfg.horizons();
    let longest = *horizons.last().expect("validated: at least one horizon");
    // Heartbeats are kept for the longest horizon plus two minutes of inspector lag.
    let keep = (longest + Duration::from_secs(120)).as_micros() as Micros;
    let timeout = Duration::from_millis(cfg.memcache.timeout_ms);
    let targets: Arc<Vec<Target>> = Arc::new(
        cfg.targets
            .iter()
            .map(|t| Target {
                name: t.name.clone(),
                holds: t.holds,
                servers: t
                    .servers
                    .iter()
                    .map(|a| Arc::new(Server::new(a.clone(), t.name.clone(), timeout, keep)))
                    .collect(),
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in targets.iter() {
        for s in &t.servers {
            tasks.push(tokio::spawn(heartbeats(
                s.clone(),
                cfg.memcache.heartbeat_key.clone(),
                Duration::from_millis(cfg.memcache.heartbeat_ms),
            )));
        }
    }
    let pending = Arc::new(Mutex::new(Pending::new(&horizons, cfg.sample.max_pending)));
    let wake = Arc::new(Notify::new());
    let tally = Arc::new(Mutex::new(Tally::new(horizons.clone())));
    let drops = Arc::new(Drops::default());
    let (done_tx, done_rx) = watch::channel(false);
    let checker = tokio::spawn(checker(
        Checker {
            pending: pending.clone(),
            wake: wake.clone(),
            targets: targets.clone(),
            tally: tally.clone(),
            drops: drops.clone(),
            horizons: horizons.clone(),
            slow: Duration::from_millis(cfg.memcache.slow_ms),
        },
        ReadBudget {
            per_sec: cfg.sample.max_reads_per_sec as f64,
            tokens: cfg.sample.max_reads_per_sec as f64,
            at: Instant::now(),
        },
        done_rx,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = stop_tx.send(true);
        });
    }
    if let Some(d) = until.duration {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = stop_tx.send(true);
        });
    }
    let mut sampler = Sampler::new(cfg.sample.rate, &cfg.sample.tables, now_micros());
    let margin = cfg.sample.clock_margin_ms * 1000;
    let prefix = cfg.sample.marker_prefix.clone();
    let mut samples = 0u64;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let follow_result = follow::follow(&cfg, stop_rx, |c| {
        if *stop_tx.borrow() {
            return;
        }
        // MySQL 8 gives the commit time in microseconds; otherwise the event's whole
        // second, which is no later than the commit.
        let commit_lo = c
            .commit_us
            .unwrap_or(c.committed.commit_ts as u64 * 1_000_000)
            .saturating_sub(margin);
        if c.committed.commit_ts != 0 {
            metrics::gauge!("squeal_inspect_receive_lag_seconds").set(
                c.received
                    .saturating_sub(c.committed.commit_ts as u64 * 1_000_000)
                    as f64
                    / 1e6,
            );
        }
        let position = match &c.committed.gtid {
            Some(g) => format!("{} (gtid {g})", c.committed.pos),
            None => c.committed.pos.to_string(),
        };
        seen.clear();
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (table, key) in c.origins {
            if seen.insert(key.clone()) {
                keys.push((table, key));
            }
        }
        // Keys the rules and outboxes did not give came from annotations.
        let _ = c.committed.keys.for_each(|k| {
            if !seen.contains(k) {
                seen.insert(k.to_vec());
                keys.push(("annotation".into(), k.to_vec()));
            }
        });
        for (table, key) in keys {
            if !sampler.wants(&table) {
                continue;
            }
            if marker::key::validate(&key).is_err() {
                drops.add("bad_key");
                continue;
            }
            let Ok(key) = String::from_utf8(key) else {
                drops.add("bad_key");
                continue;
            };
            metrics::counter!("squeal_inspect_samples_total", "table" => table.clone())
                .increment(1);
            let s = Sample {
                marker: !prefix.is_empty() && key.starts_with(prefix.as_str()),
                key,
                table: table.into(),
                position: position.clone(),
                commit_lo,
                received: c.received,
            };
            let added = {
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                let ok = p.push(s);
                metrics::gauge!("squeal_inspect_pending").set(p.len() as f64);
                ok
            };
            if !added {
                drops.add("pending_full");
                continue;
            }
            wake.notify_one();
            samples += 1;
            if until.samples.is_some_and(|n| samples >= n) {
                let _ = stop_tx.send(true);
                return;
            }
        }
    })
    .await;
    metrics::gauge!("squeal_inspect_up").set(0.0);
    if follow_result.is_ok() && until.is_set() {
        tracing::info!(samples, wait = ?longest, "sampling done; waiting for the last horizon");
    }
    let _ = done_tx.send(true);
    wake.notify_one();
    if follow_result.is_ok() && until.is_set() {
        let _ = checker.await;
    } else {
        checker.abort();
    }
    for t in tasks {
        t.abort();
    }
    follow_result?;
    let tally = tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let dropped = drops.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Report {
        tally,
        samples,
        dropped,
    })
}

/// Stores the heartbeat key on `server` every `every`; logs when the server stops and
/// starts answering.
async fn heartbeats(server: Arc<Server>, key: String, every: Duration) {
    let mut failing = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match server.heartbeat(&key).await {
            Ok(()) => {
                if failing {
                    tracing::info!(server = %server.addr, target = %server.target, "server answers again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(server = %server.addr, target = %server.target, error = %e, "server does not answer the heartbeat: its checks are unreachable until it does");
                    failing = true;
                }
            }
        }
    }
}

struct Checker {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    targets: Arc<Vec<Target>>,
    tally: Arc<Mutex<Tally>>,
    drops: Arc<Drops>,
    horizons: Vec<Duration>,
    slow: Duration,
}

/// Runs every check when it comes due, within the read budget; returns once `done` is set
/// and nothing is pending or in flight.
async fn checker(c: Checker, mut budget: ReadBudget, done: watch::Receiver<bool>) {
    let c = Arc::new(c);
    let in_flight = Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT));
    loop {
        let (due, next) = {
            let mut p = c.pending.lock().unwrap_or_else(|e| e.into_inner());
            let now = now_micros();
            let due = p.pop_due(now);
            metrics::gauge!("squeal_inspect_pending").set(p.len() as f64);
            (due, p.next_due())
        };
        let Some((h, due_at, sample)) = due else {
            if *done.borrow() && next.is_none() {
                break;
            }
            let wait = next
                .map(|d| Duration::from_micros(d.saturating_sub(now_micros())))
                .unwrap_or(Duration::from_millis(200))
                .min(Duration::from_millis(200));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = c.wake.notified() => {}
            }
            continue;
        };
        let cost: usize = c
            .targets
            .iter()
            .filter(|t| (t.holds == Holds::Markers) == sample.marker)
            .map(|t| t.servers.len())
            .sum();
        if !budget.take(cost) {
            c.drops.add("read_rate");
            continue;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let late = now_micros().saturating_sub(due_at);
        metrics::histogram!("squeal_inspect_check_delay_seconds").record(late as f64 / 1e6);
        let c2 = c.clone();
        tokio::spawn(async move {
            check(&c2, h, &sample).await;
            drop(permit);
        });
    }
    // Wait for the checks in flight.
    let _ = in_flight.acquire_many(MAX_CHECKS_IN_FLIGHT as u32).await;
}

/// Reads `sample`'s key from every server of every target that should have lost it, and
/// counts one verdict per target.
async fn check(c: &Checker, h: usize, sample: &Sample) {
    let horizon = horizon_label(c.horizons[h]);
    metrics::counter!("squeal_inspect_checks_total", "table" => sample.table.to_string(), "horizon" => horizon.clone())
        .increment(1);
    for t in c
        .targets
        .iter()
        .filter(|t| (t.holds == Holds::Markers) == sample.marker)
    {
        let reads =
            futures_util::future::join_all(t.servers.iter().map(|s| s.read(&sample.key))).await;
        metrics::counter!("squeal_inspect_reads_total").increment(reads.len() as u64);
        let mut worst = Verdict::Absent;
        for (s, (copy, took)) in t.servers.iter().zip(reads) {
            if took > c.slow {
                metrics::counter!("squeal_inspect_slow_reads_total", "target" => t.name.clone())
                    .increment(1);
            }
            let v = s.with_marks(|m| classify(copy, sample.commit_lo, sample.received, m));
            match (v, copy) {
                (Verdict::Unreachable, Copy::Unreachable(reason)) => {
                    metrics::counter!("squeal_inspect_unreachable_total", "target" => t.name.clone(), "reason" => reason)
                        .increment(1);
                }
                (Verdict::Stale, Copy::Present { cas }) => {
                    let watermark = s.with_marks(|m| m.stored_before(sample.commit_lo));
                    tracing::warn!(
                        key = %sample.key,
                        server = %s.addr,
                        cluster = %t.name,
                        horizon = %horizon,
                        position = %sample.position,
                        table = %sample.table,
                        cas,
                        watermark = watermark.unwrap_or(0),
                        "stale copy: stored before the commit and still cached"
                    );
                }
                _ => {}
            }
            worst = worse(worst, v);
        }
        c.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .count(&sample.table, &t.name, h, worst);
    }
}

/// The verdict of a target from two of its servers' answers: stale wins (a stale copy is
/// proof), then unreachable (the key may live on the silent server), then undetermined,
/// refilled, absent.
fn worse(a: Verdict, b: Verdict) -> Verdict {
    fn rank(v: Verdict) -> u8 {
        match v {
            Verdict::Absent => 0,
            Verdict::Refilled => 1,
            Verdict::Undetermined => 2,
            Verdict::Unreachable => 3,
            Verdict::Stale => 4,
        }
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_takes_its_worst_answer() {
        use Verdict::*;
        assert_eq!(worse(Absent, Refilled), Refilled);
        assert_eq!(worse(Unreachable, Absent), Unreachable);
        assert_eq!(worse(Unreachable, Stale), Stale);
        assert_eq!(worse(Undetermined, Refilled), Undetermined);
    }

    #[test]
    fn the_read_budget_refills_at_its_rate() {
        let mut b = ReadBudget {
            per_sec: 100.0,
            tokens: 100.0,
            at: Instant::now(),
        };
        assert!(b.take(60));
        assert!(!b.take(60), "only 40 left");
        b.at -= Duration::from_millis(500);
        assert!(b.take(60), "half a second gave 50 more");
    }
}
