//! A whole region on loopback, as DESIGN.md describes it: a MariaDB server, front-end
//! clusters of memcached, a regional pool, one router per cluster (serving that cluster to
//! its web servers and applying invalidations to every cluster), and a squeal tailing the
//! server's binlog and delivering to the routers.
//!
//! Used by the quickstart demo, the end-to-end benchmark and the two-region tests.

use std::time::Duration;

use anyhow::Result;

use crate::mariadb::{MariaDb, MariaDbOptions};
use crate::memcached::{toml_list, Memcached};
use crate::router::Router;
use crate::squeal::Squeal;

/// The shared secret of the demo and tests' invalidation port.
pub const SECRET: &str = "squeal-region-secret";

/// What to start.
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// Front-end clusters, each with this many memcached servers.
    pub clusters: usize,
    pub servers_per_cluster: usize,
    /// squeal's `[extract]` / rules TOML.
    pub extract: String,
    /// Extra router config appended to each router (e.g. route trees).
    pub router_extra: String,
    /// MariaDB server id.
    pub server_id: u32,
    /// The routers' delete timeout (`[invalidation] timeout_ms`): after it, a server's
    /// deletes go to the spool.
    pub invalidation_timeout_ms: u64,
    /// The clusters (by index) in the routers' `[invalidation] clusters`; `None`: every one.
    /// Leaving one out makes a broken pipeline on purpose (squeal-inspect's tests).
    pub invalidated_clusters: Option<Vec<usize>>,
}

impl Default for RegionOptions {
    fn default() -> RegionOptions {
        RegionOptions {
            clusters: 2,
            servers_per_cluster: 2,
            extract: String::new(),
            router_extra: String::new(),
            server_id: 1,
            invalidation_timeout_ms: 500,
            invalidated_clusters: None,
        }
    }
}

pub struct Region {
    pub db: MariaDb,
    pub clusters: Vec<Vec<Memcached>>,
    pub regional: Memcached,
    /// `routers[i]` serves cluster `i`.
    pub routers: Vec<Router>,
    pub invalidation_ports: Vec<u16>,
    pub squeal: Option<Squeal>,
    pub dir: tempfile::TempDir,
}

impl Region {
    /// Starts the database, the memcached servers and the routers (not squeal: create the
    /// schema first, then [`Region::start_squeal`]).
    pub async fn start(opts: &RegionOptions) -> Result<Region> {
        let db = MariaDb::start_with(MariaDbOptions {
            server_id: opts.server_id,
            ..MariaDbOptions::fast()
        })
        .await?;
        Region::around(db, opts)
    }

    /// Builds the cache side of a region around an already running database (a replica,
    /// for a replica region).
    pub fn around(db: MariaDb, opts: &RegionOptions) -> Result<Region> {
        let clusters: Vec<Vec<Memcached>> = (0..opts.clusters)
            .map(|_| Memcached::start_many(opts.servers_per_cluster))
            .collect::<Result<_>>()?;
        let regional = Memcached::start()?;
        let dir = tempfile::tempdir()?;
        let mut pools = String::new();
        for (i, c) in clusters.iter().enumerate() {
            pools.push_str(&format!("[pools.c{i}]\nservers = [{}]\n", toml_list(c)));
        }
        pools.push_str(&format!(
            "[pools.regional]\nservers = [{:?}]\n",
            regional.addr()
        ));
        let names: Vec<String> = (0..clusters.len())
            .filter(|i| {
                opts.invalidated_clusters
                    .as_ref()
                    .is_none_or(|only| only.contains(i))
            })
            .map(|i| format!("\"c{i}\""))
            .collect();
        let mut routers = Vec::new();
        let mut invalidation_ports = Vec::new();
        for i in 0..clusters.len() {
            let inv = crate::free_port();
            let spool = dir.path().join(format!("spool-{i}"));
            let cfg = format!(
                "workers = 2\n\
                 route = {{ type = \"prefix\", default = \"c{i}\", prefixes = {{ \"r_\" = \"regional\" }} }}\n\
                 {pools}\
                 [invalidation]\nlisten = \"127.0.0.1:{inv}\"\nsecret = \"{SECRET}\"\n\
                 clusters = [{}]\nmarker_pools = [\"regional\"]\nspool_dir = {:?}\n\
                 timeout_ms = {}\n{}\n",
                names.join(", "),
                spool.display().to_string(),
                opts.invalidation_timeout_ms,
                opts.router_extra,
            );
            routers.push(Router::start_config(&cfg)?);
            invalidation_ports.push(inv);
        }
        Ok(Region {
            db,
            clusters,
            regional,
            routers,
            invalidation_ports,
            squeal: None,
            dir,
        })
    }

    /// squeal's config: the region's database, the router sink to every router, `extract`.
    pub fn squeal_config(&self, extract: &str) -> String {
        self.squeal_config_with_sink(&self.router_sink(), extract)
    }

    /// The `[[sink]]` body that delivers to every router of the region.
    pub fn router_sink(&self) -> String {
        let eps: Vec<String> = self
            .invalidation_ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        format!(
            "type = \"router\"\nendpoints = [{}]\nsecret = \"{SECRET}\"\n\
             source = \"db-{}\"\ntimeout_ms = 2000",
            eps.join(", "),
            self.db.server_id,
        )
    }

    /// squeal's config with another `[[sink]]` body (e.g. Kafka).
    pub fn squeal_config_with_sink(&self, sink: &str, extract: &str) -> String {
        format!(
            "[source]\nurl = \"{}\"\nserver_id = {}\nheartbeat_ms = 500\nreconnect_min_ms = 50\n\
             reconnect_max_ms = 500\n\n{extract}\n\n\
             [[sink]]\n{sink}\n\n[checkpoint]\npath = {:?}\ninterval_ms = 100\n",
            self.db.url(),
            900 + self.db.server_id,
            self.dir
                .path()
                .join("squeal-checkpoint.toml")
                .display()
                .to_string(),
        )
    }

    /// Starts squeal with the router sink and `extract` rules.
    pub fn start_squeal(&mut self, extract: &str) -> Result<&Squeal> {
        let squeal = Squeal::start(&self.squeal_config(extract))?;
        Ok(self.squeal.insert(squeal))
    }

    /// The routers' client addresses, cluster order.
    pub fn router_addrs(&self) -> Vec<String> {
        self.routers.iter().map(|r| r.addr()).collect()
    }

    /// Waits until squeal has read everything the server wrote (lag 0 bytes) and has no
    /// batch unacknowledged, or `timeout` passes.
    pub fn drain(&self, timeout: Duration) -> Result<()> {
        let Some(squeal) = &self.squeal else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + timeout;
        let mut stable = 0;
        let mut last = -1.0;
        while std::time::Instant::now() < deadline {
            let lag = squeal.metric("squeal_lag_bytes").unwrap_or(f64::MAX);
            let keys = squeal.metric("squeal_keys_total").unwrap_or(0.0);
            let delivered = squeal.metric("squeal_keys_delivered_total").unwrap_or(0.0);
            if lag == 0.0 && delivered >= keys && keys == last {
                stable += 1;
                if stable >= 3 {
                    return Ok(());
                }
            } else {
                stable = 0;
            }
            last = keys;
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("squeal did not drain within {timeout:?}")
    }
}
