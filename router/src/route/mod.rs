//! Routes: what happens to a parsed request. This is the seam route trees plug into.
//!
//! A [`Route`] takes a [`Request`] and a [`Completion`] and must complete it exactly once,
//! now or later, on the same worker thread. Routes are not `async`: a pool route only
//! appends bytes to a backend connection's queue and returns, so a request costs no task
//! and no channel; the reply arrives through the `Completion` when the backend connection
//! reads it. Composite routes (prefix or operation selectors, fan-out, failover) wrap other
//! routes: they pick one or several children and pass either the same completion or a
//! [`Completion::Then`] that inspects the reply first (e.g. failover on `SERVER_ERROR`).
//!
//! Everything here lives on one worker thread, hence `Rc` and `RefCell`.

pub mod hash;
pub mod pool;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use crate::client::Slot;
use crate::protocol::{reply::value_blocks, Request};

pub use pool::PoolRoute;

/// Something that serves requests: a pool today, a tree of routes later.
pub trait Route {
    /// Starts `req`. `done` must be completed exactly once.
    fn route(&self, req: Request, done: Completion);
}

/// A reply on its way back.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Bytes exactly as the server sent them (one reply).
    Data(Bytes),
    /// A reply assembled from pieces (a multi-get merged from several servers).
    Chunks(Vec<Bytes>),
    /// The router could not get a reply (`SERVER_ERROR ...\r\n`), e.g. the server is down.
    Error(Bytes),
}

impl Reply {
    pub fn error(msg: &str) -> Reply {
        Reply::Error(Bytes::from(format!("SERVER_ERROR {msg}\r\n")))
    }

    /// True for a `SERVER_ERROR` the router made: routes that fail over look at this.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Where a reply goes.
pub enum Completion {
    /// Into the client's ordered reply queue.
    Client(Slot),
    /// One server's share of a split multi-get.
    Part(Rc<MergeGet>, usize),
    /// One of the replies of a broadcast (`flush_all`).
    Gather(Rc<Gather>),
    /// Anything else: composite routes use this to look at a reply before passing it on.
    Then(Box<dyn FnOnce(Reply)>),
}

impl Completion {
    pub fn complete(self, reply: Reply) {
        match self {
            Completion::Client(slot) => slot.fill(reply),
            Completion::Part(merge, part) => merge.part_done(part, reply),
            Completion::Gather(g) => g.done(reply),
            Completion::Then(f) => f(reply),
        }
    }
}

/// A multi-get split across servers, merged back in the order the client asked.
pub struct MergeGet {
    keys: Vec<Bytes>,
    /// Positions in `keys` that each part (server) was asked for, in order.
    parts: Vec<Vec<u32>>,
    found: RefCell<Vec<Option<Bytes>>>,
    left: Cell<usize>,
    done: Cell<Option<Completion>>,
}

impl MergeGet {
    pub fn new(keys: Vec<Bytes>, parts: Vec<Vec<u32>>, done: Completion) -> Rc<MergeGet> {
        Rc::new(MergeGet {
            found: RefCell::new(vec![None; keys.len()]),
            left: Cell::new(parts.len()),
            keys,
            parts,
            done: Cell::new(Some(done)),
        })
    }

    pub fn keys(&self) -> &[Bytes] {
        &self.keys
    }

    pub fn part_keys(&self, part: usize) -> &[u32] {
        &self.parts[part]
    }

    fn part_done(&self, part: usize, reply: Reply) {
        // A failed server's keys are misses: the rest of the multi-get still answers.
        if let Reply::Data(data) = reply {
            let mut found = self.found.borrow_mut();
            let wanted = &self.parts[part];
            let mut cursor = 0;
            for (key, block) in value_blocks(&data) {
                // The server answers hits in the order it was asked; skip the misses.
                while cursor < wanted.len()
                    && self.keys[wanted[cursor] as usize] != data[key.clone()]
                {
                    cursor += 1;
                }
                if cursor == wanted.len() {
                    break;
                }
                found[wanted[cursor] as usize] = Some(data.slice(block));
                cursor += 1;
            }
        }
        let left = self.left.get() - 1;
        self.left.set(left);
        if left == 0 {
            let mut chunks: Vec<Bytes> = self.found.take().into_iter().flatten().collect();
            chunks.push(Bytes::from_static(b"END\r\n"));
            if let Some(done) = self.done.take() {
                done.complete(Reply::Chunks(chunks));
            }
        }
    }
}

/// A request sent to every server; answers `OK` when all did, else the first other reply.
pub struct Gather {
    left: Cell<usize>,
    worst: RefCell<Option<Reply>>,
    done: Cell<Option<Completion>>,
}

impl Gather {
    pub fn new(n: usize, done: Completion) -> Rc<Gather> {
        Rc::new(Gather {
            left: Cell::new(n),
            worst: RefCell::new(None),
            done: Cell::new(Some(done)),
        })
    }

    fn done(&self, reply: Reply) {
        {
            let mut worst = self.worst.borrow_mut();
            let ok = matches!(&reply, Reply::Data(d) if &d[..] == b"OK\r\n");
            let keep_new = match &*worst {
                None => true,
                Some(Reply::Data(d)) if &d[..] == b"OK\r\n" => !ok,
                Some(_) => false,
            };
            if keep_new {
                *worst = Some(reply);
            }
        }
        let left = self.left.get() - 1;
        self.left.set(left);
        if left == 0 {
            if let (Some(done), Some(reply)) = (self.done.take(), self.worst.take()) {
                done.complete(reply);
            }
        }
    }
}
