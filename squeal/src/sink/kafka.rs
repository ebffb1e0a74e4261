//! The Kafka sink: batches are produced to a topic with an idempotent producer and
//! acks=all; a batch counts as delivered when the broker acknowledged every message of it.
//!
//! Keys are partitioned by a hash of the key, so every invalidation of one key lands in one
//! partition and stays in commit order there; a batch becomes one message per partition it
//! touches, each an authenticated `marker::batch` frame the routers' consumer groups apply.
//! There is no handshake on this path: each message carries its own MAC, under the Kafka
//! context (`marker::batch::KAFKA_CONTEXT`).
//!
//! A flush_all becomes one flush frame on *every* partition, so that each consumer applies
//! it in order with the deletes of each partition it reads; a router skips the copies of a
//! flush it already applied. It counts as delivered when the broker acked every copy, like
//! a batch: the routers apply it (or spool it per server) before committing its offset.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use marker::batch::{Secret, KAFKA_CONTEXT};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

use marker::remote::MarkerPrefix;

use super::router::{encode, wire, wire_flush};
use super::{Sink, SinkError, SinkFuture};
use crate::batch::Batch;

/// Delivers batches to a Kafka topic.
pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    partitions: u32,
    source: String,
    secret: Secret,
    markers: MarkerPrefix,
    timeout: Duration,
    /// The highest batch sequence number sent, carried by a flush (see the router sink).
    last_seq: AtomicU64,
}

impl KafkaSink {
    /// Creates the producer and learns the topic's partition count (a blocking metadata
    /// request, done once at start).
    pub fn new(
        brokers: &str,
        topic: String,
        librdkafka: &BTreeMap<String, String>,
        source: String,
        secret: Secret,
        markers: MarkerPrefix,
        timeout: Duration,
    ) -> anyhow::Result<KafkaSink> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", timeout.as_millis().to_string());
        for (k, v) in librdkafka {
            cfg.set(k, v);
        }
        let producer: FutureProducer = cfg.create()?;
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len() as u32)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                anyhow::anyhow!("Kafka topic {topic:?} does not exist or has no partitions")
            })?;
        Ok(KafkaSink {
            producer,
            topic,
            partitions,
            source,
            secret,
            markers,
            timeout,
            last_seq: AtomicU64::new(0),
        })
    }
}

/// FNV-1a: a stable hash (the same in every squeal version and on every host), so a key
/// always maps to the same partition.
fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in key {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        "kafka"
    }

    fn send(&self, batch: Arc<Batch>) -> SinkFuture {
        self.last_seq.fetch_max(batch.seq, Ordering::Relaxed);
        // Split the batch by partition, keeping each key's order.
        let mut parts: BTreeMap<u32, Batch> = BTreeMap::new();
        for key in batch.keys() {
            parts
                .entry(partition_of(key, self.partitions))
                .or_insert_with(|| batch.empty_like())
                .push_key(key);
        }
        let frames: Result<Vec<(u32, Vec<u8>)>, SinkError> = parts
            .into_iter()
            .map(|(p, b)| {
                let frame = encode(
                    &wire(&b, &self.source, &self.markers),
                    &self.secret,
                    KAFKA_CONTEXT,
                )?;
                Ok((p, frame))
            })
            .collect();
        self.produce(frames, batch.seq)
    }

    fn flush_all(&self) -> SinkFuture {
        let seq = self.last_seq.load(Ordering::Relaxed);
        let flush = encode(&wire_flush(&self.source, seq), &self.secret, KAFKA_CONTEXT);
        let frames = flush.map(|f| (0..self.partitions).map(|p| (p, f.clone())).collect());
        self.produce(frames, seq)
    }
}

impl KafkaSink {
    /// Produces each frame to its partition; resolves when the broker acked all of them.
    fn produce(&self, frames: Result<Vec<(u32, Vec<u8>)>, SinkError>, seq: u64) -> SinkFuture {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let timeout = self.timeout;
        let seq = seq.to_be_bytes();
        Box::pin(async move {
            let frames = frames?;
            let sends = frames.iter().map(|(partition, frame)| {
                producer.send(
                    FutureRecord::to(&topic)
                        .partition(*partition as i32)
                        .key(&seq[..])
                        .payload(frame),
                    timeout,
                )
            });
            for result in futures_util::future::join_all(sends).await {
                result.map_err(|(e, _)| SinkError(format!("Kafka produce: {e}")))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_one_partition() {
        assert_eq!(partition_of(b"user:1", 4), partition_of(b"user:1", 4));
        let spread: std::collections::HashSet<u32> = (0..100)
            .map(|i| partition_of(format!("user:{i}").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4, "100 keys use every partition");
    }
}
