//! Sinks deliver batches and say when every key of a batch is acknowledged.
//!
//! The contract a sink implements ([`Sink`]): `send` takes a batch and returns a future that
//! resolves once the batch is delivered (for memcache: every endpoint answered DELETED or
//! NOT_FOUND for every key). The dispatcher (`delivery`) keeps several batches outstanding,
//! acknowledges them strictly in order and retries a failed send. A sink that talks to
//! something able to acknowledge durably implements the same trait: `send` frames the batch,
//! and resolves on the peer's ack for that sequence number. Four sinks: [`memcache`]
//! (pipelined `delete`s to every endpoint), [`router`] (the native protocol to
//! `squeal-router`, authenticated batches acked once applied or spooled), [`kafka`]
//! (idempotent producer, acks=all, consumed by routers) and [`debug`] (prints or counts).

pub mod debug;
pub mod kafka;
pub mod memcache;
pub mod router;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::Batch;
use crate::config::SinkConfig;

/// A sink's failure to deliver a batch (the dispatcher retries).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

pub type SinkFuture = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// Something that delivers batches of invalidation keys.
pub trait Sink: Send + Sync {
    /// Short name for logs and metrics labels.
    fn name(&self) -> &str;
    /// Delivers `batch`; resolves when all of it is acknowledged. Several sends may be
    /// outstanding at once.
    fn send(&self, batch: Arc<Batch>) -> SinkFuture;
    /// Empties every target (used when the binlog at the checkpoint is gone and the
    /// operator chose to flush and resume).
    fn flush_all(&self) -> SinkFuture;
}

/// Builds the configured sinks.
pub fn build(configs: &[SinkConfig]) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    configs
        .iter()
        .map(|c| -> anyhow::Result<Arc<dyn Sink>> {
            Ok(match c {
                SinkConfig::Memcache {
                    endpoints,
                    timeout_ms,
                    connections,
                } => Arc::new(memcache::MemcacheSink::new(
                    endpoints.clone(),
                    Duration::from_millis(*timeout_ms),
                    *connections,
                )),
                SinkConfig::Debug { quiet } => Arc::new(debug::DebugSink::new(*quiet)),
                SinkConfig::Router {
                    endpoints,
                    auth,
                    timeout_ms,
                    window,
                    tls,
                } => {
                    anyhow::ensure!(!endpoints.is_empty(), "a router sink needs endpoints");
                    // Checked now, so a broken file stops the start with its reason; the
                    // connections read the files again at each connect.
                    if let Some(t) = tls {
                        t.check(endpoints).map_err(anyhow::Error::msg)?;
                    }
                    Arc::new(router::RouterSink::new(
                        endpoints.clone(),
                        auth.source.clone(),
                        auth.secret()?,
                        auth.markers(),
                        Duration::from_millis(*timeout_ms),
                        *window,
                        tls.clone(),
                    ))
                }
                SinkConfig::Kafka {
                    brokers,
                    topic,
                    auth,
                    timeout_ms,
                    librdkafka,
                } => Arc::new(kafka::KafkaSink::new(
                    brokers,
                    topic.clone(),
                    librdkafka,
                    auth.source.clone(),
                    auth.secret()?,
                    auth.markers(),
                    Duration::from_millis(*timeout_ms),
                )?),
            })
        })
        .collect()
}
