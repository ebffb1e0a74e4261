//! Socket helpers process by client and backend connections: one read that notices a
//! drained socket, and one vectored write of everything queued.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
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
        let n = out.len().min(iov.len());
        for (slot, b) in iov.iter_mut().zip(out.iter()) {
            *slot = IoSlice::new(b);
        }
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
