//! squeal under faults, counted: thousands of committed transactions, each with known keys
//! cached BEFORE its commit; squeal is SIGKILLed and restarted mid-stream (or MariaDB is),
//! and afterwards every key of every committed transaction must have been deleted.

use std::time::{Duration, Instant};

use anyhow::Result;
use harness::mariadb::MariaDbOptions;
use harness::squeal::{cached_keys_of, config, keys_of, read_checkpoint, Squeal};
use harness::{MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

const RULE: &str = r#"
[[extract.rule]]
database = "app"
table = "items"
keys = ["item:{id}", "item_group:{grp}"]
"#;

async fn db() -> Result<MariaDb> {
    let db = MariaDb::start_with(MariaDbOptions::fast()).await?;
    db.exec(
        "CREATE DATABASE app; CREATE TABLE app.items (id INT PRIMARY KEY, grp INT, v INT) \
         ENGINE=InnoDB",
    )
    .await?;
    Ok(db)
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
        let left = cached_keys_of(&mut c, committed)?;
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

/// A quiet server is not mistaken for a dead one (heartbeats), and lag reads 0 when idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_server_stays_connected() -> Result<()> {
    let db = db().await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        &db.url(),
        &[mc.addr()],
        &dir.path().join("checkpoint.toml"),
        RULE,
    );
    let squeal = Squeal::start(&cfg)?;
    // heartbeat_ms = 500: dead after 3 missed heartbeats + 1 s = 2.5 s of silence.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        squeal.metric("squeal_reconnects_total").unwrap_or(0.0),
        0.0,
        "{}",
        squeal.server.log_tail()
    );
    assert_eq!(squeal.metric("squeal_up"), Some(1.0));
    assert_eq!(squeal.metric("squeal_lag_bytes"), Some(0.0));
    preset(&mc, 1)?;
    let mut conn = db.conn().await?;
    commit(&mut conn, 0).await?;
    assert_eq!(remaining(&mc, &[0], Duration::from_secs(10))?, 0);
    Ok(())
}

/// The binlog at the checkpoint is purged while squeal is down: by default it stops with a
/// clear error; with `on_missing_binlog = "flush"` it flushes the cache and goes on from the
/// current position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_binlog_fails_clearly_or_flushes() -> Result<()> {
    let db = db().await?;
    let mc = Memcached::start()?;
    let dir = tempfile::tempdir()?;
    let cp = dir.path().join("checkpoint.toml");
    let mut squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, RULE))?;
    preset(&mc, 1)?;
    let mut conn = db.conn().await?;
    commit(&mut conn, 0).await?;
    assert_eq!(remaining(&mc, &[0], Duration::from_secs(10))?, 0);
    squeal.wait_metric(
        "squeal_checkpoint_writes_total",
        1.0,
        Duration::from_secs(10),
    )?;
    squeal.server.terminate(Duration::from_secs(10));
    let (file, _) = read_checkpoint(&cp)?.expect("checkpoint written");
    // MariaDB purges a file only once its binlog checkpoint moved past it: retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        conn.query_drop("FLUSH BINARY LOGS").await?;
        let (newest, _) = db.binlog_position().await?;
        conn.query_drop(format!("PURGE BINARY LOGS TO '{newest}'"))
            .await?;
        let logs: Vec<(String, u64)> = conn.query("SHOW BINARY LOGS").await?;
        let logs: Vec<String> = logs.into_iter().map(|(f, _)| f).collect();
        if !logs.contains(&file) {
            break;
        }
        assert!(Instant::now() < deadline, "{file} never purged: {logs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let err = match Squeal::start(&config(&db.url(), &[mc.addr()], &cp, RULE)) {
        Ok(_) => panic!("squeal started although {file} is purged"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("no longer has") && err.contains(&file),
        "{err}"
    );

    let mut c = McClient::connect(&mc.addr())?;
    c.set("unrelated", b"v")?;
    let flush = format!("on_missing_binlog = \"flush\"\n{RULE}");
    let squeal = Squeal::start(&config(&db.url(), &[mc.addr()], &cp, &flush))?;
    assert_eq!(c.get("unrelated")?, None, "flush_all was not sent");
    // And it goes on from the current position.
    preset(&mc, 2)?;
    commit(&mut conn, 1).await?;
    assert_eq!(
        remaining(&mc, &[1], Duration::from_secs(10))?,
        0,
        "{}",
        squeal.server.log_tail()
    );
    Ok(())
}

/// A transaction far larger than the in-memory bound spills its keys to disk and still
/// delivers every one of them at its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_transaction_spills_and_delivers_every_key() -> Result<()> {
    const N: u32 = 3000;
    let db = db().await?;
    let mc = Memcached::start()?;
    preset(&mc, N)?;
    let dir = tempfile::tempdir()?;
    let extra = format!("[extract]\nmax_transaction_bytes = 4096\n{RULE}");
    let squeal = Squeal::start(&config(
        &db.url(),
        &[mc.addr()],
        &dir.path().join("cp.toml"),
        &extra,
    ))?;
    let mut conn = db.conn().await?;
    conn.query_drop("BEGIN").await?;
    for t in 0..N {
        commit(&mut conn, t).await?;
    }
    conn.query_drop("COMMIT").await?;
    let all: Vec<u32> = (0..N).collect();
    let left = remaining(&mc, &all, Duration::from_secs(30))?;
    assert_eq!(left, 0, "{}", squeal.server.log_tail());
    Ok(())
}
