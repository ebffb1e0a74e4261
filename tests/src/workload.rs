//! A look-aside caching workload over a [`Region`](crate::region::Region): readers read
//! `user:{id}` through their cluster's router and fill misses from MariaDB; writers update
//! rows; a prober measures commit-to-delete latency from outside the pipeline; afterwards a
//! checker compares every cached value with the database.
//!
//! Readers fill with memcached's meta-protocol leases (`mg k v c N30`: the reader that
//! gets `W` fills, with `ms k C<cas>`), so a fill that raced an invalidation fails instead
//! of caching an old value forever. Without that, the classic look-aside race would leave
//! stale keys that no invalidation pipeline could prevent, and the stale count would not
//! measure delivery.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql_async::prelude::*;

use crate::memcache::McClient;
use crate::region::Region;

/// squeal's rule for the workload's table.
pub const EXTRACT: &str = r#"
[[extract.rule]]
database = "shop"
table = "users"
keys = ["user:{id}"]
"#;

/// Creates `shop.users` with `users + probes` rows (version 0).
pub async fn create_schema(db: &crate::MariaDb, rows: u32) -> Result<()> {
    db.exec(
        "CREATE DATABASE IF NOT EXISTS shop; \
         CREATE TABLE shop.users (id INT PRIMARY KEY, version INT NOT NULL, name VARCHAR(64))",
    )
    .await?;
    let mut conn = db.conn().await?;
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|id| format!("({id}, 0, 'user {id}')"))
            .collect();
        conn.query_drop(format!(
            "INSERT INTO shop.users VALUES {}",
            values.join(",")
        ))
        .await?;
    }
    conn.disconnect().await?;
    Ok(())
}

/// One look-aside cache client over the text/meta protocol.
pub struct LookAside {
    mc: McClient,
}

/// What a cache read found.
pub enum Lookup {
    Hit(Vec<u8>),
    /// A miss this reader won the lease for: fill with this CAS.
    Fill(u64),
    /// A miss another reader is filling: read the database, do not fill.
    Miss,
}

impl LookAside {
    pub fn connect(addr: &str) -> Result<LookAside> {
        Ok(LookAside {
            mc: McClient::connect(addr)?,
        })
    }

    pub fn get(&mut self, key: &str) -> Result<Lookup> {
        self.mc.send(format!("mg {key} v c N30\r\n").as_bytes())?;
        let line = self.mc.line()?;
        let mut parts = line.split(' ');
        if parts.next() != Some("VA") {
            bail!("mg {key}: {line}");
        }
        let len: usize = parts.next().context("VA length")?.parse()?;
        let (mut cas, mut win, mut busy) = (0, false, false);
        for flag in parts {
            match flag {
                "W" => win = true,
                "Z" => busy = true,
                f if f.starts_with('c') => cas = f[1..].parse()?,
                _ => {}
            }
        }
        let data = self.mc.bytes(len + 2)?;
        Ok(if win {
            Lookup::Fill(cas)
        } else if busy || len == 0 {
            Lookup::Miss
        } else {
            Lookup::Hit(data[..len].to_vec())
        })
    }

    /// Fills a key whose lease this reader won; false if an invalidation came first.
    pub fn fill(&mut self, key: &str, value: &[u8], cas: u64) -> Result<bool> {
        self.mc
            .send(format!("ms {key} {} C{cas} T0\r\n", value.len()).as_bytes())?;
        self.mc.send(value)?;
        self.mc.send(b"\r\n")?;
        Ok(self.mc.line()? == "HD")
    }

    /// A cached, non-placeholder value, if any (for checkers).
    pub fn peek(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.mc.get(key)?.filter(|v| !v.is_empty()))
    }

    pub fn client(&mut self) -> &mut McClient {
        &mut self.mc
    }
}

#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Rows readers and writers use (`user:0` .. ).
    pub users: u32,
    /// Rows only the prober uses, after the users.
    pub probes: u32,
    pub readers: usize,
    pub writers: usize,
    /// Total commits per second across writers; `None`: as fast as they go.
    pub write_rate: Option<f64>,
    pub duration: Duration,
}

/// What a run did and found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub reads: u64,
    pub hits: u64,
    pub fills: u64,
    pub fills_refused: u64,
    pub writes: u64,
    pub elapsed: Duration,
    /// Commit-to-delete latency samples, measured from outside the pipeline.
    pub latencies: Vec<Duration>,
    /// Keys checked after the drain, and how many held a value older than the database's.
    pub checked: u64,
    pub stale: u64,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let mut v = self.latencies.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        Some(v[i])
    }
}

