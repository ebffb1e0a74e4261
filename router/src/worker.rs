//! Worker threads. Each one runs a current-thread tokio runtime that owns:
//! its listening sockets, its client connections, and its own backend connections to every
//! server. A request is parsed, routed, written to a backend and answered on one thread,
//! with no lock, channel or cross-thread wake-up on the way.
//!
//! Live reload: `main` publishes a new [`Plan`](crate::plan::Plan) in [`Process`]; each worker compares the
//! plan generation with its own before routing a request (one relaxed load) and, when it
//! changed, builds the new route tree on its own thread. Client connections stay open;
//! requests already in flight finish on the old tree; backend connections to servers that
//! are still configured (same pool, same address) are kept, new ones are opened, and those
//! no longer used are closed after a grace period that outlasts any request sent on them.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backend::health::Watch;
use crate::backend::BackendConn;
use crate::client::ClientCtx;
use crate::config::Timeouts;
use crate::plan::Process;
use crate::protocol::Request;
use crate::route::pool::PoolRoute;
use crate::route::spec::Build;
use crate::route::{Completion, ErrorRoute, Route, RouteRef};
use crate::stats::{ServerStats, WorkerStats};

/// One backend connection of a worker: pool, server label, connection index.
type ConnKey = (String, String, usize);

struct Backend {
    conn: Rc<BackendConn<Completion>>,
    task: tokio::task::AbortHandle,
    server: Arc<ServerStats>,
    addr: std::net::SocketAddr,
}

/// The worker's route: the current tree, rebuilt when a new plan is published.
struct LiveRoute {
    process: Arc<Process>,
    stats: Arc<WorkerStats>,
    generation: Cell<u64>,
    /// One tree per root route of the plan (`Plan::routes`).
    trees: RefCell<Vec<RouteRef>>,
    backends: RefCell<HashMap<ConnKey, Backend>>,
}

impl LiveRoute {
    fn new(process: Arc<Process>, stats: Arc<WorkerStats>) -> LiveRoute {
        let live = LiveRoute {
            process,
            stats,
            generation: Cell::new(0),
            // No tree before the first build: requests get `ErrorRoute`.
            trees: RefCell::new(Vec::new()),
            backends: RefCell::new(HashMap::new()),
        };
        live.rebuild();
        live
    }

    /// Builds the tree of the current plan on this thread.
    fn rebuild(&self) {
        let generation = self.process.generation.load(Ordering::Acquire);
        let plan = self.process.plan();
        let cfg = &plan.config;
        let timeouts = cfg.timeouts;
        let mut used = Vec::new();
        for r in &plan.routes {
            r.pools(&mut used);
        }
        let mut old = self.backends.take();
        let mut backends = HashMap::new();
        let mut pools: Vec<Option<RouteRef>> = vec![None; cfg.pools.len()];
        for &pi in &used {
            let pool = &cfg.pools[pi];
            let timeouts = Timeouts {
                read: pool.read_timeout.unwrap_or(timeouts.read),
                ..timeouts
            };
            // An ejecting pool watches its servers with its own settings.
            let health = pool.eject.or(cfg.health);
            let mut conns = Vec::new();
            let mut watches = Vec::new();
            for (si, server) in pool.servers.iter().enumerate() {
                let stats = plan.servers[pi][si].clone();
                let tls = plan.tls.pools[pi].as_ref().map(|c| c[si].clone());
                let mut per_server = Vec::new();
                for c in 0..pool.connections {
                    let key = (pool.name.clone(), server.label.clone(), c);
                    let b = match old.remove(&key) {
                        Some(b) if b.addr == server.addr && Arc::ptr_eq(&b.server, &stats) => {
                            // Its next reconnect uses this plan's certificates.
                            b.conn.set_tls(tls.clone());
                            b
                        }
                        other => {
                            if let Some(b) = other {
                                retire(b, &timeouts);
                            }
                            let conn = BackendConn::new(
                                stats.clone(),
                                self.stats.clone(),
                                cfg.limits.max_backend_queue,
                                tls.clone(),
                            );
                            let task =
                                tokio::task::spawn_local(conn.clone().run(server.addr, timeouts))
                                    .abort_handle();
                            Backend {
                                conn,
                                task,
                                server: stats.clone(),
                                addr: server.addr,
                            }
                        }
                    };
                    per_server.push(b.conn.clone());
                    backends.insert(key, b);
                }
                conns.push(per_server);
                if let Some(h) = health {
                    watches.push(Rc::new(Watch::new(
                        stats,
                        h,
                        server.addr,
                        timeouts.connect,
                        timeouts.read,
                        tls,
                    )));
                }
            }
            let route = PoolRoute::new(plan.placements[pi].clone(), conns)
                .with_health(watches, self.stats.clone())
                .ejecting();
            pools[pi] = Some(Rc::new(route));
        }
        for (_, b) in old.drain() {
            retire(b, &timeouts);
        }
        *self.backends.borrow_mut() = backends;
        let build = Build {
            pools: &pools,
            stats: &self.stats,
        };
        *self.trees.borrow_mut() = plan.routes.iter().map(|r| r.build(&build)).collect();
        self.generation.set(generation);
    }
}

