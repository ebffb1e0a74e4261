//! Cold-cluster warm-up racing invalidations (issue 8): `squeal-warmup` copies a warm
//! cluster into a cold one (through the router in front of the cold cluster, whose route is
//! the warm-up route) while writers commit to MariaDB and squeal invalidates both clusters.
//! Afterwards no value in the cold cluster may be older than the database: the hold-off
//! tombstones (marker::holdoff) refuse the `add` of a value fetched before its invalidation.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harness::mariadb::MariaDbOptions;
use harness::memcached::toml_list;
use harness::router::Router;
use harness::squeal::Squeal;
use harness::workload::{LookAside, Lookup};
use harness::{MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

/// Few keys and fast writers, so invalidations often land inside a chunk's copy window.
const USERS: u32 = 500;
const SECRET: &str = "warmup-secret";

struct Outcome {
    copied_line: String,
    checked: usize,
    stale: usize,
}

/// One run: `holdoff` says whether the routers treat the cold cluster as being warmed.
async fn run(holdoff: bool) -> Result<Outcome> {
    let db = MariaDb::start_with(MariaDbOptions::fast()).await?;
    db.exec(&format!(
        "CREATE DATABASE shop; CREATE TABLE shop.users (id INT PRIMARY KEY, version INT NOT NULL); \
         INSERT INTO shop.users SELECT seq, 0 FROM shop.seq_0_to_{}",
        USERS - 1
    ))
    .await?;
    let warm = Memcached::start_many(2)?;
    let cold = Memcached::start_many(2)?;
    let spools = tempfile::tempdir()?;
    let warming = if holdoff {
        "warming = [\"cold\"]\n"
    } else {
        ""
    };
    let router = |route: &str, name: &str| -> Result<(Router, u16)> {
        let inv = harness::free_port();
        let r = Router::start_config(&format!(
            "workers = 2\n{route}\n[pools.warm]\nservers = [{}]\n[pools.cold]\nservers = [{}]\n\
             [invalidation]\nlisten = \"127.0.0.1:{inv}\"\nsecret = \"{SECRET}\"\n\
             clusters = [\"warm\", \"cold\"]\n{warming}spool_dir = {:?}\n",
            toml_list(&warm),
            toml_list(&cold),
            spools.path().join(name).display().to_string()
        ))?;
        Ok((r, inv))
    };
    let (warm_router, warm_inv) = router("route = \"warm\"", "warm")?;
    let (cold_router, cold_inv) = router(
        "[route]\ntype = \"warmup\"\ncold = \"cold\"\nwarm = \"warm\"\nholdoff_secs = 2",
        "cold",
    )?;
    let _squeal = Squeal::start(&format!(
        "[source]\nurl = \"{}\"\nserver_id = 901\nheartbeat_ms = 500\n\n\
         [[extract.rule]]\ndatabase = \"shop\"\ntable = \"users\"\nkeys = [\"user:{{id}}\"]\n\n\
         [[sink]]\ntype = \"router\"\n\
         endpoints = [\"127.0.0.1:{warm_inv}\", \"127.0.0.1:{cold_inv}\"]\nsecret = \"{SECRET}\"\n\n\
         [checkpoint]\npath = {:?}\n",
        db.url(),
        spools.path().join("checkpoint.toml").display().to_string()
    ))?;

    // The warm cluster holds every user, as look-aside readers left it.
    let mut w = McClient::connect(&warm_router.addr())?;
    for id in 0..USERS {
        w.set_with(&format!("user:{id}"), b"0", 0, 300)?;
    }

    // Writers and a reader through the cold cluster's warm-up route, during the copy.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, opts) = (stop.clone(), db.opts());
        tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(opts).await?;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                let id = fastrand::u32(..USERS);
                conn.exec_drop(
                    "UPDATE shop.users SET version = version + 1 WHERE id = ?",
                    (id,),
                )
                .await?;
                // About 200 commits/s: enough to race the copy, not enough to empty the
                // warm cluster faster than its readers fill it.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    // Web servers of the warm cluster keep it warm: look-aside reads with leases.
    let warm_readers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr, opts) = (stop.clone(), warm_router.addr(), db.opts());
            std::thread::spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut conn = rt.block_on(mysql_async::Conn::new(opts))?;
                let mut cache = LookAside::connect(&addr)?;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                    let id = fastrand::u32(..USERS);
                    let key = format!("user:{id}");
                    if let Lookup::Fill(cas) = cache.get(&key)? {
                        let v: u32 = rt
                            .block_on(
                                conn.exec_first(
                                    "SELECT version FROM shop.users WHERE id = ?",
                                    (id,),
                                ),
                            )?
                            .context("row")?;
                        cache.fill(&key, v.to_string().as_bytes(), cas)?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let reader = {
        let (stop, addr) = (stop.clone(), cold_router.addr());
        std::thread::spawn(move || -> Result<u64> {
            let mut c = McClient::connect(&addr)?;
            let mut reads = 0;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                c.get(&format!("user:{}", fastrand::u32(..USERS)))?;
                reads += 1;
            }
            Ok(reads)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let warm_addrs: Vec<String> = warm.iter().map(|m| m.addr()).collect();
    let out = tokio::task::spawn_blocking({
        let cold_addr = cold_router.addr();
        move || {
            Command::new(harness::project::bin("squeal-warmup"))
                .args(["--warm", &warm_addrs.join(","), "--cold", &cold_addr])
                .args(["--rate", "400", "--chunk", "50", "--quiet"])
                .output()
        }
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "squeal-warmup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied_line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    for r in warm_readers {
        r.join()
            .map_err(|_| anyhow::anyhow!("warm reader panicked"))??;
    }

    // Let squeal deliver everything, then compare the cold cluster with the database.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut conn = db.conn().await?;
    let rows: Vec<(u32, u32)> = conn.query("SELECT id, version FROM shop.users").await?;
    let (mut checked, mut stale) = (0, 0);
    for server in &cold {
        let mut c = McClient::connect(&server.addr())?;
        for &(id, version) in &rows {
            if let Some(v) = c.get(&format!("user:{id}"))?.filter(|v| !v.is_empty()) {
                checked += 1;
                let cached: u32 = std::str::from_utf8(&v)?.parse().context("cached version")?;
                if cached < version {
                    stale += 1;
                }
            }
        }
    }
    Ok(Outcome {
        copied_line,
        checked,
        stale,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_with_racing_invalidations_leaves_no_stale_value() -> Result<()> {
    let with = run(true).await?;
    let without = run(false).await?;
    eprintln!(
        "warm-up with hold-off: {}; cold cluster: {} values checked, {} stale\n\
         warm-up without hold-off (contrast): {}; cold cluster: {} values checked, {} stale",
        with.copied_line,
        with.checked,
        with.stale,
        without.copied_line,
        without.checked,
        without.stale
    );
    assert!(with.copied_line.contains("copied"), "{}", with.copied_line);
    assert!(
        with.checked > (USERS as usize) / 2,
        "the cold cluster was warmed: {}",
        with.checked
    );
    assert_eq!(
        with.stale, 0,
        "a value removed by an invalidation came back"
    );
    Ok(())
}
