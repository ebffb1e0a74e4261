//! `squeal-router`: the regional memcache router.
//!
//! A request flows through the modules in this order: listener -> protocol -> route tree ->
//! pool -> backend connection.
use std::sync::Arc;

use clap::Parser;
use router::config::Config;
use router::plan::Plan;
use router::worker;

/// Where `/metrics` is served when the config names no `admin` address: loopback only.
const DEFAULT_ADMIN_PORT: u16 = 9150;

/// Regional memcache router: speaks memcached's text and meta protocols to clients, routes
/// over pools of memcached servers, and applies squeal's invalidation batches.
#[derive(Debug, Parser)]
#[command(name = "squeal-router", version, about, long_about = None)]
struct Cli {
    /// Path of the TOML configuration file.
    #[arg(short, long, default_value = "/etc/squeal/router.toml")]
    config: std::path::PathBuf,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print what the invalidation spool holds (per server: deletes and bytes waiting) and
    /// exit. Safe while the router runs.
    #[arg(long, conflicts_with = "check")]
    spool_inspect: bool,
    /// Replay the invalidation spool now to every server that answers, print what was
    /// replayed, and exit. Stop the router first: two replayers on one spool would race.
    #[arg(long, conflicts_with_all = ["check", "spool_inspect"])]
    spool_replay: bool,
    /// Print the router TOML equivalent of the config (a nutcracker.yml or an mcrouter
    /// JSON file is converted; a TOML file is printed as it is) and exit.
    #[arg(long, conflicts_with_all = ["check", "spool_inspect", "spool_replay"])]
    print_toml: bool,
    /// Serve `/metrics` here instead of the config's `admin` (nutcracker's `-s`/`-a`, for
    /// a config converted from a nutcracker.yml, which has no such key).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Log as JSON lines (one object per event, for log shippers).
    #[arg(long)]
    log_json: bool,
}

fn main() {
    let cli = Cli::parse();
    fixed_mmap_threshold();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_json {
        true => logs.json().init(),
        false => logs.init(),
    }
    if let Err(e) = run(cli) {
        eprintln!("squeal-router: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.print_toml {
        let (toml, converted) = Config::toml_text(&cli.config)?;
        print!("{toml}");
        // Say so if the result would not start.
        let file = cli.config.display().to_string();
        Plan::new(Config::parse_toml(&file, &toml, converted)?)?;
        return Ok(());
    }
    let mut config = Config::load(&cli.config)?;
    if let Some(admin) = cli.admin {
        config.admin = Some(admin);
    }
    // The route tree is validated with the plan: `--check` refuses a bad one too.
    let plan = Plan::new(config)?;
    if cli.check {
        println!("{}: ok", cli.config.display());
        return Ok(());
    }
    if cli.spool_inspect || cli.spool_replay {
        let pools = router::invalidation::Pools {
            config: &plan.config,
            placements: &plan.placements,
            tls: &plan.tls.pools,
        };
        return router::invalidation::spool_cli(pools, cli.spool_replay);
    }
    let plan = Arc::new(plan);
    let cfg = &plan.config;
    let process = Arc::new(router::plan::Process::new(plan.clone()));
    // Metrics first: the invalidation side replays its spool as soon as it starts, and a
    // counter bumped before the recorder is installed is lost.
    match cfg.admin {
        Some(admin) => router::admin::metrics::start(admin, process.clone())?,
        // Unconfigured: the default loopback port, if it is free (several routers on one
        // host each need their own `admin` to be scraped).
        None => {
            let admin = std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT));
            if let Err(e) = router::admin::metrics::start(admin, process.clone()) {
                tracing::warn!("metrics not served: {e:#}");
            }
        }
    }
    // The invalidation side binds its port and opens its spool first: once the client
    // port accepts connections, the whole router is up (tests and health checks wait for
    // the client port only).
    let tls_process = process.clone();
    let _invalidation = router::invalidation::spawn(
        Arc::new(cfg.clone()),
        plan.placements.clone(),
        plan.tls.pools.clone(),
        Arc::new(move || tls_process.tls_server()),
    )?;
    // Bind everything before starting, so a busy port is an immediate, clear error.
    let mut per_worker = Vec::new();
    for _ in 0..cfg.workers {
        let mut ls = Vec::new();
        for addr in &cfg.listen {
            ls.push(
                router::listener::bind(*addr)
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?,
            );
        }
        per_worker.push(ls);
    }
    tracing::info!(
        listen = ?cfg.listen,
        admin = ?cfg.admin,
        workers = cfg.workers,
        pools = cfg.pools.len(),
        "squeal-router started"
    );
    // SIGHUP reloads the config (routes, pools, health) without dropping a connection.
    router::admin::reload::spawn(cli.config.clone(), process.clone())?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut threads = Vec::new();
    for (id, ls) in per_worker.into_iter().enumerate() {
        let process = process.clone();
        let open = open.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn(move || worker::run(id, process, open, ls))?,
        );
    }
    // Every address is bound and every worker runs: systemd's Type=notify may go on.
    if let Err(e) = marker::systemd::notify_ready() {
        tracing::warn!("systemd readiness notification failed: {e}");
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("worker failed: {e}"),
            Err(_) => anyhow::bail!("worker panicked"),
        }
    }
    Ok(())
}

/// Large buffers (values of hundreds of KB, reply queues of slow clients) are mapped on
/// their own and unmapped when freed, instead of glibc raising its mmap threshold after the
/// first such free and keeping the memory in the heap for good.
fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
