//! A pool: servers with weights, a hash function and a distribution. The pool route hashes
//! each key to a server and hands the request to that server's backend connection.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::hash::{ketama::Continuum, HashFn};
use super::{Completion, Gather, MergeGet, MergeStats, Reply, Route};
use crate::backend::health::Watch;
use crate::backend::BackendConn;
use crate::protocol::{KeyedRequest, MultiGetRequest, Request};
use crate::stats::WorkerStats;

/// How keys spread over servers (twemproxy's `distribution:`).
#[derive(Debug, Clone)]
pub enum Distribution {
    Ketama(Continuum),
    /// `hash % n` over a list where each server appears `weight` times.
    Modula(Vec<u32>),
    /// mcrouter's `Ch3` (`furc_hash` over the number of servers; weights ignored).
    Ch3(u32),
    /// A random entry of the same weighted list: for replicated, read-mostly data.
    Random(Vec<u32>),
}

/// The placement of a pool, process read-only by all workers.
#[derive(Debug, Clone)]
pub struct Placement {
    pub hash: HashFn,
    pub dist: Distribution,
    /// twemproxy's `hash_tag` (see [`crate::config::Pool::hash_tag`]).
    pub hash_tag: Option<[u8; 2]>,
}

impl Placement {
    pub fn new(hash: HashFn, kind: &str, servers: &[(String, u32)]) -> Placement {
        let weighted = || {
            servers
                .iter()
                .enumerate()
                .flat_map(|(i, s)| std::iter::repeat_n(i as u32, s.1 as usize))
                .collect::<Vec<_>>()
        };
        let dist = match kind {
            "modula" => Distribution::Modula(weighted()),
            "random" => Distribution::Random(weighted()),
            "ch3" => Distribution::Ch3(servers.len() as u32),
            "libmemcached_ketama" => Distribution::Ketama(Continuum::libmemcached(
                &servers.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
                hash,
            )),
            _ => Distribution::Ketama(Continuum::new(servers)),
        };
        Placement {
            hash,
            dist,
            hash_tag: None,
        }
    }

    /// The placement a configured pool describes (client traffic and the invalidation
    /// fan-out must agree on it). libmemcached's non-weighted ketama names points by
    /// `host:port` as written; twemproxy's ketama by its own rule (`ketama_name`).
    pub fn of_pool(p: &crate::config::Pool) -> Placement {
        let names: Vec<(String, u32)> = p
            .servers
            .iter()
            .map(|s| {
                let name = if p.distribution == "libmemcached_ketama" {
                    s.label.clone()
                } else {
                    s.ketama_name.clone()
                };
                (name, s.weight)
            })
            .collect();
        Placement::new(p.hash, &p.distribution, &names).with_hash_tag(p.hash_tag)
    }

    /// The same placement, hashing only the tagged part of keys (twemproxy's `hash_tag`).
    pub fn with_hash_tag(mut self, tag: Option<[u8; 2]>) -> Placement {
        self.hash_tag = tag;
        self
    }

    /// What is hashed of `key`: as twemproxy, the bytes between the first `tag[0]` and the
    /// next `tag[1]` after it, if there are any; else the whole key.
    pub fn hashed_part<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let Some([open, close]) = self.hash_tag else {
            return key;
        };
        let Some(start) = memchr::memchr(open, key) else {
            return key;
        };
        match memchr::memchr(close, &key[start + 1..]) {
            Some(len) if len > 0 => &key[start + 1..start + 1 + len],
            _ => key,
        }
    }

    /// Index of the server that holds `key`.
    pub fn server_for(&self, key: &[u8]) -> usize {
        let key = self.hashed_part(key);
        match &self.dist {
            Distribution::Ketama(c) => c.lookup(self.hash.hash(key)),
            Distribution::Modula(list) => {
                list[(self.hash.hash(key) as usize) % list.len().max(1)] as usize
            }
            Distribution::Random(list) => list[fastrand::usize(..list.len().max(1))] as usize,
            Distribution::Ch3(n) => super::hash::furc::furc_hash(key, *n) as usize,
        }
    }
}

/// A pool as one worker sees it: the process placement and this worker's connections.
pub struct PoolRoute {
    placement: Arc<Placement>,
    /// Per server, this worker's connections to it.
    servers: Vec<Vec<Rc<BackendConn<Completion>>>>,
    /// Per server, its health watch (empty: no health checking).
    health: Vec<Rc<Watch>>,
    stats: Option<Arc<WorkerStats>>,
}

