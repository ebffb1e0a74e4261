//! Invalidation delivery under faults, counted (issue 6): real MariaDB, squeal, two routers,
//! two front-end clusters of memcached and, for the broker path, tansu.
//!
//! Every scenario: the keys of N transactions are cached in both clusters BEFORE a writer
//! commits those transactions; one fault is injected mid-stream; after the writer stops and
//! the pipeline drains, a checker reads every key through both clusters' placement and
//! counts the stale ones, which must be zero. Each scenario prints its counts.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use harness::mariadb::MariaDbOptions;
use harness::router::Router;
use harness::squeal::Squeal;
use harness::{Broker, MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

const N: u32 = 2000;
const SECRET: &str = "delivery-secret";

/// Transaction `t` updates rows 2t and 2t+1 of group t: three keys.
fn keys_of(t: u32) -> [String; 3] {
    [
        format!("item:{}", 2 * t),
        format!("item:{}", 2 * t + 1),
        format!("item_group:{t}"),
    ]
}

const RULE: &str = r#"
[[extract.rule]]
database = "app"
table = "items"
keys = ["item:{id}", "item_group:{grp}"]
"#;

/// A region: MariaDB, clusters `a` and `b`, a regional pool, and two routers. Router `ra`
/// serves cluster `a` to clients, `rb` serves `b`; both apply invalidations to both.
struct Region {
    db: MariaDb,
    a: Vec<Memcached>,
    b: Vec<Memcached>,
    _regional: Memcached,
    ra: Router,
    rb: Router,
    ra_inv: u16,
    rb_inv: u16,
    _spools: tempfile::TempDir,
}

fn list(servers: &[Memcached]) -> String {
    servers
        .iter()
        .map(|s| format!("{:?}", s.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Region {
    async fn start(kafka: Option<&Broker>) -> Result<Region> {
        let db = MariaDb::start_with(MariaDbOptions {
            server_id: 1,
            extra_args: vec![
                "--innodb-flush-log-at-trx-commit=2".into(),
                "--sync-binlog=0".into(),
            ],
        })
        .await?;
        db.exec(
            "CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, grp INT, v INT); \
             CREATE TABLE app.filler (id INT PRIMARY KEY)",
        )
        .await?;
        let a = Memcached::start_many(2)?;
        let b = Memcached::start_many(2)?;
        let regional = Memcached::start()?;
        let spools = tempfile::tempdir()?;
        let (ra_inv, rb_inv) = (harness::free_port(), harness::free_port());
        let router = |route: &str, inv: u16, name: &str| {
            let kafka_section = kafka.map_or(String::new(), |k| {
                format!(
                    "[invalidation.kafka]\nbrokers = \"{}\"\ntopic = \"inv\"\ngroup = \"region\"\n\
                     librdkafka = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }}\n",
                    k.bootstrap()
                )
            });
            Router::start_config(&format!(
                "workers = 2\nroute = \"{route}\"\n\
                 [pools.a]\nservers = [{}]\n[pools.b]\nservers = [{}]\n[pools.regional]\nservers = [{:?}]\n\
                 [invalidation]\nlisten = \"127.0.0.1:{inv}\"\nsecret = \"{SECRET}\"\n\
                 clusters = [\"a\", \"b\"]\nmarker_pools = [\"regional\"]\n\
                 spool_dir = {:?}\ntimeout_ms = 300\nreplay_interval_ms = 100\n{kafka_section}",
                list(&a),
                list(&b),
                regional.addr(),
                spools.path().join(name).display().to_string(),
            ))
        };
        let ra = router("a", ra_inv, "ra")?;
        let rb = router("b", rb_inv, "rb")?;
        Ok(Region {
            db,
            a,
            b,
            _regional: regional,
            ra,
            rb,
            ra_inv,
            rb_inv,
            _spools: spools,
        })
    }

    fn squeal_config(&self, sink: &str) -> String {
        format!(
            "[source]\nurl = \"{}\"\nserver_id = 777\nheartbeat_ms = 500\nreconnect_min_ms = 50\n\
             reconnect_max_ms = 500\n\n[batch]\nlinger_us = 500\n\n[[sink]]\n{sink}\n\n\
             [checkpoint]\npath = {:?}\ninterval_ms = 50\n\n{RULE}\n",
            self.db.url(),
            self._spools
                .path()
                .join("squeal-checkpoint.toml")
                .display()
                .to_string(),
        )
    }

    fn router_sink(&self) -> String {
        format!(
            "type = \"router\"\nendpoints = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nsecret = \"{SECRET}\"\n\
             source = \"db1\"\ntimeout_ms = 2000",
            self.ra_inv, self.rb_inv
        )
    }

    /// Caches every key of the first `n` transactions in both clusters, through the routers
    /// (so each key sits where the pools' hashing puts it).
    fn preset(&self, n: u32) -> Result<()> {
        for router in [&self.ra, &self.rb] {
            let mut c = McClient::connect(&router.addr())?;
            for t in 0..n {
                for k in keys_of(t) {
                    c.set(&k, b"stale")?;
                }
            }
        }
        Ok(())
    }

    /// Stale keys of the `committed` transactions, read through both clusters, after
    /// waiting up to `timeout` for the pipeline to drain.
    fn stale(&self, committed: &[u32], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut left = 0;
            for router in [&self.ra, &self.rb] {
                let mut c = McClient::connect(&router.addr())?;
                for chunk in committed.chunks(100) {
                    let keys: Vec<String> = chunk.iter().flat_map(|&t| keys_of(t)).collect();
                    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
                    left += c
                        .get_multi(&refs)?
                        .iter()
                        .filter(|(_, v)| v.is_some())
                        .count();
                }
            }
            if left == 0 || Instant::now() > deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
    let metric = |n: &str| region.ra.metric(n) + region.rb.metric(n);
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
    region.ra.metric(&name) + region.rb.metric(&name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_killed_and_restarted_loses_nothing() -> Result<()> {
    let mut region = Region::start(None).await?;
    region.preset(N)?;
    let squeal = Squeal::start(&region.squeal_config(&region.router_sink()))?;
    let ra = &mut region.ra;
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
    let stale = region.stale(&committed, Duration::from_secs(60))?;
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
    let mut region = Region::start(None).await?;
    region.preset(N)?;
    let squeal = Squeal::start(&region.squeal_config(&region.router_sink()))?;
    let stalled = region.b[0].server.pid().expect("pid");
    let killed = &mut region.a[1];
    let committed = write(&region.db, |t| {
        if t == N / 4 {
            signal(stalled, "STOP");
            killed.kill();
        }
        if t == N / 2 {
            killed.restart()?;
        }
        if t == 3 * N / 4 {
            signal(stalled, "CONT");
        }
        Ok(())
    })
    .await?;
    let stale = region.stale(&committed, Duration::from_secs(60))?;
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
    let region = Region::start(None).await?;
    region.preset(N)?;
    let mut squeal = Squeal::start(&region.squeal_config(&region.router_sink()))?;
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
    let stale = region.stale(&committed, Duration::from_secs(60))?;
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
    let mut region = Region::start(Some(&broker)).await?;
    region.preset(N)?;
    let sink = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"inv\"\nsecret = \"{SECRET}\"\nsource = \"db1\"\ntimeout_ms = 10000",
        broker.bootstrap()
    );
    let squeal = Squeal::start(&region.squeal_config(&sink))?;
    let rb = &mut region.rb;
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
    let stale = region.stale(&committed, Duration::from_secs(90))?;
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

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}
