//! One pipelined connection to a memcached server.
//!
//! Clients append requests to the connection's queue ([`BackendConn::send`]) and wake its
//! task. Because waking only schedules the task, every request queued during one turn of
//! the worker's event loop goes out in a single `writev`. Requests are encoded by
//! [`super::codec`] as meta commands with the router's own opaque token; replies come back
//! in request order, each checked against the opaque its request carries before it is
//! handed to the request's completion (any [`Done`]; the routes' `Completion`). A reply that does not match is a desync: the
//! connection is reset and only its own outstanding requests fail, each exactly once,
//! after every reply already matched was delivered.
//!
//! The task connects with a timeout, fails every queued request when the connection breaks
//! or a reply is overdue, and reconnects with exponential backoff. While the server is
//! down, requests fail at once instead of piling up.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::codec::{self, Expect, Took};
use crate::config::Timeouts;
use crate::protocol::reply::Reply;
use crate::protocol::Request;
use crate::socket::Transport;
use crate::stats::{ServerStats, WorkerStats};
use crate::tls::Connector;

/// What a request's reply is handed to, exactly once. The route layer's `Completion` is
/// one; the backend only needs to hand it the reply, so it does not depend on routes.
pub trait Done {
    fn done(self, reply: Reply);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Up,
    Down,
}

struct Pending<D> {
    expect: Expect,
    nkeys: u16,
    done: D,
}

struct Inner<D> {
    out: VecDeque<Bytes>,
    /// Where request lines are written before they are cut off as `Bytes`.
    arena: BytesMut,
    /// The next opaque token.
    next_opaque: u32,
    pending: VecDeque<Pending<D>>,
    waker: Option<Waker>,
    state: State,
    /// When the oldest outstanding request was last known to be making progress.
    last_progress: Instant,
}

pub struct BackendConn<D> {
    inner: RefCell<Inner<D>>,
    tls: RefCell<Option<Connector>>,
    server: Arc<ServerStats>,
    stats: Arc<WorkerStats>,
    max_queue: usize,
}

impl<D: Done> BackendConn<D> {
    pub fn new(
        server: Arc<ServerStats>,
        stats: Arc<WorkerStats>,
        max_queue: usize,
        tls: Option<Connector>,
    ) -> Rc<Self> {
        server.conns.fetch_add(1, Relaxed);
        Rc::new(BackendConn {
            tls: RefCell::new(tls),
            inner: RefCell::new(Inner {
                out: VecDeque::new(),
                arena: BytesMut::new(),
                next_opaque: 0,
                pending: VecDeque::new(),
                waker: None,
                state: State::Connecting,
                last_progress: Instant::now(),
            }),
            server,
            stats,
            max_queue,
        })
    }

    /// Queues a request; `done` is completed with its reply, or an error, exactly once.
    pub fn send(&self, req: Request, done: D) {
        let mut i = self.inner.borrow_mut();
        if i.state == State::Down || i.pending.len() >= self.max_queue {
            drop(i);
            self.stats.backend_errors.add(1);
            self.server.errors.fetch_add(1, Relaxed);
            let why = if self.max_queue == 0 || self.inner.borrow().state == State::Down {
                "backend unavailable"
            } else {
                "backend queue full"
            };
            return done.done(Reply::error(why));
        }
        if i.pending.is_empty() {
            i.last_progress = Instant::now();
        }
        let nkeys = match &req {
            Request::Keyed(k) => k.nkeys,
            Request::MultiGet(m) => m.keys.len().min(u16::MAX as usize) as u16,
            _ => 0,
        };
        let i = &mut *i;
        if i.arena.capacity() - i.arena.len() < 512 {
            i.arena.reserve(16 * 1024);
        }
        let expect = codec::encode(req, &mut i.next_opaque, &mut i.arena, &mut i.out);
        i.pending.push_back(Pending {
            expect,
            nkeys,
            done,
        });
        if let Some(w) = i.waker.take() {
            w.wake();
        }
    }

    fn set_state(&self, s: State) {
        self.inner.borrow_mut().state = s;
    }

    /// Fails everything queued or in flight: the connection they were on is gone.
    fn fail_all(&self, why: &str) {
        let pending = {
            let mut i = self.inner.borrow_mut();
            i.out.clear();
            std::mem::take(&mut i.pending)
        };
        if pending.is_empty() {
            return;
        }
        self.stats.backend_errors.add(pending.len() as u64);
        self.server.errors.fetch_add(pending.len() as u64, Relaxed);
        let reply = Reply::error(why);
        for p in pending {
            p.done.done(reply.clone());
        }
    }

    /// The TLS settings of connections opened from now on (`None`: plain text). A reload
    /// calls it for a connection it keeps; the connection that is up keeps its session.
    pub fn set_tls(&self, tls: Option<Connector>) {
        *self.tls.borrow_mut() = tls;
    }

