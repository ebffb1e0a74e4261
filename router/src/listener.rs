//! Listening sockets: one per worker and address, bound with `SO_REUSEPORT` so the kernel
//! spreads new connections over the workers and no thread hands sockets to another.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::client::{self, ClientCtx};

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

/// Accepts connections for one worker until the process ends.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    ctx: Rc<ClientCtx>,
    open: Arc<AtomicUsize>,
    max_connections: usize,
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
            client::serve(stream, ctx).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
