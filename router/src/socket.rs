//! Socket helpers process by client and backend connections: one read that notices a
//! drained socket, and one vectored write of everything queued; and [`Transport`], the
//! plain-or-TLS stream those connections run on.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Reads once. A read that did not fill the buffer drained the socket, so tokio's
/// readiness is cleared right away (the fake `WouldBlock` inside `try_io`) instead of
/// costing a second `read` syscall that would only say "nothing more". Epoll is
/// edge-triggered: bytes arriving later raise readiness again.
pub fn read_drained(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut got = None;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        let spare = buf.capacity() - buf.len();
        let n = stream.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < spare {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (r, got) {
        (_, Some(n)) => Ok(n),
        (Err(e), None) => Err(e),
        (Ok(n), None) => Ok(n),
    }
}

/// Writes as much of `out` as the socket takes now, up to 64 buffers per vectored write,
/// dropping what was written, and returns how many bytes went out. Stops when the queue is
/// empty or the socket is full (then the task is registered for write readiness). Clients
/// and backend connections both send this way: one syscall for everything queued.
pub fn write_queued(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    out: &mut VecDeque<Bytes>,
) -> io::Result<usize> {
    let mut total = 0;
    while !out.is_empty() {
        match stream.poll_write_ready(cx) {
            Poll::Pending => break,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) => {}
        }
        let mut iov = [IoSlice::new(&[]); 64];
        let n = fill_iov(out, &mut iov);
        match stream.try_write_vectored(&iov[..n]) {
            Ok(written) => {
                advance(out, written);
                total += written;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Points `iov` at the front of `out` (as many buffers as fit); returns how many.
fn fill_iov<'a>(out: &'a VecDeque<Bytes>, iov: &mut [IoSlice<'a>]) -> usize {
    let n = out.len().min(iov.len());
    for (slot, b) in iov.iter_mut().zip(out.iter()) {
        *slot = IoSlice::new(b);
    }
    n
}

fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let front = out.front_mut().expect("wrote more than queued");
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// A connection's byte stream: plain TCP, or TLS over it. Client and backend loops read
/// and write through it, so a plain-text connection takes exactly the path it always took
/// (readiness, one drained read, one vectored write: no extra syscall or allocation), and a
/// TLS one goes through rustls' `AsyncRead`/`AsyncWrite`.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and a plain connection should not carry its size.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Transport {
    /// Reads what is there into `buf`, first reserving `grow` bytes when less than `min_spare`
    /// is free. `Ready(Err(WouldBlock))`: nothing after all, poll again (readiness was
    /// cleared). `Ready(Ok(0))`: the peer closed.
    #[inline]
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        min_spare: usize,
        grow: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(stream) => match stream.poll_read_ready(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if buf.capacity() - buf.len() < min_spare {
                        buf.reserve(grow);
                    }
                    Poll::Ready(read_drained(stream, buf))
                }
            },
            Transport::Tls(tls) => {
                if buf.capacity() - buf.len() < min_spare {
                    buf.reserve(grow);
                }
                let mut rb = tokio::io::ReadBuf::uninit(buf.spare_capacity_mut());
                match std::pin::Pin::new(&mut **tls).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        // SAFETY: `poll_read` initialised the first `n` spare bytes.
                        unsafe { buf.set_len(buf.len() + n) };
                        Poll::Ready(Ok(n))
                    }
                }
            }
        }
    }

    /// [`write_queued`] for either kind: as much of `out` as goes now, dropped from it, and
    /// how many bytes that was. TLS also flushes the records rustls holds, every call (even
    /// with nothing queued), so encrypted bytes never wait for the next reply.
    #[inline]
    pub fn poll_write_queued(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Bytes>,
    ) -> io::Result<usize> {
        let tls = match self {
            Transport::Plain(stream) => return write_queued(stream, cx, out),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls),
        };
        let mut tls = tls;
        let mut total = 0;
        while !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = fill_iov(out, &mut iov);
            match tls.as_mut().poll_write_vectored(cx, &iov[..n]) {
                Poll::Pending => break,
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(written)) => {
                    advance(out, written);
                    total += written;
                }
                Poll::Ready(Err(e)) => return Err(e),
            }
        }
        match tls.poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(total),
        }
    }

    /// Ends the connection cleanly: TLS sends what it still holds and its `close_notify`
    /// (bounded by `within`); plain TCP needs nothing (dropping it closes it).
    pub async fn close(self, within: std::time::Duration) {
        if let Transport::Tls(mut tls) = self {
            let _ =
                tokio::time::timeout(within, tokio::io::AsyncWriteExt::shutdown(&mut *tls)).await;
        }
    }

    pub fn set_nodelay(&self) {
        let tcp = match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => t.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
    }
}

/// For the paths that are not poll loops (health probes): plain `AsyncRead`.
impl AsyncRead for Transport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Transport::Tls(t) => std::pin::Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Transport::Tls(t) => std::pin::Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Transport::Tls(t) => std::pin::Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Transport::Tls(t) => std::pin::Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}
