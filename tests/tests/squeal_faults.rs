//! squeal under faults, counted: thousands of committed transactions, each with known keys
//! cached BEFORE its commit; squeal is SIGKILLed and restarted mid-stream (or MariaDB is),
//! and afterwards every key of every committed transaction must have been deleted.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::mariadb::MariaDbOptions;
use harness::squeal::{config, read_checkpoint, Squeal};
use harness::{MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

const RULE: &str = r#"
[[extract.rule]]
database = "app"
table = "items"
keys = ["item:{id}", "item_group:{grp}"]
"#;

async fn db() -> Result<MariaDb> {
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: vec![
            "--innodb-flush-log-at-trx-commit=2".into(),
            "--sync-binlog=0".into(),
        ],
    })
    .await?;
    db.exec(
        "CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, grp INT, v INT) \
         ENGINE=InnoDB",
    )
    .await?;
    Ok(db)
}

/// Keys of transaction `t`: it writes rows 2t and 2t+1 of group t.
fn keys_of(t: u32) -> [String; 3] {
    [
        format!("item:{}", 2 * t),
        format!("item:{}", 2 * t + 1),
        format!("item_group:{t}"),
    ]
}

fn preset(mc: &Memcached, n: u32) -> Result<()> {
    let mut c = McClient::connect(&mc.addr())?;
    for t in 0..n {
        for k in keys_of(t) {
            c.set(&k, b"stale")?;
        }
    }
    Ok(())
}

/// Waits until no key of the `committed` transactions is cached; returns how many remain.
fn remaining(mc: &Memcached, committed: &[u32], timeout: Duration) -> Result<usize> {
    let mut c = McClient::connect(&mc.addr())?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = 0;
        for chunk in committed.chunks(100) {
            let keys: Vec<String> = chunk.iter().flat_map(|&t| keys_of(t)).collect();
            let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
            left += c
                .get_multi(&refs)?
                .iter()
                .filter(|(_, v)| v.is_some())
                .count();
        }
        if left == 0 || Instant::now() > deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn commit(conn: &mut mysql_async::Conn, t: u32) -> Result<()> {
    conn.exec_drop(
        "INSERT INTO app.items VALUES (?, ?, 0), (?, ?, 0)",
        (2 * t, t, 2 * t + 1, t),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_loses_nothing() -> Result<()> {
    const N: u32 = 3000;
    let db = db().await?;
    let mc = Memcached::start()?;
    preset(&mc, N)?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let cfg = config(&db.url(), &[mc.addr()], &cp, RULE);
    let mut squeal = Squeal::start(&cfg)?;

    let mut conn = db.conn().await?;
    let started = Instant::now();
    let mut committed = Vec::new();
    for t in 0..N {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "writer too slow"
        );
        commit(&mut conn, t).await?;
        committed.push(t);
        if t == N / 3 {
            // Let squeal checkpoint some progress, then crash it mid-stream.
            squeal.wait_metric(
                "squeal_checkpoint_writes_total",
                1.0,
                Duration::from_secs(10),
            )?;
            squeal.server.kill();
            assert!(
                read_checkpoint(&cp)?.is_some(),
                "no checkpoint before the crash"
            );
        }
        if t == N / 2 {
            // Commits kept coming while squeal was down.
            squeal.restart()?;
        }
    }
    let left = remaining(&mc, &committed, Duration::from_secs(60))?;
    let total = committed.len() * 3;
    eprintln!(
        "sigkill test: {} transactions, {total} keys, {} deleted, {left} still cached",
        committed.len(),
        total - left
    );
    assert_eq!(
        left,
        0,
        "keys of committed transactions still cached; log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restart_midstream_loses_nothing() -> Result<()> {
    const N: u32 = 2000;
    let mut db = db().await?;
    let mc = Memcached::start()?;
    preset(&mc, N)?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        &db.url(),
        &[mc.addr()],
        &dir.path().join("checkpoint.toml"),
        RULE,
    );
    let squeal = Squeal::start(&cfg)?;

    let mut conn = db.conn().await?;
    let started = Instant::now();
    let mut committed = Vec::new();
    for t in 0..N {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "writer too slow"
        );
        if t == N / 2 {
            let before = squeal.metric("squeal_reconnects_total").unwrap_or(0.0);
            db.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            db.restart().await?;
            conn = db.conn().await?;
            squeal.wait_metric(
                "squeal_reconnects_total",
                before + 1.0,
                Duration::from_secs(20),
            )?;
        }
        commit(&mut conn, t).await?;
        committed.push(t);
    }
    let left = remaining(&mc, &committed, Duration::from_secs(60))?;
    let total = committed.len() * 3;
    eprintln!(
        "mariadb restart test: {} transactions, {total} keys, {} deleted, {left} still cached",
        committed.len(),
        total - left
    );
    assert_eq!(
        left,
        0,
        "keys of committed transactions still cached; log:\n{}",
        squeal.server.log_tail()
    );
    Ok(())
}