/// Closes a backend connection the new tree no longer uses, once nothing can be waiting
/// on it: requests queued before the swap have had their reply or their timeout by then.
fn retire(b: Backend, t: &Timeouts) {
    let grace = (t.connect + t.read) * 2 + std::time::Duration::from_secs(1);
    tokio::task::spawn_local(async move {
        tokio::time::sleep(grace).await;
        b.task.abort();
        b.server.conns.fetch_sub(1, Ordering::Relaxed);
        drop(b.conn);
    });
}

impl LiveRoute {
    #[inline]
    fn route(&self, root: usize, req: Request, done: Completion) {
        if self.process.generation.load(Ordering::Relaxed) != self.generation.get() {
            self.rebuild();
        }
        // The borrow lasts the call, as it did with one tree: routing never rebuilds.
        match self.trees.borrow().get(root) {
            Some(t) => t.route(req, done),
            None => ErrorRoute("no route").route(req, done),
        }
    }
}

/// The live tree of one root route: what a listener's clients are served by.
struct RootRoute {
    live: Rc<LiveRoute>,
    root: usize,
}

impl Route for RootRoute {
    #[inline]
    fn route(&self, req: Request, done: Completion) {
        self.live.route(self.root, req, done)
    }
}

/// Runs worker `id` on the calling thread, forever.
pub fn run(
    id: usize,
    process: Arc<Process>,
    open_connections: Arc<AtomicUsize>,
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let plan = process.plan();
        // Listening, workers and client limits are fixed at start (not reloaded).
        let cfg = &plan.config;
        let stats = process.workers[id].clone();
        let live = Rc::new(LiveRoute::new(process.clone(), stats.clone()));
        let ctx = |root: usize| ClientCtx {
            route: Rc::new(RootRoute {
                live: live.clone(),
                root,
            }),
            root,
            stats: stats.clone(),
            process: process.clone(),
            limits: cfg.limits,
        };
        let mut accepts = Vec::new();
        // `listeners` are bound in `cfg.listen` order.
        for ((l, &root), &tls) in listeners
            .into_iter()
            .zip(&cfg.listen_routes)
            .zip(&cfg.listen_tls)
        {
            let tls = match (tls, &cfg.tls) {
                (true, Some(t)) => Some(t.handshake_timeout),
                _ => None,
            };
            accepts.push(tokio::task::spawn_local(crate::listener::accept_loop(
                l,
                Rc::new(ctx(root)),
                open_connections.clone(),
                cfg.limits.max_connections,
                tls,
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
    });
    Ok(())
}
