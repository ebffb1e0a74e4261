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

pub mod all_async;
pub mod all_initial;
pub mod all_sync;
pub mod failover;
pub mod hash;
pub mod joiner;
pub mod master_slave_l1;
pub mod miss_failover;
pub mod operation;
pub mod pool;
pub mod prefix;
pub mod random;
pub mod registry;
pub mod spec;
pub mod warmup;
pub mod wire;

#[cfg(test)]
mod fake;

use std::rc::Rc;

use bytes::Bytes;

use crate::client::Slot;
use crate::health::Watch;
use crate::protocol::{reply::value_blocks, MultiGetRequest, Request};
use joiner::{Fold, Joiner, Part};

pub use pool::PoolRoute;

/// Something that serves requests: a pool, or a tree of routes over pools.
pub trait Route {
    /// Starts `req`. `done` must be completed exactly once.
    fn route(&self, req: Request, done: Completion);
}

/// A route as composite routes hold their children (and capture them in completions).
pub type RouteRef = Rc<dyn Route>;

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

    /// The first bytes of the reply (its status line starts here).
    pub fn head(&self) -> &[u8] {
        match self {
            Reply::Data(b) | Reply::Error(b) => b,
            Reply::Chunks(c) => c.first().map_or(&b""[..], |b| &b[..]),
        }
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
    /// One part of a request sent as several (a share of a split multi-get, one server's
    /// `flush_all` or `stats`, one child of a fan-out), joined with the others.
    Part(Rc<dyn Part>, usize),
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
            Completion::Part(join, part) => join.part_done(part, reply),
            Completion::Then(f) => f(reply),
            Completion::Checked(slot, watch) => {
                watch.observe(&reply);
                slot.fill(reply)
            }
            Completion::Background(stats) => {
                if reply.is_error() || wire::badness(&reply) >= 2 {
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
    // One part per child, in order of first appearance.
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
    let shares: Vec<Vec<Bytes>> = parts
        .iter()
        .map(|p| p.iter().map(|&i| req.keys[i as usize].clone()).collect())
        .collect();
    let merge = Joiner::new(order.len(), MergeGet::new(req.keys, parts), done);
    for (part, (child, keys)) in order.into_iter().zip(shares).enumerate() {
        send(
            child,
            Request::MultiGet(head.with_keys(keys)),
            merge.part(part),
        );
    }
}

/// Splits a multi-get into one-key gets, each sent to `send`, merged back in order. For
/// routes whose logic is per key (miss-failover, warm-up, master-slave-l1, failover).
pub fn per_key(req: MultiGetRequest, mut send: impl FnMut(Request, Completion), done: Completion) {
    let parts: Vec<Vec<u32>> = (0..req.keys.len() as u32).map(|i| vec![i]).collect();
    let head = req.with_keys(Vec::new());
    let keys = req.keys.clone();
    let merge = Joiner::new(keys.len(), MergeGet::new(req.keys, parts), done);
    for (part, key) in keys.into_iter().enumerate() {
        send(Request::Keyed(head.single(key)), merge.part(part));
    }
}

/// A multi-get split across servers, merged back in the order the client asked.
pub struct MergeGet {
    keys: Vec<Bytes>,
    /// Positions in `keys` that each part (server) was asked for, in order.
    parts: Vec<Vec<u32>>,
    found: Vec<Option<Bytes>>,
}

impl MergeGet {
    pub fn new(keys: Vec<Bytes>, parts: Vec<Vec<u32>>) -> MergeGet {
        MergeGet {
            found: vec![None; keys.len()],
            keys,
            parts,
        }
    }
}

impl Fold for MergeGet {
    fn add(&mut self, part: usize, reply: Reply) -> Option<Reply> {
        // A share answered by a composite route may come in pieces.
        let reply = match reply {
            Reply::Chunks(c) => Reply::Data(Bytes::from(c.concat())),
            other => other,
        };
        // A failed server's keys are misses: the rest of the multi-get still answers.
        if let Reply::Data(data) = reply {
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
                self.found[wanted[cursor] as usize] = Some(data.slice(block));
                cursor += 1;
            }
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        let mut chunks: Vec<Bytes> = std::mem::take(&mut self.found)
            .into_iter()
            .flatten()
            .collect();
        chunks.push(Bytes::from_static(b"END\r\n"));
        Some(Reply::Chunks(chunks))
    }
}

/// Sends `req` to every route of `to` (a `flush_all`): see [`Gather`].
pub fn broadcast<'r>(
    req: &Request,
    to: impl ExactSizeIterator<Item = &'r RouteRef>,
    done: Completion,
) {
    let gather = Joiner::new(to.len(), Gather::default(), done);
    for (i, r) in to.enumerate() {
        r.route(req.clone(), gather.part(i));
    }
}

/// A request sent to every server: answers `OK` when all did, else the first other reply.
#[derive(Default)]
pub struct Gather {
    worst: Option<Reply>,
}

impl Fold for Gather {
    fn add(&mut self, _part: usize, reply: Reply) -> Option<Reply> {
        let ok = matches!(&reply, Reply::Data(d) if &d[..] == b"OK\r\n");
        let keep_new = match &self.worst {
            None => true,
            Some(Reply::Data(d)) if &d[..] == b"OK\r\n" => !ok,
            Some(_) => false,
        };
        if keep_new {
            self.worst = Some(reply);
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        self.worst.take()
    }
}

/// `stats settings|items|slabs|sizes|conns|reset` asked of every server of a pool, merged
/// into the one reply a client of a single memcached expects: numeric values summed
/// (item and slab counts, memory, evictions...), except values that describe one server
/// and do not add up (sizes, ages, limits, settings: the first server's value is kept, or
/// the largest for ages). A server that failed makes the whole reply its error. `reset`
/// answers `RESET` once every server did.
#[derive(Default)]
pub struct MergeStats {
    /// Stat names in first-seen order, with their merged value.
    lines: Vec<(String, String)>,
    failed: Option<Reply>,
    other: Option<Reply>,
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

impl Fold for MergeStats {
    fn add(&mut self, _part: usize, reply: Reply) -> Option<Reply> {
        let bytes = wire::bytes_of(&reply).into_owned();
        if reply.is_error() || bytes.starts_with(b"SERVER_ERROR") || bytes.starts_with(b"ERROR") {
            self.failed.get_or_insert(reply);
        } else if !bytes.starts_with(b"STAT ") {
            // `RESET`, or an empty `END`.
            self.other.get_or_insert(reply);
        } else {
            for line in bytes.split(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(line);
                let Some(rest) = line.trim_end_matches('\r').strip_prefix("STAT ") else {
                    continue;
                };
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                match self.lines.iter_mut().find(|(n, _)| n == name) {
                    None => self.lines.push((name.to_string(), value.to_string())),
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
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        if let Some(f) = self.failed.take() {
            return Some(f);
        }
        let lines = std::mem::take(&mut self.lines);
        if lines.is_empty() {
            if let Some(o) = self.other.take() {
                return Some(o);
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
        Some(Reply::Data(Bytes::from(out)))
    }
}

/// Answers every request with the same router error (`SERVER_ERROR <reason>`): a pool the
/// worker could not build.
pub struct ErrorRoute(pub &'static str);

impl Route for ErrorRoute {
    fn route(&self, _req: Request, done: Completion) {
        done.complete(Reply::error(self.0))
    }
}
