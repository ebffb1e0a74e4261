//! One client connection: read requests, hand them to the route, write replies in order.
//!
//! Replies may complete in any order (different servers, local answers), but must leave in
//! request order. Each request takes a numbered [`Slot`] in the connection's reply queue;
//! whoever completes it fills the slot and wakes the connection's task only when the oldest
//! slot became ready. The task then writes every ready reply in one `writev`.
//!
//! Backpressure: the task stops reading while `max_pending` requests are outstanding or
//! `max_output` bytes wait to be written, so a slow or stuck client costs bounded memory
//! and never stalls anyone else (its replies stay in its own queue).
//!
//! Memory bound: every reply byte held for a client (in its queue, ready or not yet
//! written) is counted, per client and for the whole process ([`buffered_output`]).
//! Requests already in flight when reading stopped still deliver; a client that lets more
//! than `2 × max_output` pile up, or that holds more than its share when the process holds
//! `max_buffered` in all, is disconnected and its replies are dropped at once (counted as
//! `output_overflows`). So one client costs at most `2 × max_output` plus one reply.

use std::cell::Cell;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::protocol::{self, Limits, Parsed, Quiet, Step};
use crate::route::{Completion, Reply, Route};
use crate::stats::{Shared, WorkerStats};

/// What every connection of a worker shares.
pub struct ClientCtx {
    pub route: Rc<dyn Route>,
    pub stats: Arc<WorkerStats>,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub max_pending: usize,
    pub max_output: usize,
    /// Reply bytes all clients of the process may hold unread.
    pub max_buffered: usize,
}

/// Reply bytes held for clients, in the whole process.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// Reply bytes the process holds for clients right now (for metrics and tests).
pub fn buffered_output() -> usize {
    BUFFERED.load(Relaxed)
}

/// Disconnections for unread output, logged at most once a second (process-wide).
static OVERFLOW_LOG: crate::lograte::Every =
    crate::lograte::Every::new(std::time::Duration::from_secs(1));

/// What a client over the global cap must hold, at least, to be the one disconnected.
const FAIR_SHARE: usize = 1 << 20;

fn reply_len(r: &Reply) -> usize {
    match r {
        Reply::Data(b) | Reply::Error(b) => b.len(),
        Reply::Chunks(c) => c.iter().map(Bytes::len).sum(),
    }
}

enum SlotState {
    Waiting,
    Ready(Reply),
    Empty,
}

struct Queue {
    slots: VecDeque<SlotState>,
    head_seq: u64,
    waker: Option<Waker>,
}

/// A connection's ordered reply queue, shared with the completions of its requests.
pub struct Replies {
    q: RefCell<Queue>,
    /// Reply bytes held for this client (ready slots and the output queue).
    held: Cell<usize>,
    /// Most bytes it may hold before it is disconnected.
    limit: usize,
    /// The process-wide cap ([`ClientCtx::max_buffered`]).
    global_limit: usize,
    /// Disconnected for holding too much: replies are dropped as they arrive.
    overflowed: Cell<bool>,
}

impl Replies {
    fn hold(&self, n: usize) {
        self.held.set(self.held.get() + n);
        BUFFERED.fetch_add(n, Relaxed);
    }

    fn release(&self, n: usize) {
        let n = n.min(self.held.get());
        self.held.set(self.held.get() - n);
        BUFFERED.fetch_sub(n, Relaxed);
    }

