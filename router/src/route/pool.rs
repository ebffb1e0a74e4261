//! The pool route: hashes each key to a server (the pool's [`Placement`]) and hands the
//! request to that server's backend connection.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{Completion, Gather, MergeGet, MergeStats, Reply, Route};
use crate::backend::health::Watch;
use crate::backend::BackendConn;
use crate::placement::hash::HashFn;
use crate::placement::Placement;
use crate::protocol::{KeyedRequest, MultiGetRequest, Request};
use crate::stats::WorkerStats;

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
