//! Live reload: on SIGHUP the config file is read and validated again. A valid config is
//! published as a new [`Plan`]; workers switch to it between requests (see
//! [`crate::worker`]), keeping every client connection. An invalid one is refused with a
//! log line naming `file:line:column`, counted (`config_reload_failures`), and the running
//! config keeps serving.
//!
//! What a reload changes: pools, the route tree (`route`, `[routes]`), `[health]`,
//! timeouts of new backend connections, and certificates: the `[tls]` and
//! `[pools.NAME.tls]` files are read again, and connections opened from then on (client,
//! invalidation, backend) use them. A file that does not load refuses the reload (counted
//! in `tls_reload_failures` too), so the running certificates stay. What needs a restart
//! (a change is logged and ignored): `workers`, `admin`, `[limits]`, `[invalidation]`. A
//! changed `listen` or `[listeners]` (or a listener's `tls`) is refused (restart to
//! apply): bound sockets keep the tree they serve.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::plan::Plan;
use crate::plan::Process;
use crate::tls::Material;

/// Installs the SIGHUP handler (before returning, so an early SIGHUP cannot kill the
/// process) and serves reloads on a thread of its own.
pub fn spawn(path: PathBuf, process: Arc<Process>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hup = rt.block_on(async { signal(SignalKind::hangup()) })?;
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            rt.block_on(async move {
                while hup.recv().await.is_some() {
                    reload(&path, &process);
                }
            })
        })?;
    Ok(())
}

/// Reads, validates and publishes the config at `path`; returns whether it was taken.
pub fn reload(path: &std::path::Path, process: &Process) -> bool {
    let old = process.plan();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            process.reload_failures.fetch_add(1, Relaxed);
            tracing::error!("config reload rejected, the running config stays: {e}");
            return false;
        }
    };
    // Certificates first: a file that does not load keeps the running ones, and says so.
    let tls = match Material::load(&config) {
        Ok(t) => t,
        Err(e) => {
            process.reload_failures.fetch_add(1, Relaxed);
            process.tls_reload_failures.fetch_add(1, Relaxed);
            tracing::error!(
                "config reload rejected, the running config and certificates stay \
                 (counted in squeal_router_tls_reload_failures_total): {e}; fix the file \
                 and send SIGHUP again"
            );
            return false;
        }
    };
    let plan = match Plan::with_tls(config, tls, Some(&old)) {
        Ok(p) => p,
        Err(e) => {
            process.reload_failures.fetch_add(1, Relaxed);
            tracing::error!("config reload rejected, the running config stays: {e}");
            return false;
        }
    };
    let (o, new) = (&old.config, &plan.config);
    // Workers serve each bound address with the tree of its root route: a new mapping
    // would hand an address another tree than the one its config names.
    if o.listen != new.listen
        || o.listen_routes != new.listen_routes
        || o.listen_tls != new.listen_tls
    {
        process.reload_failures.fetch_add(1, Relaxed);
        tracing::error!(
            "config reload rejected, the running config stays: `listen`/`[listeners]` changed; restart to apply"
        );
        return false;
    }
    for (name, changed) in [
        ("workers", o.workers != new.workers),
        ("admin", o.admin != new.admin),
        ("limits", o.limits != new.limits),
        (
            "invalidation",
            format!("{:?}", o.invalidation) != format!("{:?}", new.invalidation),
        ),
    ] {
        if changed {
            tracing::warn!("config reload: `{name}` changed; it takes effect after a restart");
        }
    }
    process.publish(Arc::new(plan));
    process.reloads.fetch_add(1, Relaxed);
    tracing::info!(
        generation = process.generation.load(Relaxed),
        "config reloaded from {}",
        path.display()
    );
    true
}
