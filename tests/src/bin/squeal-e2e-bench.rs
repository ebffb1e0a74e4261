//! End-to-end benchmark: a region on loopback, writers committing to MariaDB at three rates
//! (paced, faster, full speed) while readers do look-aside caching through the routers.
//! For each rate it prints commit-to-delete latency measured from outside the pipeline
//! (p50/p99/p999), deletes per packet, squeal's lag, and the stale keys found after the
//! writers stop and the pipeline drains, and the nines squeal-inspect measured (5 % of the
//! commits read back from both clusters at 1 s and 5 s; its reads are part of the load).
//! A second table says where the time goes at each rate: the mean time a packet's first
//! key waited in squeal's batcher, squeal's sink round trip to the routers'
//! acknowledgement, and the routers' apply time (deletes to every cluster), from the
//! programs' own histograms.
//!
//!   bash tests/bench/e2e.sh        (builds in release, then runs this)

use std::time::Duration;

use anyhow::Result;
use harness::inspect::{self, Inspector};
use harness::region::{Region, RegionOptions};
use harness::squeal::Squeal;
use harness::workload::{self, WorkloadOptions};

/// Mean and approximate median of squeal's `squeal_keys_per_packet` histogram since
/// `before` (cumulative bucket counts and sum/count).
fn keys_per_packet(squeal: &Squeal, before: &Histogram) -> (f64, f64) {
    let now = Histogram::read(squeal);
    let count = now.count - before.count;
    let mean = (now.sum - before.sum) / count.max(1.0);
    let half = count / 2.0;
    // Cumulative bucket counts; a bucket absent before (first run) counted zero then.
    let median = now
        .buckets
        .iter()
        .find(|(le, n)| {
            let b = before
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, b)| *b);
            n - b >= half
        })
        .map_or(f64::NAN, |(le, _)| *le);
    (mean, median)
}

#[derive(Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// The sum and count of every series of histogram `name` in a Prometheus text (all label
/// sets added up): a mean over an interval is the difference of two readings.
fn sum_count(text: &str, name: &str) -> (f64, f64) {
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let series = key.split('{').next().unwrap_or(key);
        let v: f64 = value.parse().unwrap_or(0.0);
        if series == format!("{name}_sum") {
            sum += v;
        } else if series == format!("{name}_count") {
            count += v;
        }
    }
    (sum, count)
}

/// The stages of one invalidation, as the programs measure them: (label, histogram, from
/// squeal or from the routers).
const STAGES: [(&str, &str, bool); 3] = [
    ("batcher wait", "squeal_batch_wait_seconds", true),
    // The round trip includes the routers' apply time.
    ("sink round trip", "squeal_sink_latency_seconds", true),
    (
        "router apply",
        "squeal_router_invalidation_apply_seconds",
        false,
    ),
];

/// Each stage's (sum, count) now.
fn stages(region: &Region) -> Vec<(f64, f64)> {
    let squeal = region
        .squeal
        .as_ref()
        .and_then(|s| s.metrics_text().ok())
        .unwrap_or_default();
    let routers: Vec<String> = region
        .routers
        .iter()
        .filter_map(|r| r.metrics_text().ok())
        .collect();
    STAGES
        .iter()
        .map(|(_, name, in_squeal)| {
            if *in_squeal {
                sum_count(&squeal, name)
            } else {
                routers.iter().fold((0.0, 0.0), |(s, c), t| {
                    let (s2, c2) = sum_count(t, name);
                    (s + s2, c + c2)
                })
            }
        })
        .collect()
}

impl Histogram {
    fn read(squeal: &Squeal) -> Histogram {
        let text = squeal.metrics_text().unwrap_or_default();
        let mut h = Histogram::default();
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if let Some(rest) = key.strip_prefix("squeal_keys_per_packet_bucket{le=\"") {
                let le = rest.trim_end_matches("\"}");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(0.0)
                };
                h.buckets.push((le, value));
            } else if key == "squeal_keys_per_packet_sum" {
                h.sum = value;
            } else if key == "squeal_keys_per_packet_count" {
                h.count = value;
            }
        }
        h
    }
}

