//! squeal benchmark (run by tests/bench/squeal_catchup.sh):
//!
//! 1. catch-up: loads ~1M row changes into a private MariaDB, then times
//!    `squeal --until-current` from the start of the binlog to the end with row rules, once
//!    with the debug sink and once with the memcache sink (a real memcached), and, in the
//!    same run over the same binlog, PyPI mysql-replication; prints rows/s, keys/s, ratio.
//! 2. live: squeal following the server with the memcache sink while writers commit at a
//!    few rates; prints the median keys per packet at each rate.
//!
//! Usage: squeal-bench [ROWS] (default 1000000; half INSERTs, half UPDATEs).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::mariadb::MariaDbOptions;
use harness::squeal::Squeal;
use harness::{MariaDb, Memcached};
use mysql_async::prelude::*;

const RULES: &str = r#"
[[extract.rule]]
database = "bench"
table = "items"
keys = ["item:{id}", "user_by_email:{email}"]
"#;

fn squeal_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe dir")?.join("squeal");
    if !p.exists() {
        bail!(
            "{} missing: build it in the same profile (cargo build --release -p squeal)",
            p.display()
        );
    }
    Ok(p)
}

fn json_field(line: &str, field: &str) -> Option<f64> {
    let pat = format!("\"{field}\":");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"').parse().ok()
}

struct CatchUp {
    rows: f64,
    keys: f64,
    secs: f64,
    peak_rss_kb: u64,
}

/// Runs `squeal --until-current` from the start of the binlog with `sink` (TOML).
fn catch_up(db: &MariaDb, sink: &str, label: &str) -> Result<CatchUp> {
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        "[source]\nurl = \"{}\"\nserver_id = 901\nstart = \"earliest\"\n\n[batch]\nmax_bytes = 65536\n\
         max_in_flight = 16\n\n{sink}\n\n[checkpoint]\npath = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n{RULES}",
        db.url(),
        dir.path().join("cp.toml").display(),
        harness::free_port()
    );
    let path = dir.path().join("squeal.toml");
    std::fs::write(&path, cfg)?;
    // /usr/bin/time -v gives the peak RSS: memory stays bounded whatever the transaction size.
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(squeal_bin()?)
        .arg("--config")
        .arg(&path)
        .arg("--until-current")
        .env("RUST_LOG", "warn")
        .output()
        .or_else(|_| {
            Command::new(squeal_bin()?)
                .arg("--config")
                .arg(&path)
                .arg("--until-current")
                .env("RUST_LOG", "warn")
                .output()
                .map_err(anyhow::Error::from)
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("squeal ({label}) failed: {stderr}");
    }
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .context("no summary line")?;
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let r = CatchUp {
        rows: json_field(line, "rows").unwrap_or(0.0),
        keys: json_field(line, "keys").unwrap_or(0.0),
        secs: json_field(line, "seconds").unwrap_or(0.0),
        peak_rss_kb: rss,
    };
    let delivered = json_field(line, "delivered_keys").unwrap_or(0.0);
    if delivered != r.keys {
        bail!(
            "{label}: {} keys extracted but {delivered} delivered",
            r.keys
        );
    }
    Ok(r)
}

async fn load(db: &MariaDb, rows: u64) -> Result<()> {
    let mut c = db.conn().await?;
    c.query_drop(
        "CREATE DATABASE bench; CREATE TABLE bench.items (id INT UNSIGNED PRIMARY KEY, \
         grp INT NOT NULL, email VARCHAR(64) NOT NULL, v INT NOT NULL) ENGINE=InnoDB",
    )
    .await?;
    let inserts = rows / 2;
    let chunk = 10_000u64;
    let mut id = 1u64;
    while id <= inserts {
        let end = (id + chunk - 1).min(inserts);
        // Multi-row INSERTs of 1000 rows, 10 statements per transaction.
        let mut sql = String::from("BEGIN;");
        let mut a = id;
        while a <= end {
            let b = (a + 999).min(end);
            sql.push_str("INSERT INTO bench.items VALUES ");
            let vals: Vec<String> = (a..=b)
                .map(|i| format!("({i},{},'user{i}@example.com',0)", i % 1000))
                .collect();
            sql.push_str(&vals.join(","));
            sql.push(';');
            a = b + 1;
        }
        sql.push_str("COMMIT");
        c.query_drop(sql).await?;
        id = end + 1;
    }
    // Updates in large transactions (50k rows each): memory must stay bounded.
    let updates = rows - inserts;
    let mut done = 0u64;
    while done < updates {
        let n = (updates - done).min(50_000);
        let lo = done % inserts + 1;
        c.query_drop(format!(
            "UPDATE bench.items SET v = v + 1 WHERE id BETWEEN {lo} AND {}",
            lo + n - 1
        ))
        .await?;
        done += n;
    }
    c.disconnect().await?;
    Ok(())
}

fn python_reader(db: &MariaDb, first: &str, end: &(String, u64)) -> Result<(f64, f64)> {
    let script = harness::project::root().join("tests/bench/pyrepl_read.py");
    let out = Command::new("python3")
        .arg(script)
        .args([
            "--port",
            &db.port().to_string(),
            "--file",
            first,
            "--end-file",
            &end.0,
        ])
        .args(["--end-pos", &end.1.to_string()])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!(
            "mysql-replication reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .rfind(|l| l.starts_with('{'))
        .context("no python summary")?;
    Ok((
        json_field(line, "rows").unwrap_or(0.0),
        json_field(line, "seconds").unwrap_or(0.0),
    ))
}

/// Median of a Prometheus histogram's increments between two scrapes (bucket upper bound).
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

fn median(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<(f64, f64)> {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, v)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|x| x.1)
                .unwrap_or(0.0);
            (*le, v - b)
        })
        .collect();
    let total = d.last()?.1;
    if total <= 0.0 {
        return None;
    }
    d.iter()
        .find(|(_, c)| *c >= total / 2.0)
        .map(|(le, _)| (*le, total))
}

