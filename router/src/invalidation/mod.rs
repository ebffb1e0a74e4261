//! The receiving end of squeal's invalidations.
//!
//! Batches arrive on the native port ([`listener`]) or from Kafka ([`kafka`]); the
//! [`fanout`] deletes each key on its server in every front-end cluster (marker keys in the
//! regional pool), through per-server pipelined [`deleter`]s; what cannot be delivered goes
//! to the durable [`spool`] and is replayed when the server is back. A batch is
//! acknowledged (or its Kafka offset committed) only after all that.

pub mod deleter;
pub mod fanout;
pub mod kafka;
pub mod listener;
pub mod spool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::invalidation::InvalidationConfig;
use crate::config::Config;
use crate::placement::Placement;
use crate::tls::Connector;

pub use fanout::{Fanout, Target};

/// The configured pools and their placements (the plan's, indexed like `config.pools`),
/// looked up by name when the fan-out is built.
#[derive(Clone, Copy)]
pub struct Pools<'a> {
    pub config: &'a Config,
    pub placements: &'a [Arc<Placement>],
    /// Per pool: how to reach its servers over TLS (the plan's `tls.pools`).
    pub tls: &'a [Option<Vec<Connector>>],
}

/// What the TLS invalidation port hands a new connection: the current `[tls]` server
/// config (a SIGHUP may have replaced it), read at every accept.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;

impl Pools<'_> {
    /// The pool called `name` as an invalidation target.
    fn target(&self, name: &str, holdoff_secs: Option<u32>) -> Option<Target> {
        let i = self.config.pools.iter().position(|p| p.name == name)?;
        let placement = self.placements.get(i)?.clone();
        let servers = self.config.pools[i].servers.len();
        Some(Target {
            name: name.to_string(),
            without: Target::ejections(&placement, servers),
            placement,
            servers: self.config.pools[i]
                .servers
                .iter()
                .map(|s| s.addr.to_string())
                .collect(),
            tls: match self.tls.get(i) {
                Some(Some(c)) => c.iter().cloned().map(Some).collect(),
                _ => vec![None; servers],
            },
            holdoff_secs,
        })
    }
}

/// Runs the invalidation side on its own small runtime thread, apart from the data-path
/// workers: its fsyncs and Kafka client must never stall a client's request. Returns once
/// the side is started (ports bound, spool opened), or with the reason it could not start.
pub fn spawn(
    config: Arc<Config>,
    placements: Vec<Arc<Placement>>,
    pool_tls: Vec<Option<Vec<Connector>>>,
    tls: TlsSource,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let Some(inv) = config.invalidation.clone() else {
        return Ok(None);
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("invalidation".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let pools = Pools {
                    config: &config,
                    placements: &placements,
                    tls: &pool_tls,
                };
                match start(&inv, pools, tls).await {
                    Ok(_fanout) => {
                        let _ = ready_tx.send(Ok(()));
                        std::future::pending::<()>().await
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
        })?;
    ready_rx
        .recv()
        .context("the invalidation thread ended before starting")??;
    Ok(Some(handle))
}

/// The fan-out over the configured clusters and marker pools.
fn build_fanout(
    config: &InvalidationConfig,
    pools: Pools<'_>,
    spool: Arc<spool::Spool>,
) -> anyhow::Result<Fanout> {
    let targets = |names: &[String]| -> anyhow::Result<Vec<Target>> {
        names
            .iter()
            .map(|name| {
                let holdoff = config.warming.contains(name).then_some(config.holdoff_secs);
                pools
                    .target(name, holdoff)
                    .with_context(|| format!("no pool {name:?}"))
            })
            .collect()
    };
    Ok(Fanout::new(
        targets(&config.clusters)?,
        targets(&config.marker_pools)?,
        spool,
        Duration::from_millis(config.timeout_ms),
    ))
}

/// The operator's view of the spool (`squeal-router --spool-inspect` / `--spool-replay`).
pub fn spool_cli(pools: Pools<'_>, replay: bool) -> anyhow::Result<()> {
    let inv = pools
        .config
        .invalidation
        .as_ref()
        .context("the config has no [invalidation] section, so no spool")?;
    let spool = Arc::new(
        spool::Spool::open(&inv.spool_dir, inv.spool_max_bytes)
            .with_context(|| format!("opening spool {}", inv.spool_dir.display()))?,
    );
    let pending = spool.pending();
    println!(
        "spool {}: {} server(s) with deletes waiting",
        inv.spool_dir.display(),
        pending.len()
    );
    for p in &pending {
        let flushes = match p.flushes {
            0 => String::new(),
            n => format!("  {n} flush_all"),
        };
        println!(
            "  {}  {} deletes{flushes}  {} bytes",
            p.server, p.keys, p.bytes
        );
    }
    if !replay || pending.is_empty() {
        return Ok(());
    }
    let fanout = build_fanout(inv, pools, spool)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut failed = 0;
    for p in pending {
        match rt.block_on(fanout.replay_server(&p.server)) {
            Ok(n) => println!("  {}: replayed {n} deletes", p.server),
            Err(e) => {
                failed += 1;
                println!("  {}: stopped: {e:#}", p.server);
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} server(s) could not be replayed; their deletes stay spooled"
    );
    Ok(())
}

/// Starts the invalidation side: opens the spool, builds the fan-out over the named pools,
/// binds the native port and starts the Kafka consumer as configured, and the replayer.
pub async fn start(
    config: &InvalidationConfig,
    pools: Pools<'_>,
    tls: TlsSource,
) -> anyhow::Result<Arc<Fanout>> {
    let secret = config.secret()?;
    let spool_dir = config.spool_dir.clone();
    let max = config.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || spool::Spool::open(&spool_dir, max))
        .await?
        .with_context(|| format!("opening spool {}", config.spool_dir.display()))?;
    let pending = spool.pending();
    if !pending.is_empty() {
        tracing::info!(
            ?pending,
            "spool holds deletes from an earlier run; replaying"
        );
    }
    let fanout = Arc::new(build_fanout(config, pools, Arc::new(spool))?);
    tokio::spawn(
        fanout
            .clone()
            .replay_forever(Duration::from_millis(config.replay_interval_ms)),
    );
    if let Some(addr) = config.listen {
        let listener = listener::bind(addr)
            .await
            .with_context(|| format!("binding invalidation port {addr}"))?;
        let limits = listener::Limits {
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            frame_timeout: Duration::from_millis(config.frame_timeout_ms),
            max_unauthenticated: config.max_unauthenticated,
        };
        tokio::spawn(listener::serve(
            listener,
            fanout.clone(),
            secret.clone(),
            limits,
            config.tls.then_some(tls),
        ));
    }
    if let Some(kafka) = config.kafka.clone() {
        tokio::spawn(kafka::consume(kafka, fanout.clone(), secret));
    }
    Ok(fanout)
}
