//! The native invalidation port: squeal connects, proves it holds the process secret in a
//! challenge-response handshake, then sends authenticated batch (and flush) frames and gets
//! an ack for each once it was applied or spooled.
//!
//! What an unauthenticated peer can make the router hold is bounded: before the handshake
//! completes, the router reads at most `marker::batch::AUTH_LEN` bytes into a fixed buffer
//! (no read buffer is allocated until then), gives up after `handshake_timeout_ms`, and
//! keeps at most `max_unauthenticated` such connections (more are refused at accept). After
//! it, each frame's 8-byte header is checked (magic, length bound) before its body is read,
//! and a frame that has started must complete within `frame_timeout_ms`.
//!
//! Frames on one connection are applied and acknowledged in order, so squeal may pipeline a
//! window of batches. A frame that fails authentication or parsing is counted and logged
//! (rate-limited), and the connection is closed: it never causes a delete, and other
//! connections carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marker::batch::{
    self, Ack, AckStatus, Batch, BatchKind, Refusal, Secret, Session, WireError, AUTH_LEN,
    HEADER_LEN,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::socket::Transport;
use crate::tls::Refused;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::fanout::Fanout;
use super::TlsSource;

/// The port's limits on unauthenticated and slow peers (`[invalidation]` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a new connection has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Time a frame has, from its first byte, to arrive whole.
    pub frame_timeout: Duration,
    /// Connections allowed in their handshake at once.
    pub max_unauthenticated: usize,
}

/// Counts every rejection by reason and logs it, at most once a second per reason, with how
/// many were suppressed since: a flood of garbage must not become a flood of log lines, but
/// none may go unseen.
#[derive(Default)]
pub struct RejectLog(Mutex<HashMap<&'static str, Arc<crate::lograte::Every>>>);

impl RejectLog {
    pub fn reject(&self, reason: &'static str, peer: &str, error: &dyn std::fmt::Display) {
        metrics::counter!("squeal_router_invalidation_frames_rejected_total", "reason" => reason)
            .increment(1);
        let every = self
            .0
            .lock()
            .unwrap()
            .entry(reason)
            .or_insert_with(|| Arc::new(crate::lograte::Every::new(Duration::from_secs(1))))
            .clone();
        let Some(suppressed) = every.tick() else {
            return;
        };
        warn!(
            peer,
            reason,
            error = %error,
            suppressed_since_last = suppressed,
            "rejecting invalidation connection (counted in \
             squeal_router_invalidation_frames_rejected_total{{reason}}); check that squeal \
             and the router share the secret and protocol version"
        );
    }
}

/// The reason label of a wire error.
pub fn reason_of(e: &WireError) -> &'static str {
    match e {
        WireError::BadMac => "auth",
        WireError::BadMagic(_) => "magic",
        WireError::OldVersion(_) | WireError::Version(_) => "old_version",
        WireError::TooLarge(_) => "size",
        _ => "malformed",
    }
}

/// Accepts squeal connections on `listener` until the process ends.
/// With `tls`, the port requires TLS (the `[tls]` certificate current at each accept).
pub async fn serve(
    listener: TcpListener,
    fanout: Arc<Fanout>,
    secret: Secret,
    limits: Limits,
    tls: Option<TlsSource>,
) {
    let seen = Arc::new(SeenSequences::default());
    let rejects = Arc::new(RejectLog::default());
    let unauthenticated = Arc::new(Semaphore::new(limits.max_unauthenticated));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "invalidation accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Refused at once, not queued: a queue would hold what the cap is there to bound.
        let Ok(permit) = unauthenticated.clone().try_acquire_owned() else {
            rejects.reject(
                "unauthenticated_limit",
                &peer.to_string(),
                &format_args!(
                    "{} connections already in their handshake (max_unauthenticated)",
                    limits.max_unauthenticated
                ),
            );
            let _ = stream.try_write(&Refusal::Busy.encode());
            continue;
        };
        let fanout = fanout.clone();
        let secret = secret.clone();
        let seen = seen.clone();
        let rejects = rejects.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            metrics::gauge!("squeal_router_invalidation_unauthenticated_connections")
                .increment(1.0);
            let stream = match &tls {
                None => Some(Transport::Plain(stream)),
                Some(source) => tls_accept(stream, peer, source, &limits, &rejects).await,
            };
            let session = match stream {
                Some(stream) => handshake(stream, peer, &secret, &limits, &rejects).await,
                None => None,
            };
            metrics::gauge!("squeal_router_invalidation_unauthenticated_connections")
                .decrement(1.0);
            drop(permit);
            let Some((stream, session)) = session else {
                return;
            };
            debug!(%peer, "invalidation connection authenticated");
            match connection(stream, peer, &fanout, &secret, &session, &limits, &seen).await {
                Ok(()) => debug!(%peer, "invalidation connection closed"),
                Err((reason, e)) => rejects.reject(reason, &peer.to_string(), &e),
            }
        });
    }
}

