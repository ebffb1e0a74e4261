//! `[invalidation]`: the receiving end of squeal's invalidations, as configured (plain data
//! and its checks; `crate::invalidation` runs it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::Deserialize;

/// `[invalidation]` in the router's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    /// Native-protocol port for squeal's batches (batches are authenticated; with `tls`
    /// they are encrypted too).
    pub listen: Option<SocketAddr>,
    /// The native port requires TLS, with the certificate of the router's `[tls]` table.
    #[serde(default)]
    pub tls: bool,
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
    pub kafka: Option<KafkaConfig>,
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
        if self.tls && self.listen.is_none() {
            bail!("[invalidation] tls = true applies to the native port: `listen` is missing");
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

/// `[invalidation.kafka]`: where the router reads batches from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// One consumer group per front-end set: every group gets every batch.
    pub group: String,
    /// Passed through to librdkafka (security settings, timeouts...).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}
