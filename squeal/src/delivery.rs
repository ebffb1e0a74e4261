//! Delivery: the dispatcher between the batcher and the sinks. It keeps up to
//! `max_in_flight` batches outstanding, acknowledges them strictly in order, and retries a
//! failed send with backoff forever (deletes are idempotent, so a retry is harmless;
//! skipping one is not). What is acknowledged ([`Acked`]) is what the checkpoint may record.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::batch::{Batch, SinkLoad};
use crate::model::Position;
use crate::sink::Sink;

/// What has been acknowledged: the last position (and GTID) whose batches all arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acked {
    pub seq: u64,
    pub pos: Option<Position>,
    pub gtid: Option<String>,
    pub keys: u64,
}

async fn deliver(sinks: Arc<Vec<Arc<dyn Sink>>>, batch: Arc<Batch>) -> Arc<Batch> {
    for sink in sinks.iter() {
        let mut backoff = Duration::from_millis(50);
        loop {
            let started = std::time::Instant::now();
            match sink.send(batch.clone()).await {
                Ok(()) => {
                    metrics::histogram!("squeal_sink_latency_seconds", "sink" => sink.name().to_string())
                        .record(started.elapsed().as_secs_f64());
                    break;
                }
                Err(e) => {
                    metrics::counter!("squeal_sink_errors_total", "sink" => sink.name().to_string())
                        .increment(1);
                    tracing::warn!(sink = sink.name(), seq = batch.seq, error = %e, "delivery failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    batch
}

/// `flush_all` on every sink, each retried with backoff until it succeeds (a flush that is
/// skipped would leave stale values behind; one that is repeated only costs cache misses).
async fn flush_every_sink(sinks: &[Arc<dyn Sink>]) {
    for sink in sinks {
        let mut backoff = Duration::from_millis(50);
        loop {
            match sink.flush_all().await {
                Ok(()) => {
                    metrics::counter!("squeal_flushes_total", "sink" => sink.name().to_string())
                        .increment(1);
                    tracing::warn!(sink = sink.name(), "flushed every target");
                    break;
                }
                Err(e) => {
                    metrics::counter!("squeal_sink_errors_total", "sink" => sink.name().to_string())
                        .increment(1);
                    tracing::warn!(sink = sink.name(), error = %e, "flush_all failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Sends batches to every sink, up to `max_in_flight` at once, and publishes what is
/// acknowledged, in order. Returns when the batch channel closes and all is delivered.
pub async fn dispatch(
    mut rx: mpsc::Receiver<Batch>,
    sinks: Vec<Arc<dyn Sink>>,
    max_in_flight: usize,
    acked: watch::Sender<Acked>,
    load: Arc<SinkLoad>,
) {
    let sinks = Arc::new(sinks);
    let mut inflight = FuturesOrdered::new();
    let mut open = true;
    let mut state = Acked::default();
    let ack = |b: Arc<Batch>, state: &mut Acked| {
        load.finished();
        metrics::counter!("squeal_keys_delivered_total").increment(b.len() as u64);
        metrics::histogram!("squeal_batch_ack_seconds").record(b.born.elapsed().as_secs_f64());
        state.seq = b.seq;
        state.keys += b.len() as u64;
        if let Some(p) = &b.pos {
            state.pos = Some(p.clone());
            state.gtid = b.gtid.clone();
        }
        acked.send_replace(state.clone());
    };
    loop {
        tokio::select! {
            b = rx.recv(), if open && inflight.len() < max_in_flight => match b {
                Some(b) if b.flush => {
                    // Everything before the flush is acknowledged first, then its own keys,
                    // then the flush itself; nothing after it is sent until it is done, and
                    // its position is acknowledged (checkpointable) only then.
                    while let Some(done) = inflight.next().await {
                        ack(done, &mut state);
                    }
                    load.started();
                    let b = deliver(sinks.clone(), Arc::new(b)).await;
                    flush_every_sink(&sinks).await;
                    ack(b, &mut state);
                }
                Some(b) => {
                    load.started();
                    inflight.push_back(deliver(sinks.clone(), Arc::new(b)))
                }
                None => open = false,
            },
            Some(b) = inflight.next(), if !inflight.is_empty() => ack(b, &mut state),
            else => break,
        }
        if !open && inflight.is_empty() {
            break;
        }
    }
}