/// Runs the router's half of the handshake: the stream and its session once the peer proved
/// it holds the secret, `None` (counted, logged, refusal sent) otherwise.
async fn handshake(
    mut stream: Transport,
    peer: SocketAddr,
    secret: &Secret,
    limits: &Limits,
    rejects: &RejectLog,
) -> Option<(Transport, Session)> {
    stream.set_nodelay();
    let router_nonce = batch::random_nonce();
    let exchange = async {
        stream
            .write_all(&batch::encode_hello(&router_nonce))
            .await
            .map_err(|e| ("io", e.to_string()))?;
        stream.flush().await.map_err(|e| ("io", e.to_string()))?;
        // The only buffer an unauthenticated peer gets: AUTH_LEN bytes on the stack.
        let mut buf = [0u8; AUTH_LEN];
        let mut have = 0;
        loop {
            match stream.read(&mut buf[have..]).await {
                Ok(0) => return Err(("closed", "closed during the handshake".to_string())),
                Ok(n) => have += n,
                Err(e) => return Err(("io", e.to_string())),
            }
            match batch::decode_auth(&buf[..have], secret, &router_nonce) {
                Ok(Some(session)) => return Ok(session),
                Ok(None) => continue,
                Err(e) => {
                    let refusal = match &e {
                        WireError::BadMac => Refusal::Auth,
                        WireError::OldVersion(_) => Refusal::Version,
                        _ => Refusal::Malformed,
                    };
                    let _ = stream.write_all(&refusal.encode()).await;
                    let _ = stream.flush().await;
                    return Err((reason_of(&e), e.to_string()));
                }
            }
        }
    };
    let outcome = tokio::time::timeout(limits.handshake_timeout, exchange).await;
    let peer = peer.to_string();
    match outcome {
        Ok(Ok(session)) => {
            let welcome = batch::encode_welcome(secret, &session);
            if stream.write_all(&welcome).await.is_err() || stream.flush().await.is_err() {
                return None;
            }
            Some((stream, session))
        }
        // A peer that connects and goes away (a port probe) is counted, not worth a warning.
        Ok(Err(("closed" | "io", e))) => {
            metrics::counter!("squeal_router_invalidation_frames_rejected_total", "reason" => "closed_in_handshake")
                .increment(1);
            debug!(%peer, error = %e, "invalidation handshake not completed");
            None
        }
        Ok(Err((reason, e))) => {
            rejects.reject(reason, &peer, &e);
            None
        }
        Err(_) => {
            let refusal = async {
                stream.write_all(&Refusal::Timeout.encode()).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_millis(100), refusal).await;
            rejects.reject(
                "handshake_timeout",
                &peer,
                &format_args!(
                    "handshake not completed within {:?} (handshake_timeout_ms)",
                    limits.handshake_timeout
                ),
            );
            None
        }
    }
}

/// The TLS side of a new connection on a TLS invalidation port, bounded by the handshake
/// timeout: the session, or `None` (counted in the rejections, by reason, and logged).
async fn tls_accept(
    stream: TcpStream,
    peer: SocketAddr,
    source: &TlsSource,
    limits: &Limits,
    rejects: &RejectLog,
) -> Option<Transport> {
    let refused = match crate::tls::accept(stream, || source(), limits.handshake_timeout).await {
        Ok(t) => return Some(t),
        Err(r) => r,
    };
    let peer = peer.to_string();
    match refused {
        Refused::Closed => {}
        // squeal waits for the router's hello, so a squeal without TLS sends nothing at
        // all: the message says what that most likely means.
        Refused::Silent => rejects.reject(
            "tls_handshake",
            &peer,
            &"sent no TLS handshake within handshake_timeout_ms: a squeal whose router \
              sink has no `tls` settings? the port has [invalidation] tls = true",
        ),
        Refused::NotTls(_) => rejects.reject(
            "not_tls",
            &peer,
            &"spoke plain text on a port that requires TLS ([invalidation] tls = true)",
        ),
        Refused::NoCertificate => {
            rejects.reject("tls_handshake", &peer, &"no [tls] certificate is loaded")
        }
        Refused::Handshake(e) => {
            rejects.reject("tls_handshake", &peer, &format_args!("TLS handshake: {e}"))
        }
        Refused::HandshakeTimeout => rejects.reject(
            "tls_handshake",
            &peer,
            &"TLS handshake not finished within handshake_timeout_ms",
        ),
    }
    None
}

