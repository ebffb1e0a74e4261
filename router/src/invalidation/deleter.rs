//! One pipelined delete connection per memcached server, used by the invalidation fan-out.
//!
//! Invalidations arrive as batches, so a whole group of deletes for one server goes out in a
//! single write and the replies are read back in order. This path is kept apart from the
//! client data path: it needs a definite answer per key (applied, or spool it), not a
//! reply to forward.

use std::time::Duration;

use marker::memcache::{self, DeleteReply, StoreReply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::socket::Transport;
use crate::tls::Connector;

/// Why a group of deletes did not certainly reach its server.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("connecting to {server}: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("talking to {server}: {source}")]
    Io {
        server: String,
        source: std::io::Error,
    },
    #[error("{server} did not answer within {timeout:?}")]
    Timeout { server: String, timeout: Duration },
    #[error("{server} answered {reply:?} to a delete")]
    Refused { server: String, reply: String },
}

/// A lazily connected, reconnect-on-error delete connection to one server.
pub struct Deleter {
    server: String,
    timeout: Duration,
    /// Set when the server belongs to a cluster being warmed: a delete then leaves a
    /// hold-off tombstone for this many seconds (see `marker::holdoff`), so the warm-up
    /// cannot write back the value it removes.
    holdoff_secs: Option<u32>,
    /// A server of a TLS pool is reached over TLS.
    tls: Option<Connector>,
    conn: Mutex<Option<BufReader<Transport>>>,
}

impl Deleter {
    pub fn new(
        server: String,
        timeout: Duration,
        holdoff_secs: Option<u32>,
        tls: Option<Connector>,
    ) -> Deleter {
        Deleter {
            server,
            timeout,
            holdoff_secs,
            tls,
            conn: Mutex::new(None),
        }
    }

    /// Deletes every key, pipelined, and returns once each got `DELETED` or `NOT_FOUND`
    /// (both mean the key is no longer cached), or `STORED` for a hold-off tombstone. Any other outcome drops the connection and is
    /// an error: the caller cannot know which deletes landed, so it spools them all.
    pub async fn delete_all(&self, keys: &[&[u8]]) -> Result<(), DeleteError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut guard = self.conn.lock().await;
        let result = tokio::time::timeout(self.timeout, self.exchange(&mut guard, keys)).await;
        self.settle(&mut guard, result)
    }

    /// Runs `flush_all` on the server (on the same connection as the deletes, so it stays
    /// in order with them) and returns once it answered `OK`. A warming server gets no
    /// special treatment: after a flush there is nothing left that a hold-off protects.
    pub async fn flush_all(&self) -> Result<(), DeleteError> {
        let mut guard = self.conn.lock().await;
        let result = tokio::time::timeout(self.timeout, self.flush_exchange(&mut guard)).await;
        self.settle(&mut guard, result)
    }

    /// The outcome of one exchange bounded by the timeout: a failed or timed-out
    /// connection is dropped (what was in flight on it is unknown), the next call reconnects.
    fn settle<C>(
        &self,
        conn: &mut Option<C>,
        result: Result<Result<(), DeleteError>, tokio::time::error::Elapsed>,
    ) -> Result<(), DeleteError> {
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => DeleteError::Timeout {
                server: self.server.clone(),
                timeout: self.timeout,
            },
        };
        *conn = None;
        Err(error)
    }

    async fn flush_exchange(
        &self,
        conn: &mut Option<BufReader<Transport>>,
    ) -> Result<(), DeleteError> {
        let stream = self.connected(conn).await?;
        let io = |source| DeleteError::Io {
            server: self.server.clone(),
            source,
        };
        stream
            .get_mut()
            .write_all(b"flush_all\r\n")
            .await
            .map_err(io)?;
        stream.get_mut().flush().await.map_err(io)?;
        let mut line = String::new();
        if stream.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        match line.trim_end() {
            "OK" => Ok(()),
            other => Err(DeleteError::Refused {
                server: self.server.clone(),
                reply: other.to_string(),
            }),
        }
    }

    async fn connected<'c>(
        &self,
        conn: &'c mut Option<BufReader<Transport>>,
    ) -> Result<&'c mut BufReader<Transport>, DeleteError> {
        if conn.is_none() {
            let stream = crate::tls::connect(self.server.as_str(), self.tls.as_ref())
                .await
                .map_err(|source| DeleteError::Connect {
                    server: self.server.clone(),
                    source,
                })?;
            stream.set_nodelay();
            *conn = Some(BufReader::new(stream));
        }
        Ok(conn.as_mut().expect("connected above"))
    }

    async fn exchange(
        &self,
        conn: &mut Option<BufReader<Transport>>,
        keys: &[&[u8]],
    ) -> Result<(), DeleteError> {
        let stream = self.connected(conn).await?;
        let io = |source| DeleteError::Io {
            server: self.server.clone(),
            source,
        };
        let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 9).sum());
        for key in keys {
            match self.holdoff_secs {
                Some(secs) => marker::holdoff::tombstone_command(key, secs, &mut out),
                None => memcache::delete(key, &mut out),
            }
        }
        stream.get_mut().write_all(&out).await.map_err(io)?;
        stream.get_mut().flush().await.map_err(io)?;
        let mut line = String::new();
        for _ in keys {
            line.clear();
            let n = stream.read_line(&mut line).await.map_err(io)?;
            if n == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let reply = line.trim_end();
            let applied = match self.holdoff_secs {
                None => DeleteReply::parse(reply.as_bytes()).is_gone(),
                Some(_) => StoreReply::parse(reply.as_bytes()) == StoreReply::Stored,
            };
            if !applied {
                return Err(DeleteError::Refused {
                    server: self.server.clone(),
                    reply: reply.to_string(),
                });
            }
        }
        Ok(())
    }
}