    /// Drops everything held: the client is gone or being disconnected.
    fn release_all(&self) {
        self.release(self.held.get());
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// A place in a client's reply queue; filling it is how a reply reaches the client.
pub struct Slot {
    conn: Rc<Replies>,
    seq: u64,
    quiet: Quiet,
}

impl Slot {
    pub fn fill(self, reply: Reply) {
        let hidden = match &reply {
            Reply::Data(_) | Reply::Chunks(_) => self.quiet.hides(reply.head()),
            Reply::Error(_) => self.quiet == Quiet::All,
        };
        let conn = &self.conn;
        if conn.overflowed.get() {
            return; // disconnected: nobody will read it
        }
        let len = if hidden { 0 } else { reply_len(&reply) };
        let held = conn.held.get() + len;
        if held > conn.limit
            || (held > FAIR_SHARE && BUFFERED.load(Relaxed) + len > conn.global_limit)
        {
            conn.overflowed.set(true);
            let mut q = conn.q.borrow_mut();
            for s in q.slots.iter_mut() {
                *s = SlotState::Empty;
            }
            if let Some(w) = q.waker.take() {
                w.wake();
            }
            return;
        }
        conn.hold(len);
        let mut q = self.conn.q.borrow_mut();
        let idx = (self.seq - q.head_seq) as usize;
        q.slots[idx] = if hidden {
            SlotState::Empty
        } else {
            SlotState::Ready(reply)
        };
        if idx == 0 {
            if let Some(w) = q.waker.take() {
                w.wake();
            }
        }
    }
}

impl Replies {
    fn new(limit: usize, global_limit: usize) -> Rc<Replies> {
        Rc::new(Replies {
            q: RefCell::new(Queue {
                slots: VecDeque::new(),
                head_seq: 0,
                waker: None,
            }),
            held: Cell::new(0),
            limit,
            global_limit,
            overflowed: Cell::new(false),
        })
    }

    fn reserve(self: &Rc<Self>, quiet: Quiet) -> Slot {
        let mut q = self.q.borrow_mut();
        let seq = q.head_seq + q.slots.len() as u64;
        q.slots.push_back(SlotState::Waiting);
        Slot {
            conn: self.clone(),
            seq,
            quiet,
        }
    }
}

struct Conn {
    replies: Rc<Replies>,
    rbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Bytes of a refused value still to be discarded as they arrive.
    drain: usize,
    eof: bool,
    /// Stop reading; close once the replies before this point are written.
    closing: bool,
}

impl Conn {
    fn push_out(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.replies.hold(b.len());
            self.out_bytes += b.len();
            self.out.push_back(b);
        }
    }

    /// A reply the router makes itself: straight to the output if nothing is pending
    /// ahead of it, else in its place in the queue.
    fn local(&mut self, b: Bytes) {
        let mut q = self.replies.q.borrow_mut();
        if q.slots.is_empty() {
            drop(q);
            self.push_out(b);
        } else {
            self.replies.hold(b.len());
            q.slots.push_back(SlotState::Ready(Reply::Data(b)));
        }
    }

    fn outstanding(&self) -> usize {
        self.replies.q.borrow().slots.len()
    }

    /// Parses and dispatches what the read buffer holds, as far as limits allow.
    fn dispatch(&mut self, ctx: &ClientCtx) -> bool {
        let mut progress = false;
        while !self.closing
            && self.out_bytes < ctx.max_output
            && self.outstanding() < ctx.max_pending
        {
            if self.drain > 0 {
                let n = self.drain.min(self.rbuf.len());
                self.rbuf.advance(n);
                self.drain -= n;
                if self.drain > 0 {
                    break;
                }
            }
            if self.rbuf.is_empty() {
                break;
            }
            match protocol::parse(&self.rbuf, &ctx.limits) {
                Step::Incomplete => break,
                Step::Close => {
                    ctx.stats.client_errors.add(1);
                    self.closing = true;
                    self.rbuf.clear();
                }
                Step::Swallow {
                    len,
                    drain,
                    reply,
                    delete,
                } => {
                    ctx.stats.client_errors.add(1);
                    if let Some(key) = delete {
                        // Routed now, so it reaches the key's server before anything this
                        // client sends next; its reply is memcached's business, not the
                        // client's.
                        ctx.route
                            .route(crate::route::wire::delete(&key), Completion::then(|_| {}));
                    }
                    self.rbuf.advance(len);
                    self.drain = drain;
                    self.local(Bytes::from_static(reply));
                }
                Step::Frame { len, raw } => {
                    ctx.stats.ops[raw.cmd().index()].add(1);
                    let frame = self.rbuf.split_to(len).freeze();
                    match raw.into_parsed(&frame) {
                        Parsed::Route(req, quiet) => {
                            let slot = self.replies.reserve(quiet);
                            ctx.route.route(req, Completion::Client(slot));
                        }
                        Parsed::Reply(r) => {
                            if r.starts_with(b"CLIENT_ERROR") || r.starts_with(b"ERROR") {
                                ctx.stats.client_errors.add(1);
                            }
                            self.local(Bytes::from_static(r));
                        }
                        Parsed::Stats(args) => {
                            self.local(Bytes::from(ctx.shared.render(&args)));
                        }
                        Parsed::Verbosity => self.local(Bytes::from_static(b"OK\r\n")),
                        Parsed::Mn => self.local(Bytes::from_static(b"MN\r\n")),
                        Parsed::Quit => {
                            self.closing = true;
                            self.rbuf.clear();
                        }
                    }
                }
            }
            progress = true;
        }
        progress
    }

    /// Moves replies that are ready, in order, to the output queue.
    fn collect(&mut self) {
        let mut q = self.replies.q.borrow_mut();
        while let Some(SlotState::Ready(_) | SlotState::Empty) = q.slots.front() {
            let slot = q.slots.pop_front().expect("front exists");
            q.head_seq += 1;
            // Already counted as held when the slot was filled.
            if let SlotState::Ready(reply) = slot {
                match reply {
                    Reply::Data(b) | Reply::Error(b) => {
                        if !b.is_empty() {
                            self.out_bytes += b.len();
                            self.out.push_back(b);
                        }
                    }
                    Reply::Chunks(chunks) => {
                        for b in chunks {
                            self.out_bytes += b.len();
                            self.out.push_back(b);
                        }
                    }
                }
            }
        }
    }
}

/// Serves one client until it disconnects, quits or breaks the protocol.
pub async fn serve(stream: TcpStream, ctx: Rc<ClientCtx>) {
    let _ = stream.set_nodelay(true);
    let mut c = Conn {
        replies: Replies::new(ctx.max_output.saturating_mul(2), ctx.max_buffered),
        rbuf: BytesMut::with_capacity(16 * 1024),
        out: VecDeque::new(),
        out_bytes: 0,
        drain: 0,
        eof: false,
        closing: false,
    };
    let stats = ctx.stats.clone();
    let _ = poll_fn(|cx| -> Poll<io::Result<()>> {
        loop {
            if c.replies.overflowed.get() {
                stats.output_overflows.add(1);
                if let Some(suppressed) = OVERFLOW_LOG.tick() {
                    tracing::warn!(
                        limit = c.replies.limit,
                        suppressed_since_last = suppressed,
                        "client disconnected: it left more reply bytes unread than \
                         max_client_output x 2, or held over 1 MiB while the process held \
                         max_buffered_output (counted in \
                         squeal_router_clients_closed_total{{reason=\"output_overflow\"}}); \
                         raise [limits] if such clients are legitimate"
                    );
                }
                return Poll::Ready(Ok(()));
            }
            let mut progress = c.dispatch(&ctx);
            c.collect();
            // Write what is ready in one go.
            match write_queued(&stream, cx, &mut c.out) {
                Ok(0) => {}
                Ok(w) => {
                    stats.bytes_written.add(w as u64);
                    c.out_bytes -= w;
                    c.replies.release(w);
                    progress = true;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
            let idle = c.outstanding() == 0 && c.out.is_empty();
            if (c.eof || c.closing) && idle {
                return Poll::Ready(Ok(()));
            }
            // Read more only while within limits (backpressure).
            let may_read = !c.eof
                && !c.closing
                && c.out_bytes < ctx.max_output
                && c.outstanding() < ctx.max_pending;
            if may_read {
                match stream.poll_read_ready(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        if c.rbuf.capacity() - c.rbuf.len() < 4096 {
                            c.rbuf.reserve(16 * 1024);
                        }
                        match read_drained(&stream, &mut c.rbuf) {
                            Ok(0) => {
                                c.eof = true;
                                // A request cut off mid-value is dropped, as memcached does.
                                progress = true;
                            }
                            Ok(n) => {
                                stats.bytes_read.add(n as u64);
                                progress = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => progress = true,
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    }
                }
            }
            if !progress {
                let mut q = c.replies.q.borrow_mut();
                // A reply may have become ready while we were writing.
                if matches!(
                    q.slots.front(),
                    Some(SlotState::Ready(_) | SlotState::Empty)
                ) {
                    continue;
                }
                match &q.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => q.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    // Free what the client left behind now, not when the last in-flight reply arrives.
    let held = c.replies.held.get();
    c.out.clear();
    c.replies.overflowed.set(true);
    c.replies.q.borrow_mut().slots.clear();
    c.replies.release_all();
    drop(c);
    if held >= FAIR_SHARE {
        trim_heap();
    }
    stats.closed_connections.add(1);
}

/// Gives freed memory back to the operating system (glibc keeps freed heap memory
/// otherwise, so a burst of large unread replies would stay in the router's RSS).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads once. A read that did not fill the buffer drained the socket, so tokio's
/// readiness is cleared right away (the fake `WouldBlock` inside `try_io`) instead of
/// costing a second `read` syscall that would only say "nothing more". Epoll is
/// edge-triggered: bytes arriving later raise readiness again.
pub(crate) fn read_drained(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
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
pub(crate) fn write_queued(
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
