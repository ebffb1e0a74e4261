//! The pool route: hashes each key to a server (the pool's [`Placement`]) and hands the
//! request to that server's backend connection; a multi-get is split by server and merged
//! back; `flush_all` and `stats` go to every server (`stats` merged, see
//! [`super::joiner::MergeStats`]); `version` to the first.
//!
//! In a route tree, a pool is its name, or `{ type = "pool", pool = "NAME" }`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use super::joiner::{split_multi_get, Gather, Joiner, MergeStats};
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, ErrorRoute, Reply, Route, RouteRef};
use crate::backend::health::Watch;
use crate::backend::BackendConn;
use crate::config::ConfigError;
use crate::placement::hash::HashFn;
use crate::placement::{Distribution, Placement};
use crate::protocol::{Cmd, KeyedRequest, MultiGetRequest, Request};
use crate::stats::WorkerStats;

/// A pool as one worker sees it: the process placement and this worker's connections.
pub struct PoolRoute {
    placement: Arc<Placement>,
    /// Per server, this worker's connections to it.
    servers: Vec<Vec<Rc<BackendConn<Completion>>>>,
    /// Per server, its health watch (empty: no health checking).
    health: Vec<Rc<Watch>>,
    stats: Option<Arc<WorkerStats>>,
    /// Ejecting pool (twemproxy's `auto_eject_hosts`): the placement over the servers
    /// still in, for the set of servers out it was built for.
    ejected: Option<RefCell<Ejected>>,
}

/// Which servers were out when [`PoolRoute::ejected`] was built, and the placement over
/// the rest with each index's server in the whole pool.
type Ejected = (Vec<bool>, Option<(Placement, Vec<usize>)>);

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
            ejected: None,
        }
    }

    /// Servers marked down leave the pool (their keys hash over the rest) instead of
    /// failing fast; needs [`PoolRoute::with_health`].
    pub fn ejecting(mut self) -> PoolRoute {
        if self.placement.ejecting.is_some() {
            self.ejected = Some(RefCell::new((Vec::new(), None)));
        }
        self
    }

    /// The server for `key`: the placement's, or in an ejecting pool whose server for it
    /// is out, the one it hashes to over the servers still in.
    #[inline]
    fn server_for(&self, key: &[u8]) -> usize {
        let server = self.placement.server_for(key);
        match &self.ejected {
            Some(cache) if self.health.get(server).is_some_and(|w| w.is_down()) => {
                let mut c = cache.borrow_mut();
                // Rebuilt only when the set of servers out changed.
                if !self
                    .health
                    .iter()
                    .map(|w| w.is_down())
                    .eq(c.0.iter().copied())
                {
                    let out: Vec<bool> = self.health.iter().map(|w| w.is_down()).collect();
                    let without = self.placement.without(&out);
                    *c = (out, without);
                }
                match &c.1 {
                    Some((live, index)) => {
                        if let Some(s) = &self.stats {
                            s.eject_rehashes.add(1);
                        }
                        index[live.server_for(key)]
                    }
                    None => server,
                }
            }
            _ => server,
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
        let server = self.server_for(&req.key);
        let Some(done) = self.checked(server, done) else {
            return;
        };
        let key = req.key.clone();
        self.conn(server, &key).send(Request::Keyed(req), done);
    }

    fn multi_get(&self, req: MultiGetRequest, done: Completion) {
        split_multi_get(
            req,
            |k| self.server_for(k),
            |server, share, done| {
                let Some(done) = self.checked(server, done) else {
                    return;
                };
                let Request::MultiGet(m) = &share else {
                    unreachable!("a multi-get share")
                };
                let first_key = m.keys[0].clone();
                self.conn(server, &first_key).send(share, done);
            },
            done,
        )
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
                let gather = Joiner::new(self.servers.len(), Gather::default(), done);
                for (i, conns) in self.servers.iter().enumerate() {
                    conns[0].send(req.clone(), gather.part(i));
                }
            }
            Request::Version => self.servers[0][0].send(req, done),
            // Every server's view, merged into one (see `MergeStats`).
            Request::Stats { .. } => {
                let merge = Joiner::new(self.servers.len(), MergeStats::default(), done);
                for (i, conns) in self.servers.iter().enumerate() {
                    conns[0].send(req.clone(), merge.part(i));
                }
            }
        }
    }
}

