//! The quickstart demo: real servers on loopback, Squeal between them, and a look-aside
//! workload that shows invalidations flowing. Run through `deploy/quickstart.sh`.

use std::time::Duration;

use anyhow::{Context, Result};
use harness::{MariaDb, McClient, Memcached};
use mysql_async::prelude::*;

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    println!("starting MariaDB (binlog ROW, annotate events, FULL row metadata)...");
    let db = MariaDb::start().await?;
    println!("  MariaDB on 127.0.0.1:{}", db.port());
    let clusters = [Memcached::start_many(2)?, Memcached::start_many(2)?];
    for (i, c) in clusters.iter().enumerate() {
        let addrs: Vec<String> = c.iter().map(|m| m.addr()).collect();
        println!("  front-end cluster {i}: memcached {}", addrs.join(", "));
    }

    db.exec(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.users (id INT PRIMARY KEY, name VARCHAR(64))",
    )
    .await?;

    // Look-aside: read the cache, on a miss read the database and fill the cache.
    let mut conn = db.conn().await?;
    conn.query_drop("INSERT INTO shop.users VALUES (1, 'ada'), (2, 'grace')")
        .await?;
    let cache = &clusters[0][0];
    let mut mc = McClient::connect(&cache.addr())?;
    for id in [1, 2] {
        let key = format!("user:{id}");
        if mc.get(&key)?.is_none() {
            let name: String = conn
                .exec_first("SELECT name FROM shop.users WHERE id = ?", (id,))
                .await?
                .context("row")?;
            mc.set(&key, name.as_bytes())?;
            println!("  miss {key} -> read MariaDB -> cached {name:?}");
        }
    }
    conn.query_drop("UPDATE shop.users SET name = 'lovelace' WHERE id = 1")
        .await?;
    println!("  committed UPDATE shop.users SET name='lovelace' WHERE id=1");
    let (file, pos) = db.binlog_position().await?;
    println!("  binlog now at {file}:{pos}");
    let cached = mc.get("user:1")?;
    println!(
        "  cache still holds user:1 = {:?}: without squeal this is a stale key",
        cached.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    conn.disconnect().await?;

    if keep {
        println!("running; Ctrl-C stops everything");
        tokio::signal::ctrl_c().await?;
    } else {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("stopping servers");
    Ok(())
}
