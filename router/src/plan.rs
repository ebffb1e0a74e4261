//! The plan workers run, and the slot it is published in.
//!
//! `main` builds a [`Plan`] at start and the reload builds one from every valid config;
//! [`Process::publish`] hands it to the workers, which switch before their next request.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::{Config, ConfigError};
use crate::placement::Placement;
use crate::protocol::Cmd;
use crate::route::registry;
use crate::route::spec::{Placed, RouteSpec};
use crate::stats::{ServerStats, WorkerStats};
use crate::tls::Material;

/// What workers run: a validated config with its route tree, placements and per-server
/// stats. Built by `main` at start and on every reload, process read-only.
pub struct Plan {
    pub config: Config,
    /// The route trees serving client traffic (`config.routes.roots`, validated): one per
    /// root, `config.listen_routes` says which serves each address.
    pub routes: Vec<RouteSpec>,
    pub placements: Vec<Arc<Placement>>,
    /// Per pool, per server.
    pub servers: Vec<Vec<Arc<ServerStats>>>,
    /// The certificates and keys the config names, as read when this plan was built.
    pub tls: Material,
}

impl Plan {
    /// The plan of `config`; its route tree is validated here (a bad one is refused).
    pub fn new(config: Config) -> Result<Plan, ConfigError> {
        Plan::next(config, None)
    }

    /// What the route tree's `describe` reads: pools, placements and server states.
    pub fn placed(&self) -> Placed<'_> {
        Placed {
            pools: &self.config.pools,
            placements: &self.placements,
            servers: &self.servers,
        }
    }

    /// `stats route <op> <key>` over the tree of root `root` (the one serving the asking
    /// client's address).
    pub fn describe(&self, root: usize, op: &str, key: &[u8]) -> Result<Vec<String>, String> {
        let route = self.routes.get(root).ok_or("no such route")?;
        registry::describe(route, self.placed(), op, key)
    }

    /// A plan for `config` that keeps the stats (and health) of every server `previous`
    /// has in the same pool.
    pub fn next(config: Config, previous: Option<&Plan>) -> Result<Plan, ConfigError> {
        let tls = Material::load(&config)?;
        Plan::with_tls(config, tls, previous)
    }

    /// [`Plan::next`] with TLS material already read (the reload reads it first, to count
    /// a certificate problem apart from other config problems).
    pub fn with_tls(
        config: Config,
        tls: Material,
        previous: Option<&Plan>,
    ) -> Result<Plan, ConfigError> {
        let names: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
        let routes = registry::parse(&config.routes, &names)?;
        let placements = config
            .pools
            .iter()
            .map(|p| Arc::new(p.placement()))
            .collect();
        let old = |pool: &str, addr: &str| {
            previous.and_then(|prev| {
                prev.servers
                    .iter()
                    .flatten()
                    .find(|s| s.pool == pool && s.addr == addr)
                    .cloned()
            })
        };
        let servers: Vec<Vec<Arc<ServerStats>>> = config
            .pools
            .iter()
            .map(|p| {
                p.servers
                    .iter()
                    .map(|s| {
                        old(&p.name, &s.label)
                            .unwrap_or_else(|| Arc::new(ServerStats::new(&p.name, &s.label)))
                    })
                    .collect()
            })
            .collect();
        Ok(Plan {
            config,
            routes,
            placements,
            servers,
            tls,
        })
    }
}

/// What every thread of the process shares: the slot a reload publishes a new [`Plan`] in
/// (workers compare `generation` with theirs between requests), and every worker's
/// counters, which the `stats` command and the metrics exporter sum.
pub struct Process {
    pub started: Instant,
    pub workers: Vec<Arc<WorkerStats>>,
    pub threads: usize,
    plan: RwLock<Arc<Plan>>,
    /// Bumped by every published plan.
    pub generation: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Reloads refused because a certificate or key file did not load (also counted in
    /// `reload_failures`): the running certificates stay.
    pub tls_reload_failures: AtomicU64,
}

impl Process {
    pub fn new(plan: Arc<Plan>) -> Process {
        let threads = plan.config.workers;
        Process {
            started: Instant::now(),
            workers: (0..threads)
                .map(|_| Arc::new(WorkerStats::default()))
                .collect(),
            threads,
            plan: RwLock::new(plan),
            generation: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            tls_reload_failures: AtomicU64::new(0),
        }
    }