pub const TYPE: RouteType = RouteType {
    name: "pool",
    keys: &["pool"],
    parse,
};

/// A pool of the config, by index into `Config::pools`.
#[derive(Debug)]
pub struct PoolSpec(pub usize);

/// The spec of pool `index` (what a pool's name in a route tree resolves to).
pub fn spec(index: usize) -> RouteSpec {
    Box::new(PoolSpec(index))
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    let Some((name, at)) = p.string(t, "pool")? else {
        return Err(p.needs(t, "pool"));
    };
    match p.pools().iter().position(|n| n == name) {
        Some(i) => Ok(spec(i)),
        None => Err(p.err(
            at,
            format!(
                "pool {name:?} is not defined (pools: {})",
                p.pools().join(", ")
            ),
        )),
    }
}

impl Spec for PoolSpec {
    fn build(&self, b: &Build) -> RouteRef {
        match b.pools.get(self.0) {
            Some(Some(p)) => p.clone(),
            _ => Rc::new(ErrorRoute("pool unavailable")),
        }
    }

    /// `pool:NAME@server` and that server; every server for `flush_all` or a random
    /// distribution.
    fn describe(&self, d: &mut Describe) {
        let plan = d.placed;
        let Some(pool) = plan.pools.get(self.0) else {
            return;
        };
        let placement = &plan.placements[self.0];
        let reached: Vec<usize> = match &placement.dist {
            Distribution::Random(_) => (0..pool.servers.len()).collect(),
            _ if d.cmd == Cmd::FlushAll => (0..pool.servers.len()).collect(),
            _ => vec![placement.server_for(d.key)],
        };
        d.write(format_args!("pool:{}", pool.name));
        if let [one] = reached[..] {
            d.write(format_args!("@{}", pool.servers[one].label));
        }
        for s in reached {
            let state = plan.servers[self.0]
                .get(s)
                .map_or("unknown", |st| st.state());
            d.server(format!(
                "server {} {} {state}",
                pool.name, pool.servers[s].label
            ));
        }
    }

    fn children(&self) -> Vec<&RouteSpec> {
        Vec::new()
    }