impl PoolRoute {
    pub fn new(
        placement: Arc<Placement>,
        servers: Vec<Vec<Rc<BackendConn<Completion>>>>,
    ) -> PoolRoute {
        PoolRoute {
            placement,
            servers,
            health: Vec::new(),
            stats: None,
        }
    }

    /// With health checking: a server marked down (TKO) fails at once.
    pub fn with_health(mut self, health: Vec<Rc<Watch>>, stats: Arc<WorkerStats>) -> PoolRoute {
        if health.len() == self.servers.len() {
            self.health = health;
            self.stats = Some(stats);
        }
        self
    }

    /// The completion to use for a request to `server`, or `None` after failing it fast.
    #[inline]
    fn checked(&self, server: usize, done: Completion) -> Option<Completion> {
        let Some(watch) = self.health.get(server) else {
            return Some(done);
        };
        if watch.is_down() {
            if let Some(s) = &self.stats {
                s.tko_fast_fails.add(1);
                s.backend_errors.add(1);
            }
            done.complete(Reply::error("server marked down (TKO)"));
            return None;
        }
        Some(done.watched(watch))
    }

    /// The connection for a key on a server. One key always uses the same connection, so
    /// a client's `set k` then `get k` can never overtake each other.
    fn conn(&self, server: usize, key: &[u8]) -> &BackendConn<Completion> {
        let conns = &self.servers[server];
        if conns.len() == 1 {
            return &conns[0];
        }
        let h = HashFn::Fnv1a32.hash(key) as usize;
        &conns[h % conns.len()]
    }

    fn keyed(&self, req: KeyedRequest, done: Completion) {
        let server = self.placement.server_for(&req.key);
        let Some(done) = self.checked(server, done) else {
            return;
        };
        let key = req.key.clone();
        self.conn(server, &key).send(Request::Keyed(req), done);
    }

    fn multi_get(&self, req: MultiGetRequest, done: Completion) {
        let targets: Vec<usize> = req
            .keys
            .iter()
            .map(|k| self.placement.server_for(k))
            .collect();
        let first = targets[0];
        if targets.iter().all(|&t| t == first) {
            let Some(done) = self.checked(first, done) else {
                return;
            };
            let key = req.keys[0].clone();
            self.conn(first, &key).send(Request::MultiGet(req), done);
            return;
        }
        // One part per server, in order of first appearance.
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
        for (part, &server) in order.iter().enumerate() {
            let keys: Vec<Bytes> = merge
                .part_keys(part)
                .iter()
                .map(|&p| merge.keys()[p as usize].clone())
                .collect();
            let first_key = keys[0].clone();
            let Some(done) = self.checked(server, Completion::Part(merge.clone(), part)) else {
                continue;
            };
            self.conn(server, &first_key)
                .send(Request::MultiGet(head.with_keys(keys)), done);
        }
    }
}

impl Route for PoolRoute {
    fn route(&self, req: Request, done: Completion) {
        if self.servers.is_empty() {
            return done.complete(Reply::error("no servers"));
        }
        match req {
            Request::Keyed(k) => self.keyed(k, done),
            Request::MultiGet(m) => self.multi_get(m, done),
            Request::FlushAll { .. } => {
                let gather = Gather::new(self.servers.len(), done);
                for conns in &self.servers {
                    conns[0].send(req.clone(), Completion::Gather(gather.clone()));
                }
            }
            Request::Version => self.servers[0][0].send(req, done),
            // Every server's view, merged into one (see `MergeStats`).
            Request::Stats { .. } => {
                let merge = MergeStats::new(self.servers.len(), done);
                for conns in &self.servers {
                    conns[0].send(req.clone(), Completion::Stats(merge.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tag_hashes_the_tagged_part_as_twemproxy_does() {
        let p = Placement::new(HashFn::Md5, "ketama", &[("a".into(), 1), ("b".into(), 1)])
            .with_hash_tag(Some(*b"{}"));
        assert_eq!(p.hashed_part(b"user:{42}:name"), b"42");
        assert_eq!(p.hashed_part(b"{42}"), b"42");
        assert_eq!(
            p.hashed_part(b"a{}b"),
            b"a{}b",
            "an empty tag hashes the whole key"
        );
        assert_eq!(p.hashed_part(b"a{b"), b"a{b", "no closing character");
        assert_eq!(
            p.hashed_part(b"a}b{c}"),
            b"c",
            "the close must follow the open"
        );
        assert_eq!(p.server_for(b"x:{7}:1"), p.server_for(b"y:{7}:2"));
        let untagged = Placement::new(HashFn::Md5, "ketama", &[("a".into(), 1)]);
        assert_eq!(untagged.hashed_part(b"user:{42}"), b"user:{42}");
    }
}
