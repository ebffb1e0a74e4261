//! Invalidation delivery under faults, counted (issue 6): real MariaDB, squeal, two routers,
//! two front-end clusters of memcached and, for the broker path, tansu.
//!
//! Every scenario: the keys of N transactions are cached in both clusters BEFORE a writer
//! commits those transactions; one fault is injected mid-stream; after the writer stops and
//! the pipeline drains, a checker reads every key through both clusters' placement and
//! counts the stale ones, which must be zero. Each scenario prints its counts.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::region::{Region, RegionOptions, SECRET};
use harness::squeal::{cached_keys_of, keys_of, Squeal};
use harness::{Broker, MariaDb, McClient};
use mysql_async::prelude::*;

const N: u32 = 2000;

const RULE: &str = r#"
[[extract.rule]]
database = "app"
table = "items"
keys = ["item:{id}", "item_group:{grp}"]
"#;

/// A region (harness::region): MariaDB, clusters c0 and c1, a regional pool, and two
/// routers, each serving its cluster to clients and applying invalidations to both. With a
/// broker, the routers also consume the `inv` topic as one consumer group.
async fn region(kafka: Option<&Broker>) -> Result<Region> {
    let mut router_extra = "replay_interval_ms = 100\n".to_string();
    if let Some(k) = kafka {
        router_extra.push_str(&format!(
            "[invalidation.kafka]\nbrokers = \"{}\"\ntopic = \"inv\"\ngroup = \"region\"\n\
             librdkafka = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }}\n",
            k.bootstrap()
        ));
    }
    let region = Region::start(&RegionOptions {
        router_extra,
        invalidation_timeout_ms: 300,
        ..Default::default()
    })
    .await?;
    region
        .db
        .exec("CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, grp INT, v INT)")
        .await?;
    Ok(region)
}

/// Caches every key of the first `n` transactions in both clusters, through the routers (so
/// each key sits where the pools' hashing puts it).
fn preset(region: &Region, n: u32) -> Result<()> {
    for addr in region.router_addrs() {
        let mut c = McClient::connect(&addr)?;
        for t in 0..n {
            for k in keys_of(t) {
                c.set(&k, b"stale")?;
            }
        }
    }
    Ok(())
}

/// Stale keys of the `committed` transactions, read through both clusters, after waiting
/// up to `timeout` for the pipeline to drain.
fn stale(region: &Region, committed: &[u32], timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = 0;
        for addr in region.router_addrs() {
            let mut c = McClient::connect(&addr)?;
            left += cached_keys_of(&mut c, committed)?;
        }
        if left == 0 || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Commits transactions 0..N, calling `fault(t)` before each; returns those committed.
async fn write<F: FnMut(u32) -> Result<()>>(db: &MariaDb, mut fault: F) -> Result<Vec<u32>> {
    let mut conn = db.conn().await?;
    let started = Instant::now();
    let mut committed = Vec::with_capacity(N as usize);
    for t in 0..N {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("writer too slow: {t} transactions in 120 s");
        }
        fault(t)?;
        conn.exec_drop(
            "INSERT INTO app.items VALUES (?, ?, 0), (?, ?, 0)",
            (2 * t, t, 2 * t + 1, t),
        )
        .await?;
        committed.push(t);
    }
    Ok(committed)
}

fn report(scenario: &str, region: &Region, squeal: &Squeal, committed: &[u32], stale: usize) {
    let total = committed.len() * 3 * 2;
    let metric = |n: &str| region.routers.iter().map(|r| r.metric(n)).sum::<f64>();
    eprintln!(
        "scenario {scenario}: {} transactions, {total} cached key copies, stale after drain: {stale}; \
         squeal sink retries: {}, router deletes applied at once: {}, spooled: {}, replayed: {} \
         (router counters restart with a restarted router)",
        committed.len(),
        squeal.metric("squeal_sink_errors_total").unwrap_or(0.0) as u64,
        metric_outcome(region, "deleted") as u64,
        metric_outcome(region, "spooled") as u64,
        metric("squeal_router_spool_replayed_total") as u64,
    );
}

