//! The receiving end of squeal's invalidations.
//!
//! Batches arrive on the native port ([`listener`]) or from Kafka ([`kafka`]); the
//! [`fanout`] deletes each key on its server in every front-end cluster (marker keys in the
//! regional pool), through per-server pipelined [`deleter`]s; what cannot be delivered goes
//! to the durable [`spool`] and is replayed when the server is back. A batch is
//! acknowledged (or its Kafka offset committed) only after all that.

pub mod deleter;
pub mod fanout;
pub mod kafka;
pub mod listener;
pub mod spool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

pub use fanout::{Fanout, Placement, Target};

/// `[invalidation]` in the router's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    /// Native-protocol port for squeal's batches (loopback or a private network: batches are
    /// authenticated, not encrypted).
    pub listen: Option<SocketAddr>,
    /// Process secret for the batch MAC. Prefer `secret_file` in production.
    pub secret: Option<String>,
    /// File holding the process secret (trailing whitespace ignored).
    pub secret_file: Option<PathBuf>,
    /// Pools that receive every cache-key delete: each front-end cluster of the region.
    pub clusters: Vec<String>,
    /// Pools that receive marker-key deletes: the regional pool.
    #[serde(default)]
    pub marker_pools: Vec<String>,
    /// Clusters (among `clusters`) being warmed: a delete there leaves a hold-off
    /// tombstone, so a warm-up cannot write the deleted value back.
    #[serde(default)]
    pub warming: Vec<String>,
    /// How long the hold-off lasts.
    #[serde(default = "default_holdoff_secs")]
    pub holdoff_secs: u32,
    /// Where undeliverable deletes are kept until their server is back.
    pub spool_dir: PathBuf,
    /// Bound on the spool; when reached, batches are rejected (and retried by squeal).
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Timeout of one pipelined group of deletes to one server.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often the spool is checked for servers to replay.
    #[serde(default = "default_replay_interval_ms")]
    pub replay_interval_ms: u64,
    /// Time a new connection to the native port has to complete the handshake (prove it
    /// holds the secret) before it is closed.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Time a frame has, from its first byte, to arrive whole: a peer that stalls mid-frame
    /// cannot hold a connection and its buffer for ever.
    #[serde(default = "default_frame_timeout_ms")]
    pub frame_timeout_ms: u64,
    /// Connections allowed in their handshake at once; more are refused at accept (and
    /// counted), so unauthenticated peers cannot make the router hold more than about
    /// this many times a few hundred bytes.
    #[serde(default = "default_max_unauthenticated")]
    pub max_unauthenticated: usize,
    pub kafka: Option<kafka::KafkaConfig>,
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_holdoff_secs() -> u32 {
    marker::holdoff::DEFAULT_HOLDOFF_SECS
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_replay_interval_ms() -> u64 {
    200
}
fn default_handshake_timeout_ms() -> u64 {
    2000
}
fn default_frame_timeout_ms() -> u64 {
    10_000
}
fn default_max_unauthenticated() -> usize {
    64
}

impl InvalidationConfig {
    /// Checks what serde cannot: a secret is given, some transport is on, pools exist.
    pub fn validate(&self, pool_exists: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        if self.secret.is_none() == self.secret_file.is_none() {
            bail!("[invalidation] needs exactly one of `secret` or `secret_file`");
        }
        if self.listen.is_none() && self.kafka.is_none() {
            bail!("[invalidation] needs `listen` (native port) or `[invalidation.kafka]`, or both");
        }
        if self.clusters.is_empty() {
            bail!("[invalidation] `clusters` names no pool: deletes would go nowhere");
        }
        for pool in self.clusters.iter().chain(&self.marker_pools) {
            if !pool_exists(pool) {
                bail!("[invalidation] names pool {pool:?}, which is not defined");
            }
        }
        for pool in &self.warming {
            if !self.clusters.contains(pool) {
                bail!("[invalidation] `warming` names {pool:?}, which is not in `clusters`");
            }
        }
        if self.holdoff_secs == 0 {
            bail!("[invalidation] `holdoff_secs` must be at least 1");
        }
        if self.handshake_timeout_ms == 0 || self.frame_timeout_ms == 0 {
            bail!(
                "[invalidation] `handshake_timeout_ms` and `frame_timeout_ms` must be at least 1"
            );
        }
        if self.max_unauthenticated == 0 {
            bail!("[invalidation] `max_unauthenticated` must be at least 1, or no squeal could connect");
        }
        Ok(())
    }

    pub fn secret(&self) -> anyhow::Result<marker::batch::Secret> {
        marker::batch::Secret::from_config(self.secret.as_deref(), self.secret_file.as_deref())
            .map_err(|e| anyhow::anyhow!("[invalidation]: {e}"))
    }
}

/// A data-path pool as the fan-out sees it: the same placement, so a delete reaches the
/// server the data path put the value on.
struct PoolPlacement {
    placement: crate::route::pool::Placement,
    servers: Vec<String>,
    /// A `random` pool keeps a copy of every item on every server: delete everywhere.
    replicated: bool,
}

impl Placement for PoolPlacement {
    fn servers_for(&self, key: &[u8], out: &mut Vec<String>) {
        if self.replicated {
            out.extend(self.servers.iter().cloned());
        } else {
            out.push(self.servers[self.placement.server_for(key)].clone());
        }
    }

    fn servers(&self) -> Vec<String> {
        self.servers.clone()
    }
}

/// Looks up the configured pools by name, for [`start`].
pub fn pool_placements(
    config: &crate::config::Config,
) -> impl Fn(&str) -> Option<Arc<dyn Placement>> + '_ {
    move |name| {
        let pool = config.pools.iter().find(|p| p.name == name)?;
        Some(Arc::new(PoolPlacement {
            placement: crate::route::pool::Placement::of_pool(pool),
            servers: pool.servers.iter().map(|s| s.addr.to_string()).collect(),
            replicated: pool.distribution == "random",
        }) as Arc<dyn Placement>)
    }
}

