//! The native router sink: batches go to `squeal-router` instances as authenticated frames
//! (see `marker::batch`), and a batch counts as delivered only when a router acknowledges
//! that every delete in it was applied or durably spooled.
//!
//! Each router endpoint has one connection, owned by a task that writes frames as they come
//! and matches acks in order (the router applies and acks a connection's frames in order), so
//! several batches are in flight at once. Batches are spread round-robin over the routers
//! that are not backing off; a failure or a timeout fails the send (the dispatcher retries
//! it, which lands on the next router) and puts that router in backoff.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use marker::batch::{Ack, AckStatus, Batch as WireBatch, EntryKind, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::{Sink, SinkError, SinkFuture};
use crate::batch::Batch;

/// Which keys are remote markers: they go to the regional pool, not to every cluster.
#[derive(Debug, Clone)]
pub struct MarkerPrefix(pub Option<String>);

impl MarkerPrefix {
    fn kind(&self, key: &[u8]) -> EntryKind {
        match &self.0 {
            Some(p) if key.starts_with(p.as_bytes()) => EntryKind::Marker,
            _ => EntryKind::Key,
        }
    }
}

/// Encodes squeal's batch as one wire frame.
pub fn encode(
    batch: &Batch,
    source: &str,
    markers: &MarkerPrefix,
    secret: &Secret,
) -> Result<Vec<u8>, SinkError> {
    let wire = WireBatch {
        source: source.to_string(),
        seq: batch.seq,
        commit_time_us: if batch.commit_time_us > 0 {
            batch.commit_time_us
        } else {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as u64
        },
        entries: batch
            .keys()
            .map(|k| (markers.kind(k), k.to_vec()))
            .collect(),
    };
    let mut out = Vec::with_capacity(WireBatch::overhead(source) + batch.bytes());
    wire.encode(secret, &mut out)
        .map_err(|e| SinkError(format!("encoding batch {}: {e}", batch.seq)))?;
    Ok(out)
}

struct Request {
    frame: Vec<u8>,
    seq: u64,
    done: oneshot::Sender<Result<(), SinkError>>,
    /// After this, a router that has not acked is considered hung: the connection is
    /// dropped and everything in flight on it fails (and is retried elsewhere).
    deadline: Instant,
}

/// One router endpoint: its connection task's queue and its backoff state.
struct Endpoint {
    addr: String,
    tx: mpsc::Sender<Request>,
    /// Until when this router is skipped after a failure.
    backoff_until: Mutex<Option<Instant>>,
    failures: AtomicUsize,
}

/// Delivers batches to a set of `squeal-router` instances.
pub struct RouterSink {
    name: String,
    source: String,
    secret: Secret,
    markers: MarkerPrefix,
    timeout: Duration,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl RouterSink {
    pub fn new(
        endpoints: Vec<String>,
        source: String,
        secret: Secret,
        markers: MarkerPrefix,
        timeout: Duration,
        window: usize,
    ) -> RouterSink {
        let endpoints = endpoints
            .into_iter()
            .map(|addr| {
                let (tx, rx) = mpsc::channel(window.max(1));
                tokio::spawn(connection_task(addr.clone(), secret.clone(), rx));
                Arc::new(Endpoint {
                    addr,
                    tx,
                    backoff_until: Mutex::new(None),
                    failures: AtomicUsize::new(0),
                })
            })
            .collect();
        RouterSink {
            name: "router".into(),
            source,
            secret,
            markers,
            timeout,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// The next router not in backoff, round-robin; if all are backing off, the one whose
    /// backoff ends first (never none: a batch must go somewhere eventually).
    fn pick(&self) -> Arc<Endpoint> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut soonest: Option<(Instant, &Arc<Endpoint>)> = None;
        for i in 0..n {
            let ep = &self.endpoints[(start + i) % n];
            match *ep.backoff_until.lock().unwrap() {
                Some(until) if until > now => {
                    if soonest.is_none_or(|(t, _)| until < t) {
                        soonest = Some((until, ep));
                    }
                }
                _ => return ep.clone(),
            }
        }
        soonest.expect("at least one endpoint").1.clone()
    }
}

impl Endpoint {
    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let delay = Duration::from_millis(100 * (1 << failures.min(6)) as u64);
        *self.backoff_until.lock().unwrap() = Some(Instant::now() + delay);
        metrics::counter!("squeal_router_sink_failures_total", "router" => self.addr.clone())
            .increment(1);
    }

    fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            *self.backoff_until.lock().unwrap() = None;
        }
    }
}

