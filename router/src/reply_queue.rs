//! A client connection's ordered reply queue.
//!
//! Replies may complete in any order (different servers, local answers), but must leave in
//! request order. Each request takes a numbered [`Slot`]; whoever completes it fills the
//! slot and wakes the connection's task only when the oldest slot became ready. The
//! connection (`crate::client`) then moves every ready reply to its output.
//!
//! Memory bound: every reply byte held for a client (ready slots, or its output not yet
//! written) is counted, per client and for the whole process ([`buffered_output`]). A
//! client that holds more than its limit, or more than [`FAIR_SHARE`] while the process
//! holds its global limit, is marked overflowed: its replies are dropped as they arrive and
//! the connection closes it.
//!
//! This sits below the routes: a route completes a request by filling its slot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::Waker;

use bytes::Bytes;

use crate::protocol::reply::Reply;
use crate::protocol::Quiet;

/// Reply bytes held for clients, in the whole process.
static BUFFERED: AtomicUsize = AtomicUsize::new(0);

/// Reply bytes the process holds for clients right now (for metrics and tests).
pub fn buffered_output() -> usize {
    BUFFERED.load(Relaxed)
}

/// What a client over the global cap must hold, at least, to be the one disconnected.
pub const FAIR_SHARE: usize = 1 << 20;

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

/// A connection's ordered reply queue, process with the completions of its requests.
pub struct Replies {
    q: RefCell<Queue>,
    /// Reply bytes held for this client (ready slots and the output queue).
    held: Cell<usize>,
    /// Most bytes it may hold before it is disconnected.
    limit: usize,
    /// The process-wide cap (`[limits] max_buffered_output`).
    global_limit: usize,
    /// Disconnected for holding too much: replies are dropped as they arrive.
    overflowed: Cell<bool>,
}

impl Replies {
    /// Counts `n` more bytes held for this client (its output queue).
    pub fn hold(&self, n: usize) {
        self.held.set(self.held.get() + n);
        BUFFERED.fetch_add(n, Relaxed);
    }

    /// `n` bytes held for this client were written (or dropped).
    pub fn release(&self, n: usize) {
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
    pub fn new(limit: usize, global_limit: usize) -> Rc<Replies> {
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

    pub fn reserve(self: &Rc<Self>, quiet: Quiet) -> Slot {
        let mut q = self.q.borrow_mut();
        let seq = q.head_seq + q.slots.len() as u64;
        q.slots.push_back(SlotState::Waiting);
        Slot {
            conn: self.clone(),
            seq,
            quiet,
        }
    }

    /// Requests whose slot has not been moved to the output yet.
    pub fn outstanding(&self) -> usize {
        self.q.borrow().slots.len()
    }

    /// Most bytes the client may hold before it is disconnected.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reply bytes held for this client now.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// True once the client held too much: the connection must close.
    pub fn overflowed(&self) -> bool {
        self.overflowed.get()
    }

    /// A reply the router makes itself, in its place after the replies pending ahead of
    /// it; with none pending it is handed back to go straight to the output.
    pub fn local(&self, b: Bytes) -> Option<Bytes> {
        let mut q = self.q.borrow_mut();
        if q.slots.is_empty() {
            return Some(b);
        }
        self.hold(b.len());
        q.slots.push_back(SlotState::Ready(Reply::Data(b)));
        None
    }

    /// Moves the replies that are ready, in order, to `out`; returns the bytes moved
    /// (already counted as held when their slots were filled).
    pub fn take_ready(&self, out: &mut VecDeque<Bytes>) -> usize {
        let mut moved = 0;
        let mut q = self.q.borrow_mut();
        while let Some(SlotState::Ready(_) | SlotState::Empty) = q.slots.front() {
            let slot = q.slots.pop_front().expect("front exists");
            q.head_seq += 1;
            if let SlotState::Ready(reply) = slot {
                match reply {
                    Reply::Data(b) | Reply::Error(b) => {
                        if !b.is_empty() {
                            moved += b.len();
                            out.push_back(b);
                        }
                    }
                    Reply::Chunks(chunks) => {
                        for b in chunks {
                            moved += b.len();
                            out.push_back(b);
                        }
                    }
                }
            }
        }
        moved
    }

    /// Registers the connection task's waker, unless a reply became ready meanwhile
    /// (then returns false: the task should go round again).
    pub fn wait(&self, waker: &Waker) -> bool {
        let mut q = self.q.borrow_mut();
        if matches!(
            q.slots.front(),
            Some(SlotState::Ready(_) | SlotState::Empty)
        ) {
            return false;
        }
        match &q.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => q.waker = Some(waker.clone()),
        }
        true
    }

    /// The client is gone: replies still in flight are dropped as they arrive, and what
    /// was held is released now.
    pub fn abandon(&self) {
        self.overflowed.set(true);
        self.q.borrow_mut().slots.clear();
        self.release_all();
    }
}
