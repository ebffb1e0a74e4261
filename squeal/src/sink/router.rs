//! The native router sink: batches go to `squeal-router` instances as authenticated frames
//! (see `marker::batch`), and a batch counts as delivered only when a router acknowledges
//! that every delete in it was applied or durably spooled.
//!
//! Each router endpoint has one connection, owned by a task that first runs the protocol's
//! challenge-response handshake (proving squeal holds the secret, and the router too), then
//! writes frames as they come, MAC'd under that connection's session, and matches acks in
//! order (the router applies and acks a connection's frames in order), so several batches
//! are in flight at once. Batches are spread round-robin over the routers
//! that are not backing off; a failure or a timeout fails the send (the dispatcher retries
//! it, which lands on the next router) and puts that router in backoff.
//!
//! [`RouterSink::flush_all`](Sink::flush_all) sends a flush frame to one router (any router
//! flushes every cluster and marker pool of the region), acked once every server was
//! flushed or the flush spooled for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marker::batch::{self, Ack, AckStatus, Batch as WireBatch, BatchKind, Secret};
use marker::remote::MarkerPrefix;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::{Sink, SinkError, SinkFuture};
use crate::batch::Batch;
use crate::config::SinkTls;
use crate::model::now_micros;

/// A router connection: TCP, or TLS over it (`[sink.tls]`).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}
type Conn = Box<dyn Stream>;

/// squeal's batch as the wire format's batch.
pub fn wire(batch: &Batch, source: &str, markers: &MarkerPrefix) -> WireBatch {
    WireBatch {
        source: source.to_string(),
        seq: batch.seq,
        commit_time_us: if batch.commit_time_us > 0 {
            batch.commit_time_us
        } else {
            now_micros()
        },
        kind: BatchKind::Deletes,
        entries: batch
            .keys()
            .map(|k| (markers.kind(k), k.to_vec()))
            .collect(),
    }
}

/// A flush request following batch `seq`. Its time is the moment of the request, which also
/// tells two flushes with no batch between them apart.
pub fn wire_flush(source: &str, seq: u64) -> WireBatch {
    WireBatch::flush_all(source, seq, now_micros())
}

/// Encodes a wire batch as one frame, MAC'd under `context` (a TCP session's, or
/// `marker::batch::KAFKA_CONTEXT`).
pub fn encode(wire: &WireBatch, secret: &Secret, context: &[u8]) -> Result<Vec<u8>, SinkError> {
    let bytes: usize = wire.entries.iter().map(|(_, k)| k.len() + 2).sum();
    let mut out = Vec::with_capacity(WireBatch::overhead(&wire.source) + bytes);
    wire.encode(secret, context, &mut out)
        .map_err(|e| SinkError(format!("encoding batch {}: {e}", wire.seq)))?;
    Ok(out)
}

struct Request {
    /// Encoded by the connection task, under its session's context.
    wire: Arc<WireBatch>,
    /// Written on the current connection.
    sent: bool,
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
    markers: MarkerPrefix,
    timeout: Duration,
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    /// The highest batch sequence number handed to `send`: a flush carries it, placing the
    /// flush after that batch in the source's sequence.
    last_seq: AtomicU64,
}

impl RouterSink {
    pub fn new(
        endpoints: Vec<String>,
        source: String,
        secret: Secret,
        markers: MarkerPrefix,
        timeout: Duration,
        window: usize,
        tls: Option<SinkTls>,
    ) -> RouterSink {
        let endpoints = endpoints
            .into_iter()
            .map(|addr| {
                let (tx, rx) = mpsc::channel(window.max(1));
                tokio::spawn(connection_task(
                    addr.clone(),
                    secret.clone(),
                    timeout,
                    tls.clone(),
                    rx,
                ));
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
            markers,
            timeout,
            endpoints,
            next: AtomicUsize::new(0),
            last_seq: AtomicU64::new(0),
        }
    }

    /// Sends `wire` to the next healthy router and resolves on its ack.
    fn submit(&self, wire: Result<WireBatch, SinkError>, what: &'static str) -> SinkFuture {
        let endpoint = self.pick();
        let timeout = self.timeout;
        Box::pin(async move {
            let wire = wire?;
            let seq = wire.seq;
            let (done, wait) = oneshot::channel();
            let request = Request {
                wire: Arc::new(wire),
                sent: false,
                seq,
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
                    "router {} did not ack {what} {seq} within {timeout:?}",
                    endpoint.addr
                ))),
            };
            match &result {
                Ok(()) => endpoint.succeeded(),
                Err(_) => endpoint.failed(),
            }
            result.map_err(|e| SinkError(format!("{}: {}", endpoint.addr, e.0)))
        })
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
        self.last_seq.fetch_max(batch.seq, Ordering::Relaxed);
        self.submit(Ok(wire(&batch, &self.source, &self.markers)), "batch")
    }

    /// Asks one router to flush every cluster and marker pool of the region; resolves once
    /// it acked (every server flushed, or the flush spooled for a server that is down).
    fn flush_all(&self) -> SinkFuture {
        let seq = self.last_seq.load(Ordering::Relaxed);
        self.submit(Ok(wire_flush(&self.source, seq)), "flush after batch")
    }
}