/// A number from the environment, or `default` when unset or not a number.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let seconds: u64 = env_or("SQUEAL_BENCH_SECONDS", 10);
    // Look-aside reader threads (4): closed loops that keep both cores busy, so every stage
    // also waits for a core; 0 shows the pipeline on an otherwise idle machine.
    let readers: usize = env_or("SQUEAL_BENCH_READERS", 4);
    let mut region = Region::start(&RegionOptions::default()).await?;
    let (users, probes) = (10_000, 50);
    workload::create_schema(&region.db, users + probes).await?;
    region.start_squeal(workload::EXTRACT)?;
    let inspector = Inspector::start(
        &inspect::config(
            &region,
            workload::EXTRACT,
            "rate = 0.05\nhorizons_ms = [1000, 5000]\nmax_reads_per_sec = 5000\n",
        ),
        &[],
    )?;
    let horizons = ["1s", "5s"];
    println!(
        "region: MariaDB, 2 clusters x 2 memcached + regional, 2 routers, squeal; {users} users; \
         {readers} readers (look-aside with leases), 4 writers, {seconds} s per rate"
    );
    println!(
        "{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>8} {:>9}  inspected (1 s | 5 s)",
        "write rate",
        "commits/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "max ms",
        "keys/pkt",
        "median",
        "lag s",
        "stale"
    );
    let mut breakdown = Vec::new();
    for rate in [Some(100.0), Some(1000.0), None] {
        let squeal = region.squeal.as_ref().expect("started");
        let before = Histogram::read(squeal);
        let stages_before = stages(&region);
        let inspected_before = inspector.consistency(&horizons);
        let report = workload::run(
            &region,
            &WorkloadOptions {
                users,
                probes,
                readers,
                writers: 4,
                write_rate: rate,
                duration: Duration::from_secs(seconds),
            },
        )
        .await?;
        let means: Vec<String> = stages(&region)
            .iter()
            .zip(&stages_before)
            .map(|((s, c), (s0, c0))| format!("{:>16.3}", (s - s0) / (c - c0).max(1.0) * 1e3))
            .collect();
        let squeal = region.squeal.as_ref().expect("started");
        let (mean, median) = keys_per_packet(squeal, &before);
        inspector.wait_idle(Duration::from_secs(60))?;
        let inspected: Vec<String> = inspector
            .consistency(&horizons)
            .iter()
            .zip(&inspected_before)
            .map(|(now, then)| {
                let c = now.since(then);
                format!(
                    "{} copies, {} stale, {} undet., {} unreach., {} nines",
                    c.copies,
                    c.stale,
                    c.undetermined,
                    c.unreachable,
                    c.nines()
                )
            })
            .collect();
        let ms = |p: f64| {
            report
                .percentile(p)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        println!(
            "{:>12} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10} {:>8.3} {:>9}  {}",
            rate.map_or("full speed".to_string(), |r| format!("{r}/s")),
            report.writes as f64 / report.elapsed.as_secs_f64(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            ms(1.0),
            mean,
            median,
            squeal.metric("squeal_lag_seconds").unwrap_or(f64::NAN),
            format!("{}/{}", report.stale, report.checked),
            inspected.join(" | "),
        );
        breakdown.push(format!(
            "{:>12} {}",
            rate.map_or("full speed".to_string(), |r| format!("{r}/s")),
            means.join(" ")
        ));
        anyhow::ensure!(report.stale == 0, "stale keys at rate {rate:?}");
    }
    println!("where the time goes (mean ms per packet; MariaDB's whole-second commit times leave the receive stage unmeasured):");
    let heads: Vec<String> = STAGES.iter().map(|(l, _, _)| format!("{l:>16}")).collect();
    println!("{:>12} {}", "write rate", heads.join(" "));
    for line in breakdown {
        println!("{line}");
    }
    // Keep the region alive until the end of main so every server is killed on drop.
    drop(inspector);
    drop(region);
    Ok(())
}