    /// The plan workers should be running.
    pub fn plan(&self) -> Arc<Plan> {
        match self.plan.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes a new plan; workers switch to it before their next request.
    pub fn publish(&self, plan: Arc<Plan>) {
        match self.plan.write() {
            Ok(mut p) => *p = plan,
            Err(poisoned) => *poisoned.into_inner() = plan,
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// What TLS ports hand a new connection now (the last plan's `[tls]`).
    pub fn tls_server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.plan().tls.server.clone()
    }

    /// Every server of every pool of the current plan.
    pub fn servers(&self) -> Vec<Arc<ServerStats>> {
        self.plan().servers.iter().flatten().cloned().collect()
    }

    pub fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    pub fn ops(&self, cmd: Cmd) -> u64 {
        self.sum(|w| w.ops[cmd.index()].get())
    }

    pub fn curr_connections(&self) -> u64 {
        self.sum(|w| w.total_connections.get())
            .saturating_sub(self.sum(|w| w.closed_connections.get()))
    }
}

/// The route tree checks and `stats route`, through the plan as `main` builds it.
#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "listen = [\"127.0.0.1:1\"]\n";
    const POOLS: &str =
        "[pools.main]\nservers = [\"127.0.0.1:11211\"]\n[pools.other]\nservers = [\"127.0.0.1:11212\", \"127.0.0.1:11213\"]\n";

    fn plan(tail: &str) -> Result<Plan, String> {
        let text = format!("{HEAD}{tail}{POOLS}");
        let config = Config::parse("router.toml", &text).map_err(|e| e.to_string())?;
        Plan::new(config).map_err(|e| e.to_string())
    }

    fn refused(tail: &str) -> String {
        match plan(tail) {
            Ok(_) => panic!("accepted:\n{tail}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("route = \"nope\"\n", 2, "\"nope\" is not defined as a pool or a route (pools: main, other; routes: none)"),
            ("[route]\ntype = \"prefix\"\ndefault = \"main\"\nprefixes = { \"a:\" = \"missing\" }\n", 5, "\"missing\" is not defined"),
            ("[route]\ntype = \"teleport\"\n", 3, "unknown route type \"teleport\" (one of pool, prefix, operation, all-sync, all-async, all-initial, random, failover, miss-failover, master-slave-l1, warmup)"),
            ("[route]\ntype = \"failover\"\nchildren = [\"main\"]\nholdoff_secs = 2\n", 5, "`holdoff_secs` does not apply to a \"failover\" route (it takes: children, gutter_ttl)"),
            ("route = \"x\"\n[routes.x]\ntype = \"all-sync\"\nchildren = [\"y\"]\n[routes.y]\ntype = \"random\"\nchildren = [\"x\"]\n", 8, "route \"x\" refers to itself (x -> y -> x)"),
            ("[route]\ntype = \"failover\"\nchildren = [\"main\"]\ngutter_ttl = -1\n", 5, "gutter_ttl must be 0 (no cap) or between 1 and 2592000, not -1"),
            ("[route]\ntype = \"warmup\"\ncold = \"main\"\n", 3, "type \"warmup\" needs `warm`"),
            ("[route]\ntype = \"all-sync\"\nchildren = []\n", 4, "`children` is empty"),
            ("[route]\ntype = \"all-sync\"\nchildren = \"main\"\n", 4, "invalid type: string \"main\", expected a sequence"),
            ("[route]\ntype = \"random\"\nchildren = [\"main\"]\nbogus = 1\n", 5, "unknown field `bogus`, expected one of `type`, `pool`"),
            ("[route]\nchildren = [\"main\"]\n", 2, "missing field `type`"),
            ("[route]\ntype = \"pool\"\npool = \"gone\"\n", 4, "pool \"gone\" is not defined (pools: main, other)"),
            ("[route]\ntype = \"prefix\"\ndefault = \"main\"\nprefixes = { \"a b\" = \"main\" }\n", 5, "prefix \"a b\" must be non-empty"),
            ("[route]\ntype = \"warmup\"\ncold = \"main\"\nwarm = \"other\"\nholdoff_secs = 61\n", 6, "holdoff_secs must be between 1 and 60, not 61"),
            ("route = 5\n", 2, "invalid type: integer `5`, expected a pool or route name"),
            // A named route nobody uses is still checked.
            ("route = \"main\"\n[routes.unused]\ntype = \"random\"\n", 4, "type \"random\" needs `children`"),
        ];
        for (tail, line, msg) in cases {
            let e = refused(tail);
            assert!(e.contains(&format!("router.toml:{line}:")), "{e}\n{tail}");
            assert!(e.contains(msg), "{e}\n{tail}");
        }
    }

    #[test]
    fn a_good_tree_passes_and_lists_its_pools() {
        let p = plan("[route]\ntype = \"failover\"\nchildren = [\"other\", { type = \"pool\", pool = \"main\" }]\n").unwrap();
        let mut used = Vec::new();
        p.routes[0].pools(&mut used);
        assert_eq!(used, vec![1, 0]);
    }

    fn route_of(p: &Plan, op: &str, key: &str) -> Vec<String> {
        p.describe(0, op, key.as_bytes()).unwrap()
    }

    #[test]
    fn stats_route_follows_the_choices_the_routes_make() {
        let p = plan("[route]\ntype = \"prefix\"\ndefault = \"main\"\n[route.prefixes]\n\"o:\" = \"ops\"\n\"o:long:\" = \"main\"\n[routes.ops]\ntype = \"operation\"\nget = \"other\"\ndefault = { type = \"warmup\", cold = \"main\", warm = \"other\" }\n").unwrap();
        assert_eq!(
            route_of(&p, "get", "plain"),
            vec![
                "route prefix[default]>pool:main@127.0.0.1:11211",
                "server main 127.0.0.1:11211 down"
            ]
        );
        assert_eq!(
            route_of(&p, "set", "o:long:1")[0],
            "route prefix[\"o:long:\"]>pool:main@127.0.0.1:11211"
        );
        let get = route_of(&p, "get", "o:1");
        assert!(
            get[0].starts_with("route prefix[\"o:\"]>operation[get]>pool:other@127.0.0.1:1121"),
            "{get:?}"
        );
        assert_eq!(get.len(), 2, "one server: {get:?}");
        assert_eq!(
            route_of(&p, "delete", "o:1")[0],
            format!(
                "route prefix[\"o:\"]>operation[default]>warmup(pool:main@127.0.0.1:11211, {})",
                &get[0]["route prefix[\"o:\"]>operation[get]>".len()..]
            )
        );
        // flush_all reaches every server of a pool.
        let flush = route_of(&p, "flush_all", "o:1");
        assert!(
            flush.contains(&"server other 127.0.0.1:11212 down".to_string()),
            "{flush:?}"
        );
        assert!(
            flush.contains(&"server other 127.0.0.1:11213 down".to_string()),
            "{flush:?}"
        );
        assert!(p
            .describe(0, "frob", b"k")
            .unwrap_err()
            .contains("unknown operation"));
        assert_eq!(p.describe(0, "get", b"a\x01b").unwrap_err(), "bad key");
        assert_eq!(p.describe(0, "get", &[b'k'; 251]).unwrap_err(), "bad key");
    }
}