/// Reads one handshake message of the router's (`expected`, or a refusal instead).
async fn read_message(stream: &mut Conn, expected: &[u8; 4]) -> Result<Vec<u8>, String> {
    let mut msg = vec![0u8; 4];
    stream
        .read_exact(&mut msg)
        .await
        .map_err(|e| format!("reading the router's handshake: {e}"))?;
    let len = batch::router_message_len(msg[..4].try_into().unwrap(), expected)
        .map_err(|e| e.to_string())?;
    msg.resize(len, 0);
    stream
        .read_exact(&mut msg[4..])
        .await
        .map_err(|e| format!("reading the router's handshake: {e}"))?;
    Ok(msg)
}

/// Connects to `addr` and runs squeal's half of the handshake; the stream and its session
/// context, or an error that says what to fix.
async fn connect(
    addr: &str,
    secret: &Secret,
    timeout: Duration,
    tls: Option<&SinkTls>,
) -> Result<(Conn, [u8; 2 * batch::NONCE_LEN]), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Conn = match tls {
        None => Box::new(tcp),
        Some(t) => {
            // Read at every connect: a renewed certificate is picked up without a restart.
            let config = t.client_config()?;
            let name = t.server_name(addr)?;
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    return Err(format!(
                        "TLS handshake: {e} (does the router's [invalidation] have tls = true, \
                         and is its certificate issued by [sink.tls] ca for this name?)"
                    ))
                }
                Err(_) => return Err(format!("TLS handshake: not finished within {timeout:?}")),
            }
        }
    };
    let exchange = async {
        let hello = read_message(&mut stream, batch::HELLO_MAGIC).await?;
        let session = batch::Session {
            router_nonce: batch::decode_hello(&hello).map_err(|e| e.to_string())?,
            client_nonce: batch::random_nonce(),
        };
        stream
            .write_all(&batch::encode_auth(secret, &session))
            .await
            .map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let welcome = read_message(&mut stream, batch::WELCOME_MAGIC).await?;
        batch::verify_welcome(&welcome, secret, &session).map_err(|e| match e {
            marker::batch::WireError::BadMac => {
                "the router's welcome does not verify: its secret differs from squeal's".to_string()
            }
            e => e.to_string(),
        })?;
        Ok::<_, String>(session.context())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(context)) => Ok((stream, context)),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Err(_) if tls.is_none() => Err(format!(
            "handshake: no hello within {timeout:?}; is it an older squeal-router that \
             speaks wire protocol version 1 (upgrade it), or does its port require TLS \
             ([invalidation] tls = true: give this sink [sink.tls])?"
        )),
        Err(_) => Err(format!(
            "handshake: no hello within {timeout:?}; is it an older squeal-router that \
             speaks wire protocol version 1? upgrade it"
        )),
    }
}

/// Owns one router connection: writes frames in arrival order and resolves each request
/// when its ack (in the same order) arrives. Any error or mismatch fails every request in
/// flight and drops the connection; the next request reconnects.
async fn connection_task(
    addr: String,
    secret: Secret,
    timeout: Duration,
    tls: Option<SinkTls>,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut pending: VecDeque<Request> = VecDeque::new();
    let mut conn: Option<Conn> = None;
    let mut context = [0u8; 2 * batch::NONCE_LEN];
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
            match connect(&addr, &secret, timeout, tls.as_ref()).await {
                Ok((s, ctx)) => {
                    conn = Some(s);
                    context = ctx;
                    buf.clear();
                    for r in pending.iter_mut() {
                        r.sent = false;
                    }
                }
                Err(e) => {
                    tracing::warn!(router = %addr, error = %e, "cannot open a router connection");
                    fail_all(&mut pending, &e);
                    continue;
                }
            }
        }
        // Write every queued frame not yet written, MAC'd under this connection's session.
        let stream = conn.as_mut().expect("connected");
        let mut write_failed = None;
        for r in pending.iter_mut().filter(|r| !r.sent) {
            r.sent = true;
            let frame = match encode(&r.wire, &secret, &context) {
                Ok(f) => f,
                Err(e) => {
                    write_failed = Some(e.0);
                    break;
                }
            };
            if let Err(e) = stream.write_all(&frame).await {
                write_failed = Some(format!("write: {e}"));
                break;
            }
        }
        // TLS holds what the socket did not take yet until flushed (plain TCP: a no-op).
        if write_failed.is_none() {
            if let Err(e) = stream.flush().await {
                write_failed = Some(format!("write: {e}"));
            }
        }
        if let Some(e) = write_failed {
            conn = None;
            fail_all(&mut pending, &e);
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
                        match Ack::decode(&buf, &secret, &context) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 router accepts and waits for a frame without a word: squeal must fail
    /// within its timeout, saying what is likely wrong, rather than wait for ever.
    #[tokio::test]
    async fn a_router_that_sends_no_hello_gets_a_clear_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let started = Instant::now();
        let err = connect(&addr, &Secret::new(b"k"), Duration::from_millis(300), None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(err.contains("wire protocol version 1"), "{err}");
        held.abort();
    }

    #[test]
    fn a_flush_follows_the_last_batch_and_carries_no_keys() {
        let flush = wire_flush("db1", 41);
        assert_eq!(
            (flush.seq, flush.kind, flush.entries.len()),
            (41, BatchKind::FlushAll, 0)
        );
        let a = encode(&flush, &Secret::new(b"k"), batch::KAFKA_CONTEXT).unwrap();
        let (decoded, _) = WireBatch::decode(&a, &Secret::new(b"k"), batch::KAFKA_CONTEXT)
            .unwrap()
            .unwrap();
        assert_eq!(decoded, flush);
    }
}
