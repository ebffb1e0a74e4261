//! squeal-inspect end to end (issue 14): real MariaDB, squeal, one router per cluster, two
//! front-end clusters of memcached and a regional pool (harness::region), with the
//! inspector following the same binlog under its own server_id and reading every server of
//! every cluster at 1 s and 5 s after each sampled commit.
//!
//! - the pipeline working: no stale copy at any horizon over 2,000 commits whose keys were
//!   cached before them, and keys refilled after their commit are never called stale;
//! - one cluster left out of the routers' `[invalidation] clusters`: every sampled key
//!   cached there is stale at every horizon (one-shot mode, read from its summary table);
//! - one memcached SIGSTOPped for 3 s: its cluster's checks are not consistent while it is
//!   stopped (unreachable, never counted consistent) and consistent at 8 s.
//!
//! The inspector reads every server of a cluster, not only the one the router's placement
//! picks: a copy on another server (left by a placement change, or stored there directly)
//! that no delete reaches is reported stale, so the tests cache through the routers.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::inspect::{self, summary_row, Inspector};
use harness::region::{Region, RegionOptions};
use harness::McClient;
use mysql_async::prelude::*;

const RULE: &str = r#"
[[extract.rule]]
database = "app"
table = "items"
keys = ["item:{id}"]
"#;

/// Every key of app.items, at 1 s and 5 s, within generous bounds.
const SAMPLE: &str = "rate = 0.0\ntables = [\"app.items\"]\nhorizons_ms = [1000, 5000]\n\
                      max_pending = 100000\nmax_reads_per_sec = 100000\n";

/// A region with `opts`, app.items holding rows 0..rows, and squeal delivering to the
/// routers.
async fn region(opts: RegionOptions, rows: u32) -> Result<Region> {
    let mut region = Region::start(&opts).await?;
    region
        .db
        .exec("CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, v INT)")
        .await?;
    let values: Vec<String> = (0..rows).map(|i| format!("({i}, 0)")).collect();
    region
        .db
        .exec(&format!(
            "INSERT INTO app.items VALUES {}",
            values.join(",")
        ))
        .await?;
    region.start_squeal(RULE)?;
    region.drain(Duration::from_secs(20))?;
    Ok(region)
}

/// Caches `item:{id}` for `ids` through every router, so each copy sits where that
/// cluster's placement puts it.
fn cache_everywhere(region: &Region, ids: std::ops::Range<u32>) -> Result<()> {
    for addr in region.router_addrs() {
        let mut c = McClient::connect(&addr)?;
        for id in ids.clone() {
            c.set(&format!("item:{id}"), b"before the commit")?;
        }
    }
    Ok(())
}

/// One autocommit UPDATE per id: one transaction, one key each.
async fn update(region: &Region, ids: std::ops::Range<u32>) -> Result<()> {
    let mut conn = region.db.conn().await?;
    for id in ids {
        conn.exec_drop("UPDATE app.items SET v = v + 1 WHERE id = ?", (id,))
            .await?;
    }
    conn.disconnect().await?;
    Ok(())
}

