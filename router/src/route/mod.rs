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

pub mod failover;
pub mod fanout;
pub mod msl1;
pub mod pool;
pub mod select;
pub mod spec;
pub mod tree;
pub mod warmup;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;

use crate::backend::health::Watch;
use crate::protocol::item_codec;
use crate::protocol::{reply::value_blocks, MultiGetRequest, Request};
use crate::reply_queue::Slot;

/// Replies are a protocol type; routes name them often, so they are re-exported here.
pub use crate::protocol::reply::Reply;

/// Something that serves requests: a pool, or a tree of routes over pools.
pub trait Route {
    /// Starts `req`. `done` must be completed exactly once.
    fn route(&self, req: Request, done: Completion);
}

/// A route as composite routes hold their children (and capture them in completions).
pub type RouteRef = Rc<dyn Route>;

/// Where a reply goes.
pub enum Completion {
    /// Into the client's ordered reply queue.
    Client(Slot),
    /// One server's share of a split multi-get.
    Part(Rc<MergeGet>, usize),
    /// One of the replies of a broadcast (`flush_all`).
    Gather(Rc<Gather>),
    /// One server's `stats` reply, merged with the pool's others.
    Stats(Rc<MergeStats>),
    /// Anything else: composite routes use this to look at a reply before passing it on.
    Then(Box<dyn FnOnce(Reply)>),
    /// Into the client's queue, after telling the server's health watch how it went.
    Checked(Slot, Rc<Watch>),
    /// Nowhere: a background send (fan-out, backfill) whose failures are only counted.
    Background(std::sync::Arc<crate::stats::WorkerStats>),
}

impl Completion {
    pub fn complete(self, reply: Reply) {
        match self {
            Completion::Client(slot) => slot.fill(reply),
            Completion::Part(merge, part) => merge.part_done(part, reply),
            Completion::Gather(g) => g.done(reply),
            Completion::Stats(m) => m.done(reply),
            Completion::Then(f) => f(reply),
            Completion::Checked(slot, watch) => {
                watch.observe(&reply);
                slot.fill(reply)
            }
            Completion::Background(stats) => {
                if reply.is_error() || item_codec::badness(&reply) >= 2 {
                    stats.async_failures.add(1);
                }
            }
        }
    }

    /// A completion that runs `f` with the reply.
    pub fn then(f: impl FnOnce(Reply) + 'static) -> Completion {
        Completion::Then(Box::new(f))
    }

    /// This completion, after `watch` has seen the reply.
    pub fn watched(self, watch: &Rc<Watch>) -> Completion {
        match self {
            Completion::Client(slot) => Completion::Checked(slot, watch.clone()),
            // Nothing to report from a background send: still worth counting.
            other => {
                let watch = watch.clone();
                Completion::then(move |r| {
                    watch.observe(&r);
                    other.complete(r)
                })
            }
        }
    }
}

impl crate::backend::connection::Done for Completion {
    #[inline]
    fn done(self, reply: Reply) {
        self.complete(reply)
    }
}

/// Splits a multi-get by `pick(key)` (a child index), sends each share to `send` and
/// merges the replies back in the client's order. One share: the request as it is.
pub fn split_multi_get(
    req: MultiGetRequest,
    pick: impl Fn(&[u8]) -> usize,
    mut send: impl FnMut(usize, Request, Completion),
    done: Completion,
) {
    let targets: Vec<usize> = req.keys.iter().map(|k| pick(k)).collect();
    let first = targets.first().copied().unwrap_or(0);
    if targets.iter().all(|&t| t == first) {
        return send(first, Request::MultiGet(req), done);
    }
    let mut order: Vec<usize> = Vec::new();
    let mut parts: Vec<Vec<u32>> = Vec::new();
    for (pos, &t) in targets.iter().enumerate() {
        match order.iter().position(|&s| s == t) {
            Some(p) => parts[p].push(pos as u32),
            None => {
                order.push(t);
                parts.push(vec![pos as u32]);
            }
        }
    }
    let head = req.with_keys(Vec::new());
    let merge = MergeGet::new(req.keys, parts, done);
    for (part, &child) in order.iter().enumerate() {
        let keys: Vec<Bytes> = merge
            .part_keys(part)
            .iter()
            .map(|&p| merge.keys()[p as usize].clone())
            .collect();
        send(
            child,
            Request::MultiGet(head.with_keys(keys)),
            Completion::Part(merge.clone(), part),
        );
    }
}