    fn pools(&self, out: &mut Vec<usize>) {
        if !out.contains(&self.0) {
            out.push(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{ask, stats};
    use super::*;
    use crate::stats::ServerStats;
    use std::sync::atomic::Ordering::Relaxed;

    /// A pool route over `n` servers whose connections refuse every request at once
    /// (a queue of 0: no socket is opened), so each server's error count says what it got.
    fn refusing_pool(placement: Placement, n: usize) -> (PoolRoute, Vec<Arc<ServerStats>>) {
        let worker = stats();
        let servers: Vec<Arc<ServerStats>> = (0..n)
            .map(|i| Arc::new(ServerStats::new("p", &format!("s{i}"))))
            .collect();
        let conns = servers
            .iter()
            .map(|s| vec![BackendConn::new(s.clone(), worker.clone(), 0, None)])
            .collect();
        (PoolRoute::new(Arc::new(placement), conns), servers)
    }

    fn errors(servers: &[Arc<ServerStats>]) -> Vec<u64> {
        servers.iter().map(|s| s.errors.load(Relaxed)).collect()
    }

    fn two() -> Placement {
        Placement::new(HashFn::Md5, "modula", &[("a".into(), 1), ("b".into(), 1)])
    }

    /// Two keys the placement puts on different servers.
    fn split_keys(p: &Placement) -> (String, String) {
        let first = "k0".to_string();
        let other = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| p.server_for(k.as_bytes()) != p.server_for(first.as_bytes()))
            .unwrap();
        (first, other)
    }

    #[test]
    fn a_key_goes_to_the_server_its_hash_picks() {
        let (route, servers) = refusing_pool(two(), 2);
        let (a, b) = split_keys(&two());
        assert_eq!(
            ask(&route, &format!("get {a}\r\n")).unwrap(),
            "SERVER_ERROR backend unavailable\r\n"
        );
        let mut want = vec![0, 0];
        want[two().server_for(a.as_bytes())] = 1;
        assert_eq!(errors(&servers), want);
        ask(&route, &format!("delete {b}\r\n"));
        assert_eq!(errors(&servers), vec![1, 1]);
    }

    #[test]
    fn a_multi_get_asks_each_server_once_and_failed_keys_are_misses() {
        let (route, servers) = refusing_pool(two(), 2);
        let (a, b) = split_keys(&two());
        assert_eq!(
            ask(&route, &format!("get {a} {b} {a}\r\n")).unwrap(),
            "END\r\n"
        );
        assert_eq!(errors(&servers), vec![1, 1], "one share per server");
    }

    #[test]
    fn flush_all_and_stats_reach_every_server() {
        let (route, servers) = refusing_pool(two(), 2);
        assert!(ask(&route, "flush_all\r\n")
            .unwrap()
            .starts_with("SERVER_ERROR"));
        assert_eq!(errors(&servers), vec![1, 1]);
        assert!(ask(&route, "stats slabs\r\n")
            .unwrap()
            .starts_with("SERVER_ERROR"));
        assert_eq!(errors(&servers), vec![2, 2]);
        ask(&route, "version\r\n");
        assert_eq!(errors(&servers), vec![3, 2], "version: the first server");
    }

    #[test]
    fn keys_with_the_same_hash_tag_share_a_server() {
        let tagged = || two().with_hash_tag(Some(*b"{}"));
        let (route, servers) = refusing_pool(tagged(), 2);
        for k in ["user:{7}:name", "mail:{7}", "{7}"] {
            ask(&route, &format!("get {k}\r\n"));
        }
        let mut want = vec![0, 0];
        want[tagged().server_for(b"7")] = 3;
        assert_eq!(errors(&servers), want);
    }

    #[test]
    fn no_servers_and_an_unbuilt_pool_answer_errors() {
        let route = PoolRoute::new(Arc::new(two()), Vec::new());
        assert_eq!(
            ask(&route, "get k\r\n").unwrap(),
            "SERVER_ERROR no servers\r\n"
        );
        let built = spec(3).build(&Build {
            pools: &[None],
            stats: &stats(),
        });
        assert_eq!(
            ask(&*built, "get k\r\n").unwrap(),
            "SERVER_ERROR pool unavailable\r\n"
        );
    }

    #[test]
    fn weights_and_distributions_place_keys() {
        let weighted = Placement::new(HashFn::Md5, "modula", &[("a".into(), 1), ("b".into(), 3)]);
        let on_b = (0..4000)
            .filter(|i| weighted.server_for(format!("key:{i}").as_bytes()) == 1)
            .count();
        assert!(
            (2700..3300).contains(&on_b),
            "{on_b} of 4000 on the weight-3 server"
        );
        let ch3 = Placement::new(
            HashFn::Md5,
            "ch3",
            &[("a".into(), 1), ("b".into(), 1), ("c".into(), 1)],
        );
        let mut seen = [0; 3];
        for i in 0..300 {
            seen[ch3.server_for(format!("key:{i}").as_bytes())] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        let random = Placement::new(HashFn::Md5, "random", &[("a".into(), 1), ("b".into(), 1)]);
        let firsts = (0..200).filter(|_| random.server_for(b"same") == 0).count();
        assert!(
            firsts > 0 && firsts < 200,
            "random spreads one key: {firsts}"
        );
        let ketama = Placement::new(HashFn::Md5, "ketama", &[("a".into(), 1), ("b".into(), 1)]);
        assert_eq!(ketama.server_for(b"stable"), ketama.server_for(b"stable"));
    }
}
