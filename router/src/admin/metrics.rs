//! Prometheus metrics on the admin port. The hot path only bumps per-worker counters
//! ([`crate::stats`]); a background thread copies their sums into the `metrics` registry
//! every 100 ms (a few hundred atomic loads), so the exporter adds no cost per request and
//! a scrape is at most that far behind. The `stats` command reads the counters directly.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::plan::Process;
use crate::protocol::Cmd;

/// How far behind the counters a scrape may be.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Serves `/metrics` on `addr` and keeps the values current.
pub fn start(addr: SocketAddr, process: Arc<Process>) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("admin listener on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || loop {
            publish(&process);
            std::thread::sleep(PUBLISH_EVERY);
        })?;
    Ok(())
}

fn publish(s: &Process) {
    for cmd in Cmd::ALL {
        metrics::counter!("squeal_router_ops_total", "cmd" => cmd.name()).absolute(s.ops(cmd));
    }
    metrics::counter!("squeal_router_get_hits_total").absolute(s.sum(|w| w.get_hits.get()));
    metrics::counter!("squeal_router_get_misses_total").absolute(s.sum(|w| w.get_misses.get()));
    metrics::counter!("squeal_router_client_errors_total")
        .absolute(s.sum(|w| w.client_errors.get()));
    metrics::counter!("squeal_router_clients_closed_total", "reason" => "output_overflow")
        .absolute(s.sum(|w| w.output_overflows.get()));
    metrics::counter!("squeal_router_clients_closed_total", "reason" => "not_tls")
        .absolute(s.sum(|w| w.not_tls.get()));
    metrics::counter!("squeal_router_clients_closed_total", "reason" => "tls_handshake")
        .absolute(s.sum(|w| w.tls_handshake_failures.get()));
    metrics::gauge!("squeal_router_buffered_output_bytes")
        .set(crate::reply_queue::buffered_output() as f64);
    metrics::counter!("squeal_router_backend_errors_total")
        .absolute(s.sum(|w| w.backend_errors.get()));
    metrics::counter!("squeal_router_connections_total")
        .absolute(s.sum(|w| w.total_connections.get()));
    metrics::gauge!("squeal_router_connections").set(s.curr_connections() as f64);
    metrics::counter!("squeal_router_bytes_read_total").absolute(s.sum(|w| w.bytes_read.get()));
    metrics::counter!("squeal_router_bytes_written_total")
        .absolute(s.sum(|w| w.bytes_written.get()));
    metrics::gauge!("squeal_router_uptime_seconds").set(s.started.elapsed().as_secs_f64());
    for (name, v) in [
        (
            "squeal_router_route_failovers_total",
            s.sum(|w| w.failovers.get()),
        ),
        (
            "squeal_router_route_gutter_sets_total",
            s.sum(|w| w.gutter_sets.get()),
        ),
        (
            "squeal_router_route_async_failures_total",
            s.sum(|w| w.async_failures.get()),
        ),
        (
            "squeal_router_route_backfills_total",
            s.sum(|w| w.backfills.get()),
        ),
        (
            "squeal_router_route_warm_hits_total",
            s.sum(|w| w.warm_hits.get()),
        ),
        (
            "squeal_router_route_holdoffs_total",
            s.sum(|w| w.holdoffs.get()),
        ),
        (
            "squeal_router_route_tko_fast_fails_total",
            s.sum(|w| w.tko_fast_fails.get()),
        ),
        (
            "squeal_router_route_eject_rehashes_total",
            s.sum(|w| w.eject_rehashes.get()),
        ),
        (
            "squeal_router_config_reloads_total",
            s.reloads.load(Relaxed),
        ),
        (
            "squeal_router_config_reload_failures_total",
            s.reload_failures.load(Relaxed),
        ),
        (
            "squeal_router_tls_reload_failures_total",
            s.tls_reload_failures.load(Relaxed),
        ),
    ] {
        metrics::counter!(name).absolute(v);
    }
    metrics::gauge!("squeal_router_config_generation").set(s.generation.load(Relaxed) as f64);
    for sv in &s.servers() {
        let labels = [("pool", sv.pool.clone()), ("server", sv.addr.clone())];
        // 1 while the server is marked down (TKO) and fails fast.
        metrics::gauge!("squeal_router_server_tko", &labels)
            .set(f64::from(u8::from(sv.tko.load(Relaxed))));
        metrics::counter!("squeal_router_server_tko_marks_total", &labels)
            .absolute(sv.tko_marks.load(Relaxed));
        metrics::gauge!("squeal_router_server_connections_up", &labels)
            .set(sv.up.load(Relaxed) as f64);
        metrics::counter!("squeal_router_server_errors_total", &labels)
            .absolute(sv.errors.load(Relaxed));
        metrics::counter!("squeal_router_server_timeouts_total", &labels)
            .absolute(sv.timeouts.load(Relaxed));
        metrics::counter!("squeal_router_server_desyncs_total", &labels)
            .absolute(sv.desyncs.load(Relaxed));
        metrics::counter!("squeal_router_server_resets_total", &labels)
            .absolute(sv.resets.load(Relaxed));
        metrics::counter!("squeal_router_server_connect_failures_total", &labels)
            .absolute(sv.connect_failures.load(Relaxed));
    }
}