fn copies(i: &Inspector, labels: &[(&str, &str)]) -> u64 {
    i.metric("squeal_inspect_copies_total", labels) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_pipeline_leaves_no_stale_copy_and_refills_are_consistent() -> Result<()> {
    const COMMITS: u32 = 2000;
    const REFILLS: u32 = 100;
    let region = region(RegionOptions::default(), COMMITS + REFILLS).await?;
    let inspector = Inspector::start(&inspect::config(&region, RULE, SAMPLE), &[])?;
    // Copies cached before the commits (and before the inspector's first heartbeat): any
    // that survived its commit would be stale.
    cache_everywhere(&region, 0..COMMITS + REFILLS)?;
    update(&region, 0..COMMITS).await?;
    // Refills: commit, wait until squeal's deletes took the key out of every cluster,
    // then store it again, as a read-through cache would after the commit.
    update(&region, COMMITS..COMMITS + REFILLS).await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for addr in region.router_addrs() {
        let mut c = McClient::connect(&addr)?;
        for id in COMMITS..COMMITS + REFILLS {
            while c.get(&format!("item:{id}"))?.is_some() {
                if Instant::now() > deadline {
                    bail!("item:{id} was never invalidated");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for addr in region.router_addrs() {
        let mut c = McClient::connect(&addr)?;
        for id in COMMITS..COMMITS + REFILLS {
            c.set(&format!("item:{id}"), b"after the commit")?;
        }
    }
    let samples = (COMMITS + REFILLS) as f64;
    // One verdict per sample and cluster at the last horizon.
    inspector.wait_metric(
        "squeal_inspect_copies_total",
        &[("horizon", "5s")],
        samples * 2.0,
        Duration::from_secs(60),
    )?;
    let text = harness::prometheus::scrape(inspector.metrics_port)?;
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.starts_with("squeal_inspect_copies_total")
                || l.starts_with("squeal_inspect_nines"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        inspector.metric("squeal_inspect_samples_total", &[]),
        samples
    );
    assert_eq!(inspector.metric("squeal_inspect_dropped_total", &[]), 0.0);
    for h in ["1s", "5s"] {
        let at = |v: &str| copies(&inspector, &[("horizon", h), ("verdict", v)]);
        assert_eq!(at("stale"), 0, "stale copies at {h}");
        assert_eq!(at("unreachable"), 0, "unreachable at {h}");
        assert_eq!(
            at("absent") + at("refilled") + at("undetermined"),
            samples as u64 * 2
        );
        assert!(
            at("absent") >= COMMITS as u64 * 2,
            "every commit's copies are gone at {h}: {} absent",
            at("absent")
        );
        assert!(at("refilled") > 0, "refills are seen as such at {h}");
        assert!(
            inspector.metric("squeal_inspect_nines", &[("horizon", h)]) >= 3.0,
            "4,200 consistent copies show at least 3 nines"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_left_out_of_invalidation_is_stale_at_every_horizon() -> Result<()> {
    const N: u32 = 200;
    let region = region(
        RegionOptions {
            // Cluster c1 gets no deletes: the broken pipeline the inspector must see.
            invalidated_clusters: Some(vec![0]),
            ..Default::default()
        },
        N,
    )
    .await?;
    let mut inspector = Inspector::start(
        &inspect::config(&region, RULE, SAMPLE),
        &["--samples", &N.to_string()],
    )?;
    cache_everywhere(&region, 0..N)?;
    // Well before the commits: MariaDB's commit times are whole seconds.
    std::thread::sleep(Duration::from_millis(1500));
    update(&region, 0..N).await?;
    let out = inspector.wait_exit(Duration::from_secs(30))?;
    for h in ["1s", "5s"] {
        // checked absent refilled stale undetermined unreachable
        let c1 = summary_row(&out, "app.items", "c1", h)
            .ok_or_else(|| anyhow::anyhow!("no c1 row at {h} in:\n{out}"))?;
        assert_eq!(c1, [N as u64, 0, 0, N as u64, 0, 0], "c1 at {h}:\n{out}");
        let c0 = summary_row(&out, "app.items", "c0", h)
            .ok_or_else(|| anyhow::anyhow!("no c0 row at {h} in:\n{out}"))?;
        assert_eq!(c0, [N as u64, N as u64, 0, 0, 0, 0], "c0 at {h}:\n{out}");
    }
    // Every stale copy is logged with what traces it.
    let logged = out
        .lines()
        .filter(|l| l.contains("stale copy") && l.contains("cluster=c1"))
        .count();
    assert_eq!(
        logged,
        2 * N as usize,
        "one line per stale copy and horizon"
    );
    let line = out.lines().find(|l| l.contains("stale copy")).unwrap();
    for field in ["key=item:", "server=127.0.0.1:", "horizon=", "position="] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_is_unreachable_not_consistent_then_consistent() -> Result<()> {
    const N: u32 = 100;
    let region = region(
        RegionOptions {
            invalidation_timeout_ms: 300,
            router_extra: "replay_interval_ms = 100\n".into(),
            ..Default::default()
        },
        N,
    )
    .await?;
    // 8 s: the router retries a stalled server's spool with a backoff that can reach 1.6 s
    // during the stop; 8 s after the commit leaves it room after the resume at 3 s.
    let sample = SAMPLE.replace("[1000, 5000]", "[1000, 8000]");
    let inspector = Inspector::start(&inspect::config(&region, RULE, &sample), &[])?;
    // The keys where c0's placement puts them (the router deletes a key only there); the
    // test needs some on the server it stops.
    {
        let mut c = McClient::connect(&region.router_addrs()[0])?;
        for id in 0..N {
            c.set(&format!("item:{id}"), b"before the commit")?;
        }
    }
    let mut stopped_server = McClient::connect(&region.clusters[0][0].addr())?;
    let mut held = 0;
    for id in 0..N {
        if stopped_server.get(&format!("item:{id}"))?.is_some() {
            held += 1;
        }
    }
    assert!(held > 0, "placement put no key on the server to stop");
    drop(stopped_server);
    std::thread::sleep(Duration::from_millis(1200));
    region.clusters[0][0].server.signal("STOP");
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    // One transaction for every key: one commit, so all its 1 s checks come due at once,
    // inside the stop.
    let r = region
        .db
        .exec(&format!("UPDATE app.items SET v = v + 1 WHERE id < {N}"))
        .await;
    let committed_at = stopped.elapsed();
    // The 1 s checks of this commit fall inside the stop.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed()));
    region.clusters[0][0].server.signal("CONT");
    r?;
    assert!(
        committed_at < Duration::from_millis(1900),
        "the commit ended {committed_at:?} into the stop: its 1 s checks may not fall inside it"
    );
    inspector.wait_metric(
        "squeal_inspect_copies_total",
        &[("horizon", "8s")],
        2.0 * N as f64,
        Duration::from_secs(30),
    )?;
    let c0 = |h: &str, v: &str| {
        copies(
            &inspector,
            &[("target", "c0"), ("horizon", h), ("verdict", v)],
        )
    };
    let n = N as u64;
    eprintln!(
        "c0 at 1s: absent {} refilled {} stale {} undetermined {} unreachable {}",
        c0("1s", "absent"),
        c0("1s", "refilled"),
        c0("1s", "stale"),
        c0("1s", "undetermined"),
        c0("1s", "unreachable")
    );
    assert_eq!(
        c0("1s", "absent") + c0("1s", "refilled"),
        0,
        "nothing in a stopped server's cluster is called consistent"
    );
    assert_eq!(c0("1s", "unreachable") + c0("1s", "stale"), n);
    assert!(c0("1s", "unreachable") > 0, "the stop is reported as such");
    assert!(
        inspector.metric("squeal_inspect_unreachable_total", &[("target", "c0")]) > 0.0,
        "and counted by reason"
    );
    assert_eq!(c0("8s", "absent"), n, "consistent once it answers again");
    assert_eq!(c0("8s", "stale") + c0("8s", "unreachable"), 0);
    // The other cluster never held the keys.
    let c1 = copies(&inspector, &[("target", "c1"), ("verdict", "absent")]);
    assert_eq!(c1, 2 * n);
    eprintln!("{held} of {n} keys were on the stopped server");
    Ok(())
}
