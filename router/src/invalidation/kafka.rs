//! The Kafka transport: the router consumes squeal's batches from a topic as a member of a
//! consumer group and commits a message's offset only after its batch was applied or
//! spooled. A crash before the commit makes the group re-deliver the batch (at least once).
//!
//! A message that fails authentication can never become valid, so it is counted, logged and
//! skipped (committed): one poisoned message must not stall its partition for ever.
//!
//! There is no handshake here: every message carries its own MAC, under the Kafka context
//! (`marker::batch::KAFKA_CONTEXT`), so a frame captured from a TCP session is not a valid
//! message. A flush_all from squeal arrives once per partition (so it is ordered with the
//! deletes of every partition); a router applies it once and skips the copies from its
//! other partitions (recognised by source, sequence number and time: two flushes with no
//! batch between them share a sequence number, and the second must still be applied).

use std::sync::Arc;
use std::time::Duration;

use marker::batch::{Batch, BatchKind, Secret, KAFKA_CONTEXT};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use tracing::{error, info, warn};

use super::fanout::Fanout;
use crate::config::invalidation::KafkaConfig;

/// A consumer of the configured topic in the configured group, committing by hand.
fn consumer(config: &KafkaConfig) -> anyhow::Result<StreamConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &config.librdkafka {
        cfg.set(k, v);
    }
    let consumer: StreamConsumer = cfg.create()?;
    consumer.subscribe(&[&config.topic])?;
    Ok(consumer)
}

/// Consumes, applies and commits until the process ends.
pub async fn consume(config: KafkaConfig, fanout: Arc<Fanout>, secret: Secret) {
    let consumer = match consumer(&config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            error!(error = %e, "cannot create the Kafka consumer");
            return;
        }
    };
    info!(topic = %config.topic, group = %config.group, "consuming invalidations from Kafka");
    tokio::spawn(report_lag(consumer.clone()));
    let rejects = super::listener::RejectLog::default();
    // The last flushes applied, to skip their copies from other partitions.
    let mut flushed: std::collections::VecDeque<(String, u64, u64)> = Default::default();
    loop {
        let message = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Kafka receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let payload = message.payload().unwrap_or_default();
        match Batch::decode(payload, &secret, KAFKA_CONTEXT) {
            Ok(Some((batch, used)))
                if used == payload.len() && batch.kind == BatchKind::FlushAll =>
            {
                let id = (batch.source.clone(), batch.seq, batch.commit_time_us);
                if flushed.contains(&id) {
                    tracing::debug!(source = %batch.source, seq = batch.seq, "flush already applied");
                } else {
                    info!(source = %batch.source, seq = batch.seq, partition = message.partition(),
                        "flush_all requested over Kafka");
                    metrics::counter!("squeal_router_invalidation_flushes_total", "transport" => "kafka")
                        .increment(1);
                    let mut delay = Duration::from_millis(100);
                    while let Err(e) = fanout.flush_all().await {
                        warn!(error = %e, ?delay, "cannot apply Kafka flush yet; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    if flushed.len() == 64 {
                        flushed.pop_front();
                    }
                    flushed.push_back(id);
                }
            }
            Ok(Some((batch, used))) if used == payload.len() => {
                metrics::counter!("squeal_router_invalidation_batches_total", "transport" => "kafka")
                    .increment(1);
                // Until the batch is applied or spooled, keep trying: committing past it
                // would lose it.
                let mut delay = Duration::from_millis(100);
                while let Err(e) = fanout.apply(&batch).await {
                    warn!(error = %e, ?delay, "cannot apply Kafka batch yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
            other => {
                let reason = match other {
                    Err(e) => e.to_string(),
                    _ => "not exactly one frame".to_string(),
                };
                let at = format!(
                    "partition {} offset {}",
                    message.partition(),
                    message.offset()
                );
                rejects.reject(
                    "kafka",
                    &at,
                    &format_args!("skipping invalid Kafka message: {reason}"),
                );
            }
        }
        if let Err(e) = consumer.commit_message(&message, CommitMode::Async) {
            warn!(error = %e, "Kafka offset commit failed; the batch may be re-delivered");
        }
    }
}

/// Publishes consumer lag (messages behind each assigned partition's high watermark) every
/// few seconds. Watermark queries are network round trips, so they run on a blocking
/// thread, never on the consume path.
async fn report_lag(consumer: Arc<StreamConsumer>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let c = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            let positions = c.position()?;
            let mut lags = Vec::new();
            for tp in positions.elements() {
                let (_, high) =
                    c.fetch_watermarks(tp.topic(), tp.partition(), Duration::from_secs(2))?;
                if let rdkafka::Offset::Offset(pos) = tp.offset() {
                    lags.push((tp.partition(), (high - pos).max(0)));
                }
            }
            Ok(lags)
        })
        .await;
        if let Ok(Ok(lags)) = lags {
            for (partition, lag) in lags {
                metrics::gauge!("squeal_router_kafka_consumer_lag", "partition" => partition.to_string())
                    .set(lag as f64);
            }
        }
    }
}
