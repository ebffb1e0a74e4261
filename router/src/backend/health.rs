//! Server health (TKO, "technical knock-out", as mcrouter calls it).
//!
//! Every reply a pool route gets back for a server is observed: a reply resets the server's
//! count of consecutive failures, a router-made `SERVER_ERROR` (connect failure, timeout,
//! connection lost, server unavailable) adds one. After `tko_after` in a row the server is
//! marked down: requests to it are answered at once with `SERVER_ERROR server marked down
//! (TKO)`, which is what lets failover routes move on without waiting for a timeout. One
//! worker probes the server (a fresh connection, `version`) with exponential backoff and
//! clears the mark when it answers. The state is process by all workers (atomics in
//! [`ServerStats`]) and shows in `stats` (`state tko`) and in metrics.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Health;
use crate::protocol::reply::Reply;
use crate::stats::ServerStats;
use crate::tls::Connector;

/// One server's health as a worker's pool route sees it.
pub struct Watch {
    pub stats: Arc<ServerStats>,
    cfg: Health,
    addr: SocketAddr,
    connect: Duration,
    read: Duration,
    /// A TLS pool's probe speaks TLS too.
    tls: Option<Connector>,
}

impl Watch {
    pub fn new(
        stats: Arc<ServerStats>,
        cfg: Health,
        addr: SocketAddr,
        connect: Duration,
        read: Duration,
        tls: Option<Connector>,
    ) -> Watch {
        Watch {
            stats,
            cfg,
            addr,
            connect,
            read,
            tls,
        }
    }

    /// True while the server is marked down: fail without sending.
    #[inline]
    pub fn is_down(&self) -> bool {
        self.stats.tko.load(Relaxed)
    }

    /// Looks at one reply from the server.
    #[inline]
    pub fn observe(&self, reply: &Reply) {
        if reply.is_error() {
            self.failed();
        } else if self.stats.fails.load(Relaxed) != 0 {
            self.stats.fails.store(0, Relaxed);
        }
    }

    fn failed(&self) {
        let n = self.stats.fails.fetch_add(1, Relaxed).saturating_add(1);
        if n < self.cfg.tko_after {
            return;
        }
        if self
            .stats
            .tko
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_err()
        {
            return; // already down; someone probes it
        }
        self.stats.tko_marks.fetch_add(1, Relaxed);
        tracing::warn!(
            pool = %self.stats.pool,
            server = %self.stats.addr,
            failures = n,
            "server marked down (TKO); probing"
        );
        tokio::task::spawn_local(probe(
            self.stats.clone(),
            self.addr,
            self.cfg,
            self.connect,
            self.read,
            self.tls.clone(),
        ));
    }
}

/// Probes until the server answers, then clears the mark.
async fn probe(
    stats: Arc<ServerStats>,
    addr: SocketAddr,
    cfg: Health,
    connect: Duration,
    read: Duration,
    tls: Option<Connector>,
) {
    let mut wait = cfg.probe_min;
    loop {
        tokio::time::sleep(wait).await;
        // Nobody else holds the stats: the server left the config in a reload.
        if Arc::strong_count(&stats) == 1 {
            return;
        }
        if probe_once(addr, connect, read, tls.clone()).await {
            stats.fails.store(0, Relaxed);
            stats.tko.store(false, Relaxed);
            tracing::info!(pool = %stats.pool, server = %stats.addr, "server answers again (TKO cleared)");
            return;
        }
        stats.probe_failures.fetch_add(1, Relaxed);
        wait = (wait * 2).min(cfg.probe_max);
    }
}

/// One `version` round trip on a fresh connection, bounded by the timeouts.
async fn probe_once(
    addr: SocketAddr,
    connect: Duration,
    read: Duration,
    tls: Option<Connector>,
) -> bool {
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(connect, crate::tls::connect(addr, tls.as_ref())).await
    else {
        return false;
    };
    let exchange = async {
        stream.write_all(b"version\r\n").await?;
        stream.flush().await?;
        let mut buf = [0u8; 256];
        let mut got = 0;
        while got < buf.len() {
            let n = stream.read(&mut buf[got..]).await?;
            if n == 0 {
                break;
            }
            got += n;
            if buf[..got].ends_with(b"\r\n") {
                break;
            }
        }
        Ok::<bool, std::io::Error>(buf[..got].starts_with(b"VERSION "))
    };
    matches!(tokio::time::timeout(read, exchange).await, Ok(Ok(true)))
}
