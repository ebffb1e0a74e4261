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
    /// Shared secret for the batch MAC. Prefer `secret_file` in production.
    pub secret: Option<String>,
    /// File holding the shared secret (trailing whitespace ignored).
    pub secret_file: Option<PathBuf>,
    /// Pools that receive every cache-key delete: each front-end cluster of the region.
    pub clusters: Vec<String>,
    /// Pools that receive marker-key deletes: the regional pool.
    #[serde(default)]
    pub marker_pools: Vec<String>,
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
    pub kafka: Option<kafka::KafkaConfig>,
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_replay_interval_ms() -> u64 {
    200
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
        Ok(())
    }

    pub fn secret(&self) -> anyhow::Result<marker::batch::Secret> {
        let bytes = match (&self.secret, &self.secret_file) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(path)) => {
                let text = std::fs::read(path)
                    .with_context(|| format!("reading secret_file {}", path.display()))?;
                text.trim_ascii_end().to_vec()
            }
            (None, None) => bail!("no invalidation secret configured"),
        };
        if bytes.is_empty() {
            bail!("the invalidation secret is empty");
        }
        Ok(marker::batch::Secret::new(&bytes))
    }
}

/// Starts the invalidation side: opens the spool, builds the fan-out over the named pools,
/// binds the native port and starts the Kafka consumer as configured, and the replayer.
/// `placement` turns a pool name into its key placement.
pub async fn start(
    config: &InvalidationConfig,
    placement: impl Fn(&str) -> Option<Arc<dyn Placement>>,
) -> anyhow::Result<Arc<Fanout>> {
    let secret = config.secret()?;
    let targets = |names: &[String]| -> anyhow::Result<Vec<Target>> {
        names
            .iter()
            .map(|name| {
                Ok(Target {
                    name: name.clone(),
                    placement: placement(name).with_context(|| format!("no pool {name:?}"))?,
                })
            })
            .collect()
    };
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
    let fanout = Arc::new(Fanout::new(
        targets(&config.clusters)?,
        targets(&config.marker_pools)?,
        Arc::new(spool),
        Duration::from_millis(config.timeout_ms),
    ));
    tokio::spawn(
        fanout
            .clone()
            .replay_forever(Duration::from_millis(config.replay_interval_ms)),
    );
    if let Some(addr) = config.listen {
        let listener = listener::bind(addr)
            .await
            .with_context(|| format!("binding invalidation port {addr}"))?;
        tokio::spawn(listener::serve(listener, fanout.clone(), secret.clone()));
    }
    if let Some(kafka) = config.kafka.clone() {
        tokio::spawn(kafka::consume(kafka, fanout.clone(), secret));
    }
    Ok(fanout)
}
