//! Worker threads. Each one runs a current-thread tokio runtime that owns:
//! its listening sockets, its client connections, and its own backend connections to every
//! server. A request is parsed, routed, written to a backend and answered on one thread,
//! with no lock, channel or cross-thread wake-up on the way.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::backend::{BackendConn, Timeouts};
use crate::client::ClientCtx;
use crate::config::Config;
use crate::protocol::Limits;
use crate::route::pool::{Placement, PoolRoute};
use crate::route::Route;
use crate::stats::{ServerStats, Shared, WorkerStats};

/// What a worker needs to start; built once by `main` and shared read-only.
pub struct Plan {
    pub config: Config,
    pub placements: Vec<Arc<Placement>>,
    /// Per pool, per server.
    pub servers: Vec<Vec<Arc<ServerStats>>>,
    pub shared: Arc<Shared>,
    pub open_connections: Arc<AtomicUsize>,
}

impl Plan {
    pub fn new(config: Config) -> Plan {
        let placements = config
            .pools
            .iter()
            .map(|p| {
                let names: Vec<(String, u32)> = p
                    .servers
                    .iter()
                    .map(|s| (s.ketama_name.clone(), s.weight))
                    .collect();
                Arc::new(Placement::new(p.hash, &p.distribution, &names))
            })
            .collect();
        let servers: Vec<Vec<Arc<ServerStats>>> = config
            .pools
            .iter()
            .map(|p| {
                p.servers
                    .iter()
                    .map(|s| Arc::new(ServerStats::new(&p.name, &s.label)))
                    .collect()
            })
            .collect();
        let workers = (0..config.workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let shared = Arc::new(Shared {
            started: std::time::Instant::now(),
            workers,
            servers: servers.iter().flatten().cloned().collect(),
            threads: config.workers,
        });
        Plan {
            config,
            placements,
            servers,
            shared,
            open_connections: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Runs worker `id` on the calling thread, forever.
pub fn run(
    id: usize,
    plan: Arc<Plan>,
    listeners: Vec<std::net::TcpListener>,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let cfg = &plan.config;
        let stats = plan.shared.workers[id].clone();
        let timeouts = Timeouts {
            connect: cfg.timeouts.connect,
            read: cfg.timeouts.read,
            backoff_min: cfg.timeouts.backoff_min,
            backoff_max: cfg.timeouts.backoff_max,
            max_queue: cfg.limits.max_backend_queue,
        };
        let pool = &cfg.pools[cfg.route];
        let mut conns = Vec::new();
        for (si, server) in pool.servers.iter().enumerate() {
            let per_server: Vec<Rc<BackendConn>> = (0..pool.connections)
                .map(|_| {
                    let c = BackendConn::new(
                        plan.servers[cfg.route][si].clone(),
                        stats.clone(),
                        timeouts.max_queue,
                    );
                    spawn_backend(c.clone(), server.addr, timeouts);
                    c
                })
                .collect();
            conns.push(per_server);
        }
        let route: Rc<dyn Route> =
            Rc::new(PoolRoute::new(plan.placements[cfg.route].clone(), conns));
        let ctx = Rc::new(ClientCtx {
            route,
            stats,
            shared: plan.shared.clone(),
            limits: Limits {
                max_value: cfg.limits.max_item_size,
                ..Limits::default()
            },
            max_pending: cfg.limits.max_pending_per_client,
            max_output: cfg.limits.max_client_output,
        });
        let mut accepts = Vec::new();
        for l in listeners {
            accepts.push(tokio::task::spawn_local(crate::listener::accept_loop(
                l,
                ctx.clone(),
                plan.open_connections.clone(),
                cfg.limits.max_connections,
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
    });
    Ok(())
}

fn spawn_backend(conn: Rc<BackendConn>, addr: SocketAddr, t: Timeouts) {
    tokio::task::spawn_local(conn.run(addr, t));
}