impl Sink for RouterSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, batch: Arc<Batch>) -> SinkFuture {
        let frame = encode(&batch, &self.source, &self.markers, &self.secret);
        let endpoint = self.pick();
        let timeout = self.timeout;
        Box::pin(async move {
            let frame = frame?;
            let (done, wait) = oneshot::channel();
            let request = Request {
                frame,
                seq: batch.seq,
                done,
                deadline: Instant::now() + timeout * 2,
            };
            let outcome = async {
                endpoint
                    .tx
                    .send(request)
                    .await
                    .map_err(|_| SinkError("router connection task ended".into()))?;
                wait.await
                    .map_err(|_| SinkError("router connection reset".into()))?
            };
            let result = match tokio::time::timeout(timeout, outcome).await {
                Ok(r) => r,
                Err(_) => Err(SinkError(format!(
                    "router {} did not ack batch {} within {timeout:?}",
                    endpoint.addr, batch.seq
                ))),
            };
            match &result {
                Ok(()) => endpoint.succeeded(),
                Err(_) => endpoint.failed(),
            }
            result.map_err(|e| SinkError(format!("{}: {}", endpoint.addr, e.0)))
        })
    }

    fn flush_all(&self) -> SinkFuture {
        Box::pin(async {
            Err(SinkError(
                "the router sink cannot flush pools: flush them through the router's data port"
                    .into(),
            ))
        })
    }
}

/// Owns one router connection: writes frames in arrival order and resolves each request
/// when its ack (in the same order) arrives. Any error or mismatch fails every request in
/// flight and drops the connection; the next request reconnects.
async fn connection_task(addr: String, secret: Secret, mut rx: mpsc::Receiver<Request>) {
    let mut pending: VecDeque<Request> = VecDeque::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let fail_all = |pending: &mut VecDeque<Request>, why: &str| {
            for r in pending.drain(..) {
                let _ = r.done.send(Err(SinkError(why.to_string())));
            }
        };
        if pending.is_empty() {
            // Idle: wait for work (and notice a peer close on the idle connection).
            let Some(request) = rx.recv().await else {
                return;
            };
            pending.push_back(request);
        }
        if conn.is_none() {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                    buf.clear();
                }
                Err(e) => {
                    fail_all(&mut pending, &format!("connect: {e}"));
                    continue;
                }
            }
        }
        // Write every queued frame not yet written.
        let stream = conn.as_mut().expect("connected");
        let unsent: Vec<usize> = (0..pending.len())
            .filter(|&i| !pending[i].frame.is_empty())
            .collect();
        let mut write_failed = None;
        for i in unsent {
            let frame = std::mem::take(&mut pending[i].frame);
            if let Err(e) = stream.write_all(&frame).await {
                write_failed = Some(e);
                break;
            }
        }
        if let Some(e) = write_failed {
            conn = None;
            fail_all(&mut pending, &format!("write: {e}"));
            continue;
        }
        let hung_at = pending.front().map(|r| r.deadline).expect("non-empty");
        tokio::select! {
            _ = tokio::time::sleep_until(hung_at.into()) => {
                conn = None;
                fail_all(&mut pending, "router stopped acking");
            }
            request = rx.recv() => match request {
                Some(r) => pending.push_back(r),
                None => {
                    fail_all(&mut pending, "sink closed");
                    return;
                }
            },
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => {
                    conn = None;
                    fail_all(&mut pending, "router closed the connection");
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match Ack::decode(&buf, &secret) {
                            Ok(Some((ack, used))) => {
                                buf.drain(..used);
                                let Some(front) = pending.pop_front() else {
                                    conn = None;
                                    break;
                                };
                                let result = if ack.seq != front.seq {
                                    Err(SinkError(format!(
                                        "ack for batch {} while {} was expected", ack.seq, front.seq
                                    )))
                                } else if ack.status == AckStatus::Rejected {
                                    Err(SinkError(format!("router rejected batch {}", ack.seq)))
                                } else {
                                    Ok(())
                                };
                                let mismatch = ack.seq != front.seq;
                                let _ = front.done.send(result);
                                if mismatch {
                                    conn = None;
                                    fail_all(&mut pending, "acks out of step");
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                conn = None;
                                fail_all(&mut pending, &format!("bad ack: {e}"));
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}