/// Runs the workload on `region` for `opts.duration`, then drains and checks.
pub async fn run(region: &Region, opts: &WorkloadOptions) -> Result<Report> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<[AtomicU64; 5]> = Arc::new(Default::default());
    let routers = region.router_addrs();
    let db_opts = region.db.opts();
    let started = Instant::now();

    // Readers: threads with blocking cache clients and their own small runtime for MariaDB.
    let mut threads = Vec::new();
    for i in 0..opts.readers {
        let addr = routers[i % routers.len()].clone();
        let (stop, counters, db_opts, users) =
            (stop.clone(), counters.clone(), db_opts.clone(), opts.users);
        threads.push(std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut conn = rt.block_on(mysql_async::Conn::new(db_opts))?;
            let mut cache = LookAside::connect(&addr)?;
            while !stop.load(Ordering::Relaxed) {
                let id = fastrand::u32(..users);
                let key = format!("user:{id}");
                counters[0].fetch_add(1, Ordering::Relaxed);
                match cache.get(&key)? {
                    Lookup::Hit(_) => {
                        counters[1].fetch_add(1, Ordering::Relaxed);
                    }
                    lookup => {
                        let version: u32 = rt
                            .block_on(
                                conn.exec_first(
                                    "SELECT version FROM shop.users WHERE id = ?",
                                    (id,),
                                ),
                            )?
                            .context("row")?;
                        if let Lookup::Fill(cas) = lookup {
                            if cache.fill(&key, version.to_string().as_bytes(), cas)? {
                                counters[2].fetch_add(1, Ordering::Relaxed);
                            } else {
                                counters[3].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            Ok(())
        }));
    }

    // Writers: async tasks, paced when a rate is given.
    let mut writers = Vec::new();
    for _ in 0..opts.writers {
        let (stop, counters, db_opts, users) =
            (stop.clone(), counters.clone(), db_opts.clone(), opts.users);
        let interval = opts
            .write_rate
            .map(|r| Duration::from_secs_f64(opts.writers as f64 / r));
        writers.push(tokio::spawn(async move {
            let mut conn = mysql_async::Conn::new(db_opts).await?;
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(iv) = interval {
                    next += iv;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let id = fastrand::u32(..users);
                conn.exec_drop(
                    "UPDATE shop.users SET version = version + 1 WHERE id = ?",
                    (id,),
                )
                .await?;
                counters[4].fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }

    // Prober: its own rows, cached in every cluster, then updated; the latency is from the
    // commit's return to the key being gone from every cluster.
    let prober = {
        let (stop, routers, db_opts) = (stop.clone(), routers.clone(), db_opts.clone());
        let (first, count) = (opts.users, opts.probes);
        std::thread::spawn(move || -> Result<Vec<Duration>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut conn = rt.block_on(mysql_async::Conn::new(db_opts))?;
            let mut caches: Vec<McClient> = routers
                .iter()
                .map(|a| McClient::connect(a))
                .collect::<Result<_>>()?;
            let mut samples = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && count > 0 {
                let id = first + n % count;
                n += 1;
                let key = format!("user:{id}");
                for c in caches.iter_mut() {
                    c.set(&key, b"probe")?;
                }
                rt.block_on(conn.exec_drop(
                    "UPDATE shop.users SET version = version + 1 WHERE id = ?",
                    (id,),
                ))?;
                let t0 = Instant::now();
                let deadline = t0 + Duration::from_secs(10);
                loop {
                    let mut cached = false;
                    for c in caches.iter_mut() {
                        cached |= c.get(&key)?.is_some();
                    }
                    if !cached {
                        samples.push(t0.elapsed());
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{key} still cached 10 s after its commit");
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(samples)
        })
    };

    tokio::time::sleep(opts.duration).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for w in writers {
        w.await??;
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    let latencies = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;

    region.drain(Duration::from_secs(60))?;
    let (checked, stale) = check(region, opts.users).await?;
    Ok(Report {
        reads: counters[0].load(Ordering::Relaxed),
        hits: counters[1].load(Ordering::Relaxed),
        fills: counters[2].load(Ordering::Relaxed),
        fills_refused: counters[3].load(Ordering::Relaxed),
        writes: counters[4].load(Ordering::Relaxed),
        elapsed,
        latencies,
        checked,
        stale,
    })
}

/// Compares every cached `user:{id}` in every cluster with the database: (cached values
/// checked, stale ones). A stale value is one older than the row's current version.
pub async fn check(region: &Region, users: u32) -> Result<(u64, u64)> {
    let mut conn = region.db.conn().await?;
    let rows: Vec<(u32, u32)> = conn
        .query("SELECT id, version FROM shop.users ORDER BY id")
        .await?;
    conn.disconnect().await?;
    let (mut checked, mut stale) = (0, 0);
    for addr in region.router_addrs() {
        let mut cache = LookAside::connect(&addr)?;
        for &(id, version) in rows.iter().filter(|(id, _)| *id < users) {
            if let Some(v) = cache.peek(&format!("user:{id}"))? {
                checked += 1;
                if v != version.to_string().as_bytes() {
                    stale += 1;
                }
            }
        }
    }
    Ok((checked, stale))
}