/// The highest sequence number seen per source: a batch at or below it is a retry. It is
/// applied again anyway (deletes are idempotent); the count shows how often squeal retries.
#[derive(Default)]
struct SeenSequences(Mutex<HashMap<String, u64>>);

impl SeenSequences {
    fn record(&self, source: &str, seq: u64) -> bool {
        let mut seen = self.0.lock().unwrap();
        match seen.get_mut(source) {
            Some(high) if seq <= *high => true,
            Some(high) => {
                *high = seq;
                false
            }
            None => {
                seen.insert(source.to_string(), seq);
                false
            }
        }
    }
}

/// Reads one whole frame: the header first, checked before anything is allocated for the
/// body. `Ok(None)` on a clean close between frames.
async fn read_frame(
    reader: &mut BufReader<Transport>,
    limits: &Limits,
) -> Result<Option<Vec<u8>>, (&'static str, WireError)> {
    // Between frames an authenticated connection may idle for as long as squeal likes.
    match reader.fill_buf().await {
        Ok([]) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let read = async {
        let mut header = [0u8; HEADER_LEN];
        reader.read_exact(&mut header).await.map_err(|_| {
            (
                "truncated",
                WireError::Malformed("connection closed mid-frame"),
            )
        })?;
        let total = Batch::frame_len(&header).map_err(|e| (reason_of(&e), e))?;
        let mut frame = vec![0u8; total];
        frame[..HEADER_LEN].copy_from_slice(&header);
        reader
            .read_exact(&mut frame[HEADER_LEN..])
            .await
            .map_err(|_| {
                (
                    "truncated",
                    WireError::Malformed("connection closed mid-frame"),
                )
            })?;
        Ok(Some(frame))
    };
    match tokio::time::timeout(limits.frame_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err((
            "frame_timeout",
            WireError::Malformed("a frame did not arrive whole within frame_timeout_ms"),
        )),
    }
}

async fn connection(
    stream: Transport,
    peer: SocketAddr,
    fanout: &Fanout,
    secret: &Secret,
    session: &Session,
    limits: &Limits,
    seen: &SeenSequences,
) -> Result<(), (&'static str, WireError)> {
    let context = session.context();
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    while let Some(frame) = read_frame(&mut reader, limits).await? {
        let (batch, _) = Batch::decode(&frame, secret, &context)
            .map_err(|e| (reason_of(&e), e))?
            .expect("read_frame returns whole frames");
        drop(frame);
        let started = Instant::now();
        let result = match batch.kind {
            BatchKind::Deletes => {
                if seen.record(&batch.source, batch.seq) {
                    metrics::counter!("squeal_router_invalidation_duplicate_batches_total")
                        .increment(1);
                }
                metrics::counter!("squeal_router_invalidation_batches_total", "transport" => "native")
                    .increment(1);
                fanout.apply(&batch).await.map(|_| ())
            }
            BatchKind::FlushAll => {
                info!(%peer, source = %batch.source, seq = batch.seq, "flush_all requested");
                metrics::counter!("squeal_router_invalidation_flushes_total", "transport" => "native")
                    .increment(1);
                fanout.flush_all().await.map(|_| ())
            }
        };
        let status = match result {
            Ok(()) => AckStatus::Applied,
            Err(e) => {
                warn!(source = %batch.source, seq = batch.seq, error = %e, "batch rejected");
                AckStatus::Rejected
            }
        };
        let ack = Ack {
            seq: batch.seq,
            status,
        };
        let ack = ack.encode(secret, &context);
        let out = reader.get_mut();
        if out.write_all(&ack).await.is_err() || out.flush().await.is_err() {
            return Ok(());
        }
        metrics::histogram!("squeal_router_invalidation_ack_seconds")
            .record(started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Binds the invalidation port and logs where it listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "invalidation port listening");
    Ok(listener)
}
