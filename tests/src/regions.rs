//! Two regions on one machine: the primary region (the primary MariaDB) and a replica
//! region (a MariaDB replicating from it with GTID and `--log-slave-updates`), each with its
//! own front-end clusters, regional pool, routers and squeal tailing its own server.
//!
//! Replica-region invalidations come from the replica's own binlog, so they are applied only
//! after replication has applied the write: the delay that remote markers exist for.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mysql_async::prelude::*;

use crate::mariadb::MariaDb;
use crate::region::{Region, RegionOptions};

pub struct TwoRegions {
    pub primary: Region,
    pub replica: Region,
}

impl TwoRegions {
    /// Starts both regions, runs `schema` on the primary, waits until the replica has it,
    /// and starts a squeal per region with `extract`.
    pub async fn start(schema: &str, extract: &str) -> Result<TwoRegions> {
        let primary = Region::start(&RegionOptions::default()).await?;
        let replica_db = MariaDb::start_replica_of(&primary.db, 2).await?;
        let replica = Region::around(
            replica_db,
            &RegionOptions {
                server_id: 2,
                ..Default::default()
            },
        )?;
        primary.db.exec(schema).await?;
        let regions = TwoRegions { primary, replica };
        regions.wait_caught_up(Duration::from_secs(30)).await?;
        let TwoRegions {
            mut primary,
            mut replica,
        } = regions;
        primary.start_squeal(extract)?;
        replica.start_squeal(extract)?;
        Ok(TwoRegions { primary, replica })
    }

    /// Stops applying replicated events on the replica (they still arrive): the replica
    /// region now lags behind the primary, as it does under real replication delay.
    pub async fn pause_replication(&self) -> Result<()> {
        self.replica.db.exec("STOP SLAVE SQL_THREAD").await
    }

    pub async fn resume_replication(&self) -> Result<()> {
        self.replica.db.exec("START SLAVE SQL_THREAD").await
    }

    /// Waits until the replica has applied everything the primary has written (its
    /// `gtid_slave_pos` reaches the primary's `gtid_binlog_pos`).
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut p = self.primary.db.conn().await?;
        let target: String = p
            .query_first("SELECT @@gtid_binlog_pos")
            .await?
            .unwrap_or_default();
        p.disconnect().await?;
        let mut r = self.replica.db.conn().await?;
        loop {
            let at: String = r
                .query_first("SELECT @@gtid_slave_pos")
                .await?
                .unwrap_or_default();
            if at == target {
                r.disconnect().await?;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("replica at {at:?}, primary at {target:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
