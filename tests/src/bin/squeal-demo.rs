//! The quickstart demo: a whole region on loopback (MariaDB with its binlog, two front-end
//! clusters of memcached and a regional pool, a router per cluster, squeal), one
//! invalidation shown step by step, then a short look-aside workload with its figures, and
//! the consistency squeal-inspect measured meanwhile.
//! Run through `deploy/quickstart.sh` (`--keep` leaves everything running).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::inspect::{self, Inspector};
use harness::region::{Region, RegionOptions};
use harness::workload::{self, LookAside, Lookup, WorkloadOptions};
use mysql_async::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let seconds: u64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);

    println!("== starting a region on loopback");
    let mut region = Region::start(&RegionOptions::default()).await?;
    println!("  MariaDB (ROW binlog)     127.0.0.1:{}", region.db.port());
    for (i, c) in region.clusters.iter().enumerate() {
        let addrs: Vec<String> = c.iter().map(|m| m.addr()).collect();
        println!(
            "  cluster c{i}: memcached  {}   router {}",
            addrs.join(", "),
            region.routers[i].addr()
        );
    }
    println!("  regional pool            {}", region.regional.addr());
    let (users, probes) = (1000, 20);
    workload::create_schema(&region.db, users + probes).await?;
    region.start_squeal(workload::EXTRACT)?;
    println!(
        "  squeal tailing the binlog, rule shop.users -> user:{{id}}, delivering to both routers"
    );
    let inspector = Inspector::start(
        &inspect::config(
            &region,
            workload::EXTRACT,
            "rate = 1.0\nhorizons_ms = [1000, 5000]\nmax_reads_per_sec = 20000\n",
        ),
        &[],
    )?;
    println!(
        "  squeal-inspect beside it (own server_id), metrics on 127.0.0.1:{}",
        inspector.metrics_port
    );

    println!("\n== one invalidation, step by step");
    let routers = region.router_addrs();
    let mut web0 = LookAside::connect(&routers[0])?;
    let mut web1 = LookAside::connect(&routers[1])?;
    let mut conn = region.db.conn().await?;
    for (name, web) in [("c0", &mut web0), ("c1", &mut web1)] {
        if let Lookup::Fill(cas) = web.get("user:1")? {
            let v: u32 = conn
                .query_first("SELECT version FROM shop.users WHERE id = 1")
                .await?
                .context("row")?;
            web.fill("user:1", v.to_string().as_bytes(), cas)?;
            println!("  {name}: get user:1 -> miss -> SELECT -> cached version {v}");
        }
    }
    let hit = web0
        .peek("user:1")?
        .map(|v| String::from_utf8_lossy(&v).into_owned());
    println!("  c0: get user:1 -> hit {hit:?}");
    conn.query_drop("UPDATE shop.users SET version = version + 1 WHERE id = 1")
        .await?;
    let t0 = Instant::now();
    println!("  MariaDB: UPDATE shop.users SET version = version + 1 WHERE id = 1 (committed)");
    let deadline = t0 + Duration::from_secs(10);
    while web0.peek("user:1")?.is_some() || web1.peek("user:1")?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "user:1 was not invalidated");
        std::thread::sleep(Duration::from_micros(200));
    }
    println!(
        "  squeal -> routers -> both clusters: user:1 deleted {:.1} ms after the commit",
        t0.elapsed().as_secs_f64() * 1e3
    );
    conn.disconnect().await?;

    println!("\n== look-aside workload for {seconds} s: 4 readers, 2 writers at 200 commits/s");
    let report = workload::run(
        &region,
        &WorkloadOptions {
            users,
            probes,
            readers: 4,
            writers: 2,
            write_rate: Some(200.0),
            duration: Duration::from_secs(seconds),
        },
    )
    .await?;
    let squeal = region.squeal.as_ref().expect("started");
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "  reads {} ({} hits, {:.1}% hit rate), fills {} (refused by a racing invalidation: {})",
        report.reads,
        report.hits,
        100.0 * report.hits as f64 / report.reads.max(1) as f64,
        report.fills,
        report.fills_refused
    );
    println!(
        "  commits {}, invalidations delivered by squeal {}",
        report.writes,
        squeal.metric("squeal_keys_delivered_total").unwrap_or(0.0) as u64
    );
    println!(
        "  commit-to-delete latency over {} probes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.latencies.len(),
        ms(report.percentile(0.5)),
        ms(report.percentile(0.99)),
        ms(report.percentile(1.0))
    );
    println!(
        "  after the drain: {} cached values checked against MariaDB, {} stale",
        report.checked, report.stale
    );
    anyhow::ensure!(report.stale == 0, "stale keys found");

    println!(
        "\n== squeal-inspect: every committed key read back from both clusters at 1 s and 5 s"
    );
    inspector.wait_idle(Duration::from_secs(30))?;
    for c in inspector.consistency(&["1s", "5s"]) {
        println!(
            "  {:>3}: {} copies checked, {} stale, {} undetermined, {} unreachable: {} nines",
            c.horizon,
            c.copies,
            c.stale,
            c.undetermined,
            c.unreachable,
            c.nines()
        );
    }

    if keep {
        println!("\nrunning; point a memcache client at a router above. Ctrl-C stops everything");
        tokio::signal::ctrl_c().await?;
    }
    println!("\nstopping everything");
    Ok(())
}
