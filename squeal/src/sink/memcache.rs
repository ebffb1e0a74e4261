//! Plain memcache sink: pipelined `delete`s to a list of endpoints (one per front-end
//! cluster, typically a router: squeal-router, mcrouter, twemproxy, or a memcached server).
//!
//! A batch goes to every endpoint as one write of `delete <key>\r\n` lines; the endpoint's
//! replies are read back in order. `DELETED` and `NOT_FOUND` both mean delivered.
//! `CLIENT_ERROR` for one key is counted and logged (retrying cannot help); anything else
//! (a `SERVER_ERROR`, a timeout, a closed connection) fails the attempt and that endpoint
//! alone retries the batch with backoff until it succeeds.

use std::sync::Arc;
use std::time::Duration;

use marker::memcache::{self, DeleteReply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::{Sink, SinkError, SinkFuture};
use crate::batch::Batch;

type Conn = BufReader<TcpStream>;

struct Endpoint {
    addr: String,
    conns: Vec<Mutex<Option<Conn>>>,
}

pub struct MemcacheSink {
    endpoints: Arc<Vec<Endpoint>>,
    timeout: Duration,
}

impl MemcacheSink {
    pub fn new(addrs: Vec<String>, timeout: Duration, connections: usize) -> MemcacheSink {
        MemcacheSink {
            endpoints: Arc::new(
                addrs
                    .into_iter()
                    .map(|addr| Endpoint {
                        addr,
                        conns: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
                    })
                    .collect(),
            ),
            timeout,
        }
    }
}

/// Result of one pipelined exchange.
struct Replies {
    rejected: u64,
}

async fn exchange(conn: &mut Conn, req: &[u8], n: usize) -> Result<Replies, String> {
    conn.get_mut()
        .write_all(req)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut line = Vec::with_capacity(32);
    let mut rejected = 0;
    for _ in 0..n {
        line.clear();
        let got = conn
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("connection closed".into());
        }
        let l = line.strip_suffix(b"\r\n").unwrap_or(&line);
        match DeleteReply::parse(l) {
            DeleteReply::Deleted | DeleteReply::NotFound => {}
            DeleteReply::ClientError => rejected += 1,
            DeleteReply::Other => return Err(format!("reply {:?}", String::from_utf8_lossy(l))),
        }
    }
    Ok(Replies { rejected })
}

async fn deliver_to(ep: &Endpoint, slot: usize, req: Arc<Vec<u8>>, n: usize, timeout: Duration) {
    let mut backoff = Duration::from_millis(20);
    let mut guard = ep.conns[slot].lock().await;
    loop {
        let attempt = async {
            if guard.is_none() {
                let s = TcpStream::connect(&ep.addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                s.set_nodelay(true).map_err(|e| e.to_string())?;
                *guard = Some(BufReader::with_capacity(64 * 1024, s));
            }
            exchange(guard.as_mut().expect("connected"), &req, n).await
        };
        let r = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no reply within {timeout:?}")),
        };
        match r {
            Ok(rep) => {
                if rep.rejected > 0 {
                    metrics::counter!("squeal_sink_rejected_keys_total").increment(rep.rejected);
                    tracing::error!(endpoint = %ep.addr, keys = rep.rejected, "endpoint refused keys (CLIENT_ERROR)");
                }
                return;
            }
            Err(e) => {
                *guard = None;
                metrics::counter!("squeal_sink_errors_total", "sink" => "memcache", "endpoint" => ep.addr.clone())
                    .increment(1);
                tracing::warn!(endpoint = %ep.addr, error = %e, "memcache delivery failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

impl Sink for MemcacheSink {
    fn name(&self) -> &str {
        "memcache"
    }

    fn send(&self, batch: Arc<Batch>) -> SinkFuture {
        let n = batch.len();
        let endpoints = self.endpoints.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            if n == 0 {
                return Ok(());
            }
            let mut req = Vec::with_capacity(batch.bytes());
            for k in batch.keys() {
                memcache::delete(k, &mut req);
            }
            let req = Arc::new(req);
            let futs = endpoints.iter().map(|ep| {
                let slot = (batch.seq as usize) % ep.conns.len();
                deliver_to(ep, slot, req.clone(), n, timeout)
            });
            futures_util::future::join_all(futs).await;
            Ok(())
        })
    }

    fn flush_all(&self) -> SinkFuture {
        let endpoints = self.endpoints.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            for ep in endpoints.iter() {
                let r = tokio::time::timeout(timeout, async {
                    let s = TcpStream::connect(&ep.addr).await?;
                    let mut c = BufReader::new(s);
                    c.get_mut().write_all(b"flush_all\r\n").await?;
                    let mut line = String::new();
                    c.read_line(&mut line).await?;
                    Ok::<_, std::io::Error>(line)
                })
                .await;
                match r {
                    Ok(Ok(l)) if l.trim_end() == "OK" => {
                        tracing::warn!(endpoint = %ep.addr, "flushed (flush_all)")
                    }
                    Ok(Ok(l)) => {
                        return Err(SinkError(format!(
                            "{}: flush_all: {}",
                            ep.addr,
                            l.trim_end()
                        )))
                    }
                    Ok(Err(e)) => return Err(SinkError(format!("{}: flush_all: {e}", ep.addr))),
                    Err(_) => return Err(SinkError(format!("{}: flush_all timed out", ep.addr))),
                }
            }
            Ok(())
        })
    }
}
