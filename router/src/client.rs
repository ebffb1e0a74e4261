//! One client connection: read requests, hand them to the route, write replies in order.
//!
//! Each request takes a [`Slot`](crate::reply_queue::Slot) in the connection's ordered
//! reply queue ([`crate::reply_queue`]); the task writes every reply that is ready, in
//! request order, in one `writev`.
//!
//! Backpressure: the task stops reading while `max_pending_per_client` requests are
//! outstanding or `max_client_output` bytes wait to be written, so a slow or stuck client costs bounded memory
//! and never stalls anyone else (its replies stay in its own queue). Requests already in
//! flight when reading stopped still deliver; a client that lets more than
//! `2 × max_client_output` pile up, or that holds more than its share when the process
//! holds `max_buffered_output` in all, is disconnected and its replies are dropped at once
//! (counted as `output_overflows`). So one client costs at most `2 × max_client_output`
//! plus one reply.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};

use crate::config::Limits;
use crate::plan::Process;
use crate::protocol::{self, Parsed, Step};
use crate::reply_queue::{Replies, FAIR_SHARE};
use crate::route::{Completion, Route};
use crate::socket::Transport;
use crate::stats::WorkerStats;

/// What every connection of a worker shares.
pub struct ClientCtx {
    pub route: Rc<dyn Route>,
    /// Which root route of the plan serves this client's listener (`stats route` shows it).
    pub root: usize,
    pub stats: Arc<WorkerStats>,
    pub process: Arc<Process>,
    /// `[limits]`: what the parser accepts, and how much a client may leave unread.
    pub limits: Limits,
}

/// Disconnections for unread output, logged at most once a second (process-wide).
static OVERFLOW_LOG: crate::lograte::Every =
    crate::lograte::Every::new(std::time::Duration::from_secs(1));

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
        if let Some(b) = self.replies.local(b) {
            self.push_out(b);
        }
    }

    fn outstanding(&self) -> usize {
        self.replies.outstanding()
    }

    /// Parses and dispatches what the read buffer holds, as far as limits allow.
    fn dispatch(&mut self, ctx: &ClientCtx) -> bool {
        let mut progress = false;
        while !self.closing
            && self.out_bytes < ctx.limits.max_client_output
            && self.outstanding() < ctx.limits.max_pending_per_client
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
            match protocol::parse(&self.rbuf, &ctx.limits.parse) {
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
                        ctx.route.route(
                            crate::protocol::item_codec::delete(&key),
                            Completion::then(|_| {}),
                        );
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
                            self.local(Bytes::from(crate::admin::stats::render(
                                &ctx.process,
                                ctx.root,
                                &args,
                            )));
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
        self.out_bytes += self.replies.take_ready(&mut self.out);
    }
}

/// Serves one client until it disconnects, quits or breaks the protocol.
pub async fn serve(mut stream: Transport, ctx: Rc<ClientCtx>) {
    stream.set_nodelay();
    let mut c = Conn {
        replies: Replies::new(
            ctx.limits.max_client_output.saturating_mul(2),
            ctx.limits.max_buffered_output,
        ),
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
            if c.replies.overflowed() {
                stats.output_overflows.add(1);
                if let Some(suppressed) = OVERFLOW_LOG.tick() {
                    tracing::warn!(
                        limit = c.replies.limit(),
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
            match stream.poll_write_queued(cx, &mut c.out) {
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
                && c.out_bytes < ctx.limits.max_client_output
                && c.outstanding() < ctx.limits.max_pending_per_client;
            if may_read {
                match stream.poll_read_into(cx, &mut c.rbuf, 4096, 16 * 1024) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(0)) => {
                        c.eof = true;
                        // A request cut off mid-value is dropped, as memcached does.
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        stats.bytes_read.add(n as u64);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            if !progress {
                // A reply may have become ready while we were writing.
                if !c.replies.wait(cx.waker()) {
                    continue;
                }
                return Poll::Pending;
            }
        }
    })
    .await;
    // TLS: what rustls still holds, and its close_notify (plain TCP: nothing to do).
    stream.close(std::time::Duration::from_secs(1)).await;
    // Free what the client left behind now, not when the last in-flight reply arrives.
    let held = c.replies.held();
    c.out.clear();
    c.replies.abandon();
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