fn metric_outcome(region: &Region, outcome: &str) -> f64 {
    let name = format!("squeal_router_invalidation_keys_total{{outcome=\"{outcome}\"}}");
    region.routers.iter().map(|r| r.metric(&name)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_and_restarted_loses_nothing() -> Result<()> {
    let mut region = region(None).await?;
    preset(&region, N)?;
    let squeal = Squeal::start(&region.squeal_config(RULE))?;
    let ra = &mut region.routers[0];
    let committed = write(&region.db, |t| {
        if t == N / 3 {
            ra.server.kill();
        }
        if t == 2 * N / 3 {
            ra.restart()?;
        }
        Ok(())
    })
    .await?;
    let stale = stale(&region, &committed, Duration::from_secs(60))?;
    report(
        "router killed+restarted",
        &region,
        &squeal,
        &committed,
        stale,
    );
    assert_eq!(
        stale,
        0,
        "stale keys; squeal log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// SIGSTOP freezes a memcached with its data intact (deletes time out and are spooled, then
/// replayed after SIGCONT); another server is SIGKILLed and restarted empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_stalled_or_killed_loses_nothing() -> Result<()> {
    let mut region = region(None).await?;
    preset(&region, N)?;
    let squeal = Squeal::start(&region.squeal_config(RULE))?;
    let (c0, c1) = region.clusters.split_at_mut(1);
    let (killed, stalled) = (&mut c0[0][1], &c1[0][0]);
    let committed = write(&region.db, |t| {
        if t == N / 4 {
            stalled.server.signal("STOP");
            killed.kill();
        }
        if t == N / 2 {
            killed.restart()?;
        }
        if t == 3 * N / 4 {
            stalled.server.signal("CONT");
        }
        Ok(())
    })
    .await?;
    let stale = stale(&region, &committed, Duration::from_secs(60))?;
    report(
        "memcached stalled / killed",
        &region,
        &squeal,
        &committed,
        stale,
    );
    assert_eq!(
        stale,
        0,
        "stale keys; squeal log:\n{}",
        squeal.server.log_tail()
    );
    assert!(
        metric_outcome(&region, "spooled") > 0.0,
        "the stalled server's deletes went through the spool"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squeal_killed_and_restarted_loses_nothing() -> Result<()> {
    let region = region(None).await?;
    preset(&region, N)?;
    let mut squeal = Squeal::start(&region.squeal_config(RULE))?;
    let mut crashed = false;
    let committed = write(&region.db, |t| {
        if t == N / 3 {
            squeal.wait_metric(
                "squeal_checkpoint_writes_total",
                1.0,
                Duration::from_secs(10),
            )?;
            squeal.server.kill();
            crashed = true;
        }
        if t == 2 * N / 3 {
            squeal.restart()?;
        }
        Ok(())
    })
    .await?;
    assert!(crashed);
    let stale = stale(&region, &committed, Duration::from_secs(60))?;
    // A restarted squeal numbers its batches past the old run's: the routers count none of
    // its batches as duplicates (they once counted 23-42 % of all batches so).
    let duplicates: f64 = region
        .routers
        .iter()
        .map(|r| r.metric("squeal_router_invalidation_duplicate_batches_total"))
        .sum();
    let batches: f64 = region
        .routers
        .iter()
        .map(|r| r.metric("squeal_router_invalidation_batches_total"))
        .sum();
    eprintln!("duplicate batches after the restart: {duplicates} of {batches}");
    assert!(batches > 0.0);
    assert!(
        duplicates <= batches * 0.02,
        "{duplicates} of {batches} batches counted as duplicates after a squeal restart"
    );
    report(
        "squeal killed+restarted",
        &region,
        &squeal,
        &committed,
        stale,
    );
    assert_eq!(
        stale,
        0,
        "stale keys; squeal log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// The broker path: squeal produces to Kafka (tansu), both routers consume in one group;
/// one consumer is killed and restarted mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_path_with_a_consumer_restart_loses_nothing() -> Result<()> {
    let broker = Broker::start()?;
    broker.create_topic("inv", 4)?;
    let mut region = region(Some(&broker)).await?;
    preset(&region, N)?;
    let sink = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"inv\"\nsecret = \"{SECRET}\"\nsource = \"db1\"\ntimeout_ms = 10000",
        broker.bootstrap()
    );
    let squeal = Squeal::start(&region.squeal_config_with_sink(&sink, RULE))?;
    let rb = &mut region.routers[1];
    let committed = write(&region.db, |t| {
        if t == N / 3 {
            rb.server.kill();
        }
        if t == 2 * N / 3 {
            rb.restart()?;
        }
        Ok(())
    })
    .await?;
    let stale = stale(&region, &committed, Duration::from_secs(90))?;
    report(
        "kafka, consumer killed+restarted",
        &region,
        &squeal,
        &committed,
        stale,
    );
    assert_eq!(
        stale,
        0,
        "stale keys; squeal log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// The router's VmRSS in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    kib.ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// Issue 16's attack while squeal delivers: on both routers' invalidation ports, 30
/// unauthenticated connections each declaring a 4 MB frame and 20 slowloris handshakes
/// (a byte every 100 ms). squeal's deliveries go on (0 stale keys), the routers' memory
/// barely moves, and every attacker is closed and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_during_delivery_loses_nothing() -> Result<()> {
    use std::io::Write;
    use std::net::TcpStream;
    let region = region(None).await?;
    preset(&region, N)?;
    let squeal = Squeal::start(&region.squeal_config(RULE))?;
    let pids: Vec<u32> = region
        .routers
        .iter()
        .map(|r| r.server.pid().expect("router running"))
        .collect();
    let mut before = Vec::new();
    let mut peak = vec![0u64; pids.len()];
    let mut attackers = Vec::new();
    let frame = {
        let mut f = marker::batch::BATCH_MAGIC.to_vec();
        f.extend_from_slice(&(4u32 << 20).to_be_bytes());
        f.resize(8 + (4 << 20), 0xab);
        std::sync::Arc::new(f)
    };
    let ports = region.invalidation_ports.clone();
    let committed = write(&region.db, |t| {
        if t == N / 3 {
            for &pid in &pids {
                before.push(rss_kib(pid)?);
            }
            for &port in &ports {
                for i in 0..50 {
                    let frame = frame.clone();
                    attackers.push(std::thread::spawn(move || -> Result<()> {
                        let mut s = TcpStream::connect(("127.0.0.1", port))?;
                        s.set_write_timeout(Some(Duration::from_secs(3)))?;
                        if i < 30 {
                            let _ = s.write_all(&frame);
                        } else {
                            let _ = s.write_all(marker::batch::AUTH_MAGIC);
                            for _ in 0..40 {
                                if s.write_all(&[0x11]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                        Ok(())
                    }));
                }
            }
        }
        if t > N / 3 && t % 50 == 0 {
            for (i, &pid) in pids.iter().enumerate() {
                peak[i] = peak[i].max(rss_kib(pid)?);
            }
        }
        Ok(())
    })
    .await?;
    for a in attackers {
        a.join().expect("attacker thread")?;
    }
    let stale = stale(&region, &committed, Duration::from_secs(60))?;
    report("unauthenticated flood", &region, &squeal, &committed, stale);
    for (i, r) in region.routers.iter().enumerate() {
        let grew = peak[i].saturating_sub(before[i]);
        let rejected = |reason: &str| {
            r.metric(&format!(
                "squeal_router_invalidation_frames_rejected_total{{reason=\"{reason}\"}}"
            ))
        };
        eprintln!(
            "router {i}: VmRSS {} KiB before the flood, peak {} KiB (+{grew} KiB); rejected: \
             magic {}, handshake_timeout {}",
            before[i],
            peak[i],
            rejected("magic"),
            rejected("handshake_timeout")
        );
        assert!(grew < 4 * 1024, "router {i}'s RSS grew {grew} KiB");
        assert!(rejected("magic") >= 30.0 && rejected("handshake_timeout") >= 20.0);
    }
    assert_eq!(
        stale,
        0,
        "stale keys; squeal log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// `on_table_reset = "flush"` through the native router protocol: a TRUNCATE of a rule
/// table (no row images) makes squeal ask the routers to flush; every key of both clusters
/// and of the regional pool is gone, and writes after it are still invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_flushes_every_cluster_through_the_routers() -> Result<()> {
    let mut region = region(None).await?;
    region
        .db
        .exec("INSERT INTO app.items VALUES (1, 1, 0), (2, 1, 0)")
        .await?;
    preset(&region, 50)?;
    McClient::connect(&region.regional.addr())?.set("r_item:1", b"marker")?;
    let extract = format!("[extract]\non_table_reset = \"flush\"\n{RULE}");
    region.start_squeal(&extract)?;
    std::thread::sleep(Duration::from_millis(500));
    region.db.exec("TRUNCATE TABLE app.items").await?;
    // Every cached key of every cluster is gone: nothing row-level could have done it.
    let left = stale(
        &region,
        &(0..50).collect::<Vec<_>>(),
        Duration::from_secs(20),
    )?;
    let marker = McClient::connect(&region.regional.addr())?.get("r_item:1")?;
    let squeal = region.squeal.as_ref().expect("started");
    eprintln!(
        "truncate: {left} keys left in the clusters, regional marker {:?}, squeal flushes {:?}",
        marker
            .as_ref()
            .map(|m| String::from_utf8_lossy(m).to_string()),
        squeal.metric("squeal_flushes_total")
    );
    assert_eq!(
        left,
        0,
        "keys survived the flush; squeal log:\n{}",
        squeal.server.log_tail()
    );
    assert!(marker.is_none(), "the regional pool was not flushed");
    // And squeal goes on: a later write is invalidated as usual.
    preset(&region, 1)?;
    region
        .db
        .exec("INSERT INTO app.items VALUES (0, 0, 1), (1, 0, 1)")
        .await?;
    let left = stale(&region, &[0], Duration::from_secs(20))?;
    let squeal = region.squeal.as_ref().expect("started");
    assert_eq!(
        left,
        0,
        "a write after the flush was not invalidated (squeal delivered {:?} keys, {:?} transactions); squeal log:\n{}",
        squeal.metric("squeal_keys_delivered_total"),
        squeal.metric("squeal_transactions_total"),
        squeal.server.log_tail()
    );
    Ok(())
}