/// Splits a multi-get into one-key gets, each sent to `send`, merged back in order. For
/// routes whose logic is per key (miss-failover, warm-up, master-slave-l1, failover).
pub fn per_key(req: MultiGetRequest, mut send: impl FnMut(Request, Completion), done: Completion) {
    let parts: Vec<Vec<u32>> = (0..req.keys.len() as u32).map(|i| vec![i]).collect();
    let head = req.with_keys(Vec::new());
    let merge = MergeGet::new(req.keys, parts, done);
    for part in 0..merge.keys().len() {
        let key = merge.keys()[part].clone();
        send(
            Request::Keyed(head.single(key)),
            Completion::Part(merge.clone(), part),
        );
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
        // A share answered by a composite route may come in pieces.
        let reply = match reply {
            Reply::Chunks(c) => Reply::Data(Bytes::from(c.concat())),
            other => other,
        };
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

/// `stats settings|items|slabs|sizes|conns|reset` asked of every server of a pool, merged
/// into the one reply a client of a single memcached expects: numeric values summed
/// (item and slab counts, memory, evictions...), except values that describe one server
/// and do not add up (sizes, ages, limits, settings: the first server's value is kept, or
/// the largest for ages). A server that failed makes the whole reply its error. `reset`
/// answers `RESET` once every server did.
pub struct MergeStats {
    left: Cell<usize>,
    /// Stat names in first-seen order, with their merged value.
    lines: RefCell<Vec<(String, String)>>,
    failed: RefCell<Option<Reply>>,
    other: RefCell<Option<Reply>>,
    done: Cell<Option<Completion>>,
}

/// Stats whose value is the same kind of thing on every server (not a count to add).
fn kept_not_summed(name: &str) -> bool {
    let field = name.rsplit(':').next().unwrap_or(name);
    matches!(
        field,
        "chunk_size"
            | "chunks_per_page"
            | "age"
            | "age_hot"
            | "age_warm"
            | "evicted_time"
            | "active_slabs"
            | "pid"
            | "uptime"
            | "time"
            | "version"
            | "libevent"
            | "pointer_size"
            | "threads"
            | "maxconns"
            | "tcpport"
            | "udpport"
            | "item_size_max"
            | "slab_chunk_max"
            | "hash_power_level"
    ) || field.starts_with("lru")
}

impl MergeStats {
    pub fn new(n: usize, done: Completion) -> Rc<MergeStats> {
        Rc::new(MergeStats {
            left: Cell::new(n),
            lines: RefCell::new(Vec::new()),
            failed: RefCell::new(None),
            other: RefCell::new(None),
            done: Cell::new(Some(done)),
        })
    }

    fn done(&self, reply: Reply) {
        let bytes = item_codec::bytes_of(&reply).into_owned();
        if reply.is_error() || bytes.starts_with(b"SERVER_ERROR") || bytes.starts_with(b"ERROR") {
            self.failed.borrow_mut().get_or_insert(reply);
        } else if !bytes.starts_with(b"STAT ") {
            // `RESET`, or an empty `END`.
            self.other.borrow_mut().get_or_insert(reply);
        } else {
            let mut lines = self.lines.borrow_mut();
            for line in bytes.split(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let Some(rest) = line.trim_end_matches('\r').strip_prefix("STAT ") else {
                    continue;
                };
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match lines.iter_mut().find(|(n, _)| n == name) {
                    None => lines.push((name.to_string(), value.to_string())),
                    Some((_, v)) => {
                        if let (Ok(a), Ok(b)) = (v.parse::<u64>(), value.parse::<u64>()) {
                            let field = name.rsplit(':').next().unwrap_or(name);
                            *v = if field.starts_with("age") || field == "evicted_time" {
                                a.max(b)
                            } else if kept_not_summed(name) {
                                a
                            } else {
                                a.saturating_add(b)
                            }
                            .to_string();
                        }
                    }
                }
            }
        }
        let left = self.left.get() - 1;
        self.left.set(left);
        if left > 0 {
            return;
        }
        let Some(done) = self.done.take() else { return };
        if let Some(f) = self.failed.take() {
            return done.complete(f);
        }
        let lines = self.lines.take();
        if lines.is_empty() {
            if let Some(o) = self.other.take() {
                return done.complete(o);
            }
        }
        let mut out = String::new();
        for (n, v) in lines {
            out.push_str("STAT ");
            out.push_str(&n);
            out.push(' ');
            out.push_str(&v);
            out.push_str("\r\n");
        }
        out.push_str("END\r\n");
        done.complete(Reply::Data(Bytes::from(out)));
    }
}
