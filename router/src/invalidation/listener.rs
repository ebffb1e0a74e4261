//! The native invalidation port: squeal connects, sends authenticated batch frames, and gets
//! an ack for each once its deletes were applied or spooled.
//!
//! Frames on one connection are applied and acknowledged in order, so squeal may pipeline a
//! window of batches. A frame that fails authentication or parsing is counted and logged,
//! and the connection is closed: it never causes a delete, and other connections carry on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use marker::batch::{Ack, AckStatus, Batch, Secret, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::fanout::Fanout;

/// Accepts squeal connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener, fanout: Arc<Fanout>, secret: Secret) {
    let seen = Arc::new(SeenSequences::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "invalidation accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let fanout = fanout.clone();
        let secret = secret.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            match connection(stream, peer, &fanout, &secret, &seen).await {
                Ok(()) => debug!(%peer, "invalidation connection closed"),
                Err(e) => warn!(%peer, error = %e, "invalidation connection dropped"),
            }
        });
    }
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

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    fanout: &Fanout,
    secret: &Secret,
    seen: &SeenSequences,
) -> Result<(), WireError> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Apply every complete frame already buffered before reading more.
        loop {
            let decoded = Batch::decode(&buf, secret).inspect_err(|e| {
                let reason = match e {
                    WireError::BadMac => "auth",
                    WireError::BadMagic(_) => "magic",
                    WireError::TooLarge(_) => "size",
                    _ => "malformed",
                };
                metrics::counter!("squeal_router_invalidation_frames_rejected_total", "reason" => reason)
                    .increment(1);
                warn!(%peer, error = %e, "rejecting invalidation frame; closing connection");
            })?;
            let Some((batch, used)) = decoded else { break };
            buf.drain(..used);
            let started = Instant::now();
            if seen.record(&batch.source, batch.seq) {
                metrics::counter!("squeal_router_invalidation_duplicate_batches_total")
                    .increment(1);
            }
            metrics::counter!("squeal_router_invalidation_batches_total", "transport" => "native")
                .increment(1);
            let status = match fanout.apply(&batch).await {
                Ok(_) => AckStatus::Applied,
                Err(e) => {
                    warn!(source = %batch.source, seq = batch.seq, error = %e, "batch rejected");
                    AckStatus::Rejected
                }
            };
            let ack = Ack {
                seq: batch.seq,
                status,
            };
            if stream.write_all(&ack.encode(secret)).await.is_err() {
                return Ok(());
            }
            metrics::histogram!("squeal_router_invalidation_ack_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Binds the invalidation port and logs where it listens.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "invalidation port listening");
    Ok(listener)
}
