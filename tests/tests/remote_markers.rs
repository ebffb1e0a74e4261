//! Remote markers across two regions (issue 7): with replication held back on purpose, an
//! application in the replica region writes keys (to the primary database) and re-reads
//! them through its router. Stale reads (a value older than the reader's own last
//! committed write) are counted with markers off, then on: on must give zero. After
//! replication catches up, the replica region's squeal must have cleared every marker and
//! every stale cached value.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::memcache::McClient;
use harness::regions::TwoRegions;
use harness::workload::{LookAside, Lookup};
use marker::remote::{MarkerCache, Markers, ReadFrom};
use mysql_async::prelude::*;

const SCHEMA: &str = "CREATE DATABASE shop; \
    CREATE TABLE shop.users (id INT PRIMARY KEY, version INT NOT NULL); \
    INSERT INTO shop.users SELECT seq, 0 FROM shop.seq_0_to_399";

/// Annotations only: the keys travel in the statement, as in the paper.
const EXTRACT: &str = "[extract]\nannotations = true\n";

/// The replica-region application's cache: one plain memcache connection to its cluster's
/// router, which sends cache keys to the cluster and marker keys (`r_*`, a prefix route) to
/// the regional pool.
struct AppCache {
    router: McClient,
}

impl MarkerCache for AppCache {
    type Error = anyhow::Error;
    fn set_marker(&mut self, marker: &[u8], ttl: u32) -> Result<()> {
        let reply = self
            .router
            .set_with(std::str::from_utf8(marker)?, b"1", 0, ttl)?;
        anyhow::ensure!(reply == "STORED", "marker set: {reply}");
        Ok(())
    }
    fn marker_exists(&mut self, marker: &[u8]) -> Result<bool> {
        Ok(self.router.get(std::str::from_utf8(marker)?)?.is_some())
    }
    fn delete_local(&mut self, key: &[u8]) -> Result<()> {
        self.router.delete(std::str::from_utf8(key)?)?;
        Ok(())
    }
}

struct Counts {
    reads: u64,
    stale: u64,
    from_primary: u64,
}

/// For each id: write a new version (to the primary), then read it back twice through the
/// replica region's router; a read older than that version is stale.
async fn workload(
    regions: &TwoRegions,
    ids: std::ops::Range<u32>,
    markers_on: bool,
) -> Result<Counts> {
    let markers = Markers::default();
    let mut cache = AppCache {
        router: McClient::connect(&regions.replica.routers[0].addr())?,
    };
    let mut reader = LookAside::connect(&regions.replica.routers[0].addr())?;
    let mut primary = regions.primary.db.conn().await?;
    let mut replica = regions.replica.db.conn().await?;
    let mut counts = Counts {
        reads: 0,
        stale: 0,
        from_primary: 0,
    };
    for id in ids {
        let key = format!("user:{id}");
        let version = id + 1;
        let sql = |annotation: &str| {
            format!("UPDATE shop.users SET version = {version} WHERE id = {id} {annotation}")
        };
        if markers_on {
            let db = &mut primary;
            markers
                .write_async(&mut cache, &[key.as_bytes()], |annotation| async move {
                    db.query_drop(sql(&annotation)).await?;
                    Ok(())
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        } else {
            let annotation = marker::annotation::comment([key.as_bytes()])?;
            primary.query_drop(sql(&annotation)).await?;
            cache.delete_local(key.as_bytes())?;
        }
        for _ in 0..2 {
            counts.reads += 1;
            let seen: u32 = match reader.get(&key)? {
                Lookup::Hit(v) => std::str::from_utf8(&v)?.parse()?,
                lookup => {
                    let from = if markers_on {
                        markers
                            .after_miss(&mut cache, key.as_bytes())
                            .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    } else {
                        ReadFrom::LocalReplica
                    };
                    let db = match from {
                        ReadFrom::Primary => {
                            counts.from_primary += 1;
                            &mut primary
                        }
                        ReadFrom::LocalReplica => &mut replica,
                    };
                    let v: u32 = db
                        .exec_first("SELECT version FROM shop.users WHERE id = ?", (id,))
                        .await?
                        .context("row")?;
                    // Fill only from the local replica: a primary read is not cached here.
                    if let (Lookup::Fill(cas), ReadFrom::LocalReplica) = (lookup, from) {
                        reader.fill(&key, v.to_string().as_bytes(), cas)?;
                    }
                    v
                }
            };
            if seen < version {
                counts.stale += 1;
            }
        }
    }
    Ok(counts)
}

/// Waits until no key in `ids` holds a value older than the database's, in every cluster of
/// the replica region, and (markers on) no marker is left in its regional pool.
async fn wait_healed(
    regions: &TwoRegions,
    ids: std::ops::Range<u32>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut bad = Vec::new();
        let mut regional = McClient::connect(&regions.replica.regional.addr())?;
        for router in regions.replica.router_addrs() {
            let mut c = McClient::connect(&router)?;
            for id in ids.clone() {
                if let Some(v) = c.get(&format!("user:{id}"))?.filter(|v| !v.is_empty()) {
                    if v != (id + 1).to_string().as_bytes() {
                        bad.push(format!(
                            "user:{id} cached {:?}",
                            String::from_utf8_lossy(&v)
                        ));
                    }
                }
            }
        }
        for id in ids.clone() {
            if regional.get(&format!("r_user:{id}"))?.is_some() {
                bad.push(format!("marker r_user:{id} left"));
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "not healed after {timeout:?}: {} problems, e.g. {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_prevent_stale_reads_in_a_lagging_replica_region() -> Result<()> {
    let regions = TwoRegions::start(SCHEMA, EXTRACT).await?;

    // Markers off: the write goes to the primary, the re-read to the lagging replica.
    regions.pause_replication().await?;
    let off = workload(&regions, 0..100, false).await?;
    regions.resume_replication().await?;
    regions.wait_caught_up(Duration::from_secs(30)).await?;
    wait_healed(&regions, 0..100, Duration::from_secs(30)).await?;

    // Markers on.
    regions.pause_replication().await?;
    let on = workload(&regions, 100..200, true).await?;
    // The router's prefix route put the markers in the regional pool, not in a cluster.
    let mut regional = McClient::connect(&regions.replica.regional.addr())?;
    assert!(
        regional.get("r_user:150")?.is_some(),
        "marker in the regional pool"
    );
    for cluster in &regions.replica.clusters {
        for server in cluster {
            assert!(McClient::connect(&server.addr())?
                .get("r_user:150")?
                .is_none());
        }
    }
    regions.resume_replication().await?;
    regions.wait_caught_up(Duration::from_secs(30)).await?;
    // Every marker is cleared by the replica region's squeal once replication applied the
    // write: no key stays on the primary path.
    wait_healed(&regions, 100..200, Duration::from_secs(30)).await?;

    eprintln!(
        "remote markers: off: {} stale of {} reads; on: {} stale of {} reads ({} served by the primary)",
        off.stale, off.reads, on.stale, on.reads, on.from_primary
    );
    assert!(
        off.stale >= 100,
        "without markers the lagging replica serves old values: {}",
        off.stale
    );
    assert_eq!(on.stale, 0, "with markers no read is stale");
    assert!(
        on.from_primary >= 100,
        "markers sent reads to the primary: {}",
        on.from_primary
    );

    // After catch-up, a fresh read in the replica region goes to the (now fresh) replica.
    let mut cache = AppCache {
        router: McClient::connect(&regions.replica.routers[0].addr())?,
    };
    assert_eq!(
        Markers::default()
            .after_miss(&mut cache, b"user:150")
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        ReadFrom::LocalReplica
    );
    Ok(())
}