async fn live(db: &MariaDb, mc: &Memcached) -> Result<Vec<(String, f64, f64, f64)>> {
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        "[source]\nurl = \"{}\"\nserver_id = 902\n\n[[sink]]\ntype = \"memcache\"\n\
         endpoints = [\"{}\"]\n\n[checkpoint]\npath = \"{}\"\n{RULES}",
        db.url(),
        mc.addr(),
        dir.path().join("cp.toml").display()
    );
    let squeal = Squeal::start_bin(squeal_bin()?, tempfile::tempdir()?, &cfg)?;
    let mut results = Vec::new();
    // (label, transactions per second per writer or 0 for as fast as possible, writers)
    for (label, rate, writers) in [
        ("100 tx/s", 100u64, 1usize),
        ("1000 tx/s", 1000, 1),
        ("5000 tx/s", 2500, 2),
        ("max (8 writers)", 0, 8),
    ] {
        let before = histogram(&squeal.metrics_text()?, "squeal_keys_per_packet");
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let opts = db.opts();
            tasks.push(tokio::spawn(async move {
                let mut c = mysql_async::Conn::new(opts).await?;
                let mut n = 0u64;
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(3) {
                    let id = (n * 7919 + w as u64 * 104_729) % 400_000 + 1;
                    c.exec_drop("UPDATE bench.items SET v = v + 1 WHERE id = ?", (id,))
                        .await?;
                    n += 1;
                    if rate > 0 {
                        let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                anyhow::Ok(n)
            }));
        }
        let mut txns = 0;
        for t in tasks {
            txns += t.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = histogram(&squeal.metrics_text()?, "squeal_keys_per_packet");
        let (med, packets) = median(&before, &after).unwrap_or((0.0, 0.0));
        results.push((label.to_string(), txns as f64 / secs, med, packets));
    }
    Ok(results)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rows: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let db = MariaDb::start_with(MariaDbOptions {
        server_id: 1,
        extra_args: vec![
            "--innodb-flush-log-at-trx-commit=2".into(),
            "--sync-binlog=0".into(),
            "--max-allowed-packet=256M".into(),
            "--innodb-buffer-pool-size=512M".into(),
            "--max-binlog-size=256M".into(),
        ],
    })
    .await?;
    let mc = Memcached::start()?;
    let t = Instant::now();
    load(&db, rows).await?;
    let end = db.binlog_position().await?;
    eprintln!(
        "loaded {rows} row changes in {:.1}s; binlog ends at {}:{}",
        t.elapsed().as_secs_f64(),
        end.0,
        end.1
    );
    let first = {
        let mut c = db.conn().await?;
        let r: Option<mysql_async::Row> = c.query_first("SHOW BINARY LOGS").await?;
        r.and_then(|r| r.get::<String, _>(0)).context("no binlog")?
    };

    if std::env::args().nth(2).as_deref() == Some("serve") {
        // Keeps the loaded server up for manual runs of other readers.
        println!("port {} first {first} end {}:{}", db.port(), end.0, end.1);
        tokio::time::sleep(Duration::from_secs(900)).await;
        return Ok(());
    }
    let debug = catch_up(
        &db,
        "[[sink]]\ntype = \"debug\"\nquiet = true",
        "debug sink",
    )?;
    let memc = catch_up(
        &db,
        &format!(
            "[[sink]]\ntype = \"memcache\"\nendpoints = [\"{}\"]\nconnections = 8",
            mc.addr()
        ),
        "memcache sink",
    )?;
    let (py_rows, py_secs) = python_reader(&db, &first, &end)?;

    println!(
        "\n== catch-up: {rows} row changes ({}:4 .. {}:{}) ==",
        first, end.0, end.1
    );
    println!(
        "{:<34} {:>10} {:>9} {:>14} {:>14} {:>10}",
        "reader", "rows", "seconds", "rows/s", "keys/s", "peak RSS"
    );
    for (name, r) in [
        ("squeal, row rules, debug sink", &debug),
        ("squeal, row rules, memcache sink", &memc),
    ] {
        println!(
            "{name:<34} {:>10} {:>9.3} {:>14.0} {:>14.0} {:>8} MB",
            r.rows,
            r.secs,
            r.rows / r.secs,
            r.keys / r.secs,
            r.peak_rss_kb / 1024
        );
    }
    println!(
        "{:<34} {:>10} {:>9.3} {:>14.0} {:>14} {:>10}",
        "python mysql-replication",
        py_rows,
        py_secs,
        py_rows / py_secs,
        "-",
        "-"
    );
    let py_rate = py_rows / py_secs;
    println!(
        "ratio squeal(debug)/mysql-replication: {:.1}x; squeal(memcache)/mysql-replication: {:.1}x",
        debug.rows / debug.secs / py_rate,
        memc.rows / memc.secs / py_rate
    );

    println!("\n== live: keys per packet (memcache sink, 2 keys per transaction) ==");
    println!(
        "{:<18} {:>14} {:>22} {:>10}",
        "write rate", "achieved tx/s", "median keys/packet", "packets"
    );
    for (label, tps, med, packets) in live(&db, &mc).await? {
        println!(
            "{label:<18} {tps:>14.0} {:>22} {packets:>10.0}",
            format!("<= {med}")
        );
    }
    Ok(())
}