/// Runs the invalidation side on its own small runtime thread, apart from the data-path
/// workers: its fsyncs and Kafka client must never stall a client's request. Returns once
/// the side is started (ports bound, spool opened), or with the reason it could not start.
pub fn spawn(
    config: Arc<crate::config::Config>,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(inv) = config.invalidation.clone() else {
        return Ok(None);
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("invalidation".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match start(&inv, pool_placements(&config)).await {
                    Ok(_fanout) => {
                        let _ = ready_tx.send(Ok(()));
                        std::future::pending::<()>().await
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        })?;
    ready_rx
        .recv()
        .context("the invalidation thread ended before starting")??;
    Ok(Some(handle))
}

/// The fan-out over the configured clusters and marker pools; `placement` turns a pool
/// name into its key placement.
fn build_fanout(
    config: &InvalidationConfig,
    placement: &impl Fn(&str) -> Option<Arc<dyn Placement>>,
    spool: Arc<spool::Spool>,
) -> anyhow::Result<Fanout> {
    let targets = |names: &[String]| -> anyhow::Result<Vec<Target>> {
        names
            .iter()
            .map(|name| {
                Ok(Target {
                    name: name.clone(),
                    placement: placement(name).with_context(|| format!("no pool {name:?}"))?,
                    holdoff_secs: config.warming.contains(name).then_some(config.holdoff_secs),
                })
            })
            .collect()
    };
    Ok(Fanout::new(
        targets(&config.clusters)?,
        targets(&config.marker_pools)?,
        spool,
        Duration::from_millis(config.timeout_ms),
    ))
}

/// The operator's view of the spool (`squeal-router --spool-inspect` / `--spool-replay`).
pub fn spool_cli(config: &crate::config::Config, replay: bool) -> anyhow::Result<()> {
    let inv = config
        .invalidation
        .as_ref()
        .context("the config has no [invalidation] section, so no spool")?;
    let spool = Arc::new(
        spool::Spool::open(&inv.spool_dir, inv.spool_max_bytes)
            .with_context(|| format!("opening spool {}", inv.spool_dir.display()))?,
    );
    let pending = spool.pending();
    println!(
        "spool {}: {} server(s) with deletes waiting",
        inv.spool_dir.display(),
        pending.len()
    );
    for p in &pending {
        let flushes = match p.flushes {
            0 => String::new(),
            n => format!("  {n} flush_all"),
        };
        println!(
            "  {}  {} deletes{flushes}  {} bytes",
            p.server, p.keys, p.bytes
        );
    }
    if !replay || pending.is_empty() {
        return Ok(());
    }
    let fanout = build_fanout(inv, &pool_placements(config), spool)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = 0;
    for p in pending {
        match rt.block_on(fanout.replay_server(&p.server)) {
            Ok(n) => println!("  {}: replayed {n} deletes", p.server),
            Err(e) => {
                failed += 1;
                println!("  {}: stopped: {e:#}", p.server);
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} server(s) could not be replayed; their deletes stay spooled"
    );
    Ok(())
}

/// Starts the invalidation side: opens the spool, builds the fan-out over the named pools,
/// binds the native port and starts the Kafka consumer as configured, and the replayer.
/// `placement` turns a pool name into its key placement.
pub async fn start(
    config: &InvalidationConfig,
    placement: impl Fn(&str) -> Option<Arc<dyn Placement>>,
) -> anyhow::Result<Arc<Fanout>> {
    let secret = config.secret()?;
    let spool_dir = config.spool_dir.clone();
    let max = config.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || spool::Spool::open(&spool_dir, max))
        .await?
        .with_context(|| format!("opening spool {}", config.spool_dir.display()))?;
    let pending = spool.pending();
    if !pending.is_empty() {
        tracing::info!(
            ?pending,
            "spool holds deletes from an earlier run; replaying"
        );
    }
    let fanout = Arc::new(build_fanout(config, &placement, Arc::new(spool))?);
    tokio::spawn(
        fanout
            .clone()
            .replay_forever(Duration::from_millis(config.replay_interval_ms)),
    );
    if let Some(addr) = config.listen {
        let listener = listener::bind(addr)
            .await
            .with_context(|| format!("binding invalidation port {addr}"))?;
        let limits = listener::Limits {
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            frame_timeout: Duration::from_millis(config.frame_timeout_ms),
            max_unauthenticated: config.max_unauthenticated,
        };
        tokio::spawn(listener::serve(
            listener,
            fanout.clone(),
            secret.clone(),
            limits,
        ));
    }
    if let Some(kafka) = config.kafka.clone() {
        tokio::spawn(kafka::consume(kafka, fanout.clone(), secret));
    }
    Ok(fanout)
}