    /// The connection's life: connect, serve, fail, back off, again. Never returns.
    pub async fn run(self: Rc<Self>, addr: SocketAddr, t: Timeouts) {
        let mut backoff = t.backoff_min;
        loop {
            self.set_state(State::Connecting);
            // Read at each connect: a reload hands reconnects its new certificates.
            let tls = self.tls.borrow().clone();
            let why = match tokio::time::timeout(t.connect, crate::tls::connect(addr, tls.as_ref()))
                .await
            {
                Ok(Ok(stream)) => {
                    stream.set_nodelay();
                    self.server.connects.fetch_add(1, Relaxed);
                    self.server.up.fetch_add(1, Relaxed);
                    self.set_state(State::Up);
                    backoff = t.backoff_min;
                    let why = self.serve(stream, t.read).await;
                    self.server.up.fetch_sub(1, Relaxed);
                    why
                }
                Ok(Err(e)) => {
                    self.server.connect_failures.fetch_add(1, Relaxed);
                    format!("connect failed: {e}")
                }
                Err(_) => {
                    self.server.connect_failures.fetch_add(1, Relaxed);
                    "connect timeout".to_string()
                }
            };
            tracing::warn!(server = %addr, reason = %why, "backend connection down");
            self.set_state(State::Down);
            self.fail_all(&why);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(t.backoff_max);
        }
    }

    /// Pumps requests out and replies in until the connection fails; returns why.
    async fn serve(&self, mut stream: Transport, read_timeout: Duration) -> String {
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut timer = Box::pin(tokio::time::sleep(read_timeout));
        let mut completed: Vec<(D, Reply)> = Vec::new();
        let result = poll_fn(|cx| loop {
            // Write everything queued, in as few syscalls as the socket allows.
            if let Err(e) = stream.poll_write_queued(cx, &mut self.inner.borrow_mut().out) {
                return Poll::Ready(Err(e));
            }
            // Read replies and match them to requests, oldest first.
            match stream.poll_read_into(cx, &mut rbuf, 16 * 1024, 64 * 1024) {
                Poll::Pending => {}
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed by server",
                    )))
                }
                Poll::Ready(Ok(_)) => {
                    let taken = self.take_replies(&mut rbuf, &mut completed);
                    // Every reply already matched reaches its client, even when
                    // the connection is about to be reset.
                    for (done, reply) in completed.drain(..) {
                        done.done(reply);
                    }
                    if let Err(e) = taken {
                        return Poll::Ready(Err(e));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
            // Nothing more to do now: arm the reply timeout and sleep.
            let mut i = self.inner.borrow_mut();
            if !i.pending.is_empty() {
                let deadline = i.last_progress + read_timeout;
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "reply timeout",
                    )));
                }
                // The timer may fire early (it is only moved when it fires, not on every
                // reply: re-arming costs a trip through the timer wheel).
                if timer.as_mut().poll(cx).is_ready() {
                    timer.as_mut().reset(deadline);
                    continue;
                }
            }
            match &i.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => i.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        })
        .await;
        self.server.resets.fetch_add(1, Relaxed);
        match result {
            Ok(()) => "closed".to_string(),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    self.server.timeouts.fetch_add(1, Relaxed);
                }
                e.to_string()
            }
        }
    }

    fn take_replies(&self, rbuf: &mut BytesMut, completed: &mut Vec<(D, Reply)>) -> io::Result<()> {
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        let mut any = false;
        let result = loop {
            if rbuf.is_empty() {
                break Ok(());
            }
            let Some(p) = i.pending.front_mut() else {
                break Err(codec::Desync(format!(
                    "a reply without a request: {}",
                    String::from_utf8_lossy(&rbuf[..rbuf.len().min(64)])
                )));
            };
            match p.expect.take(rbuf, &mut i.arena) {
                Ok(Took::NeedMore) => break Ok(()),
                Ok(Took::Partial) => any = true,
                Ok(Took::Done(reply)) => {
                    let p = i.pending.pop_front().expect("front exists");
                    if p.nkeys > 0 {
                        let hits = u64::from(p.expect.hits);
                        self.stats.get_hits.add(hits);
                        self.stats
                            .get_misses
                            .add((p.nkeys as u64).saturating_sub(hits));
                    }
                    completed.push((p.done, reply));
                    any = true;
                }
                Err(e) => break Err(e),
            }
        };
        if any {
            i.last_progress = Instant::now();
        }
        result.map_err(|codec::Desync(why)| {
            self.server.desyncs.fetch_add(1, Relaxed);
            io::Error::new(io::ErrorKind::InvalidData, format!("out of sync: {why}"))
        })
    }
}
