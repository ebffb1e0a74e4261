//! Listening sockets: one per worker and address, bound with `SO_REUSEPORT` so the kernel
//! spreads new connections over the workers and no thread hands sockets to another.
//!
//! A port that requires TLS looks at a new connection's first byte: a TLS client starts
//! with a handshake record (0x16); anything else is a plain-text client on the wrong port,
//! which is told `SERVER_ERROR this port requires TLS` (counted as
//! `clients_closed_total{reason="not_tls"}`) and closed, rather than left to time out on
//! bytes it cannot read.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{self, ClientCtx};
use crate::socket::Transport;
use crate::tls::Refused;

/// What a plain-text client on a TLS port reads before the port closes.
pub const NOT_TLS_REPLY: &[u8] = b"SERVER_ERROR this port requires TLS\r\n";

/// Refused TLS clients, logged at most once a second (process-wide).
static TLS_LOG: crate::lograte::Every = crate::lograte::Every::new(Duration::from_secs(1));

/// Binds a listening socket that other workers may bind too. Bound before workers start,
/// so an address in use stops the router at once with a clear error.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts connections for one worker until the process ends. With `tls` (the handshake
/// timeout), every connection must speak TLS with the current `[tls]` certificate.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    ctx: Rc<ClientCtx>,
    open: Arc<AtomicUsize>,
    max_connections: usize,
    tls: Option<Duration>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot register listener: {e}");
            return;
        }
    };
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::Relaxed) >= max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            ctx.stats.rejected_connections.add(1);
            tokio::task::spawn_local(async move {
                let _ = stream
                    .write_all(b"ERROR Too many open connections\r\n")
                    .await;
            });
            continue;
        }
        ctx.stats.total_connections.add(1);
        let ctx = ctx.clone();
        let open = open.clone();
        tokio::task::spawn_local(async move {
            let transport = match tls {
                None => Some(Transport::Plain(stream)),
                Some(within) => tls_accept(stream, &ctx, within).await,
            };
            match transport {
                Some(t) => client::serve(t, ctx).await,
                None => ctx.stats.closed_connections.add(1),
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The TLS side of a new connection on a TLS port: the session once the handshake is
/// done, `None` (counted, and logged at most once a second) otherwise.
async fn tls_accept(stream: TcpStream, ctx: &ClientCtx, within: Duration) -> Option<Transport> {
    let refused = match crate::tls::accept(stream, || ctx.process.tls_server(), within).await {
        Ok(t) => return Some(t),
        Err(r) => r,
    };
    let why = match refused {
        Refused::Closed => return None,
        Refused::NotTls(stream) => {
            ctx.stats.not_tls.add(1);
            log_refusal("spoke plain text; point it at a plain-text port or give it TLS");
            refuse(stream, within).await;
            return None;
        }
        Refused::Silent => "sent nothing within [tls] handshake_timeout_ms".to_string(),
        Refused::NoCertificate => "no [tls] certificate is loaded".to_string(),
        Refused::Handshake(e) => format!("TLS handshake failed: {e}"),
        Refused::HandshakeTimeout => {
            "TLS handshake not finished within [tls] handshake_timeout_ms".to_string()
        }
    };
    ctx.stats.tls_handshake_failures.add(1);
    log_refusal(&why);
    None
}

/// Tells a plain-text client why it is closed. The write side is shut first and what the
/// client already sent is read away (bounded), so closing does not reset the connection
/// before the client has read the line.
async fn refuse(mut stream: TcpStream, within: Duration) {
    let tell = async {
        stream.write_all(NOT_TLS_REPLY).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(within.min(Duration::from_secs(1)), tell).await;
}

fn log_refusal(why: &str) {
    if let Some(suppressed) = TLS_LOG.tick() {
        tracing::warn!(
            suppressed_since_last = suppressed,
            "client of a TLS port closed: {why} (counted in \
             squeal_router_clients_closed_total{{reason=\"not_tls\"|\"tls_handshake\"}})"
        );
    }
}
