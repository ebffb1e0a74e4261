//! Prometheus metrics (the `metrics` crate, exported over HTTP on a loopback port by
//! default). Names:
//!
//! - `squeal_lag_seconds`, `squeal_lag_bytes`: how far behind the server's current position
//!   the reader is (seconds by event timestamps, bytes by binlog sizes);
//! - `squeal_transactions_total`, `squeal_rows_total`, `squeal_keys_total`,
//!   `squeal_events_total`: rates come from these counters;
//! - `squeal_keys_per_packet`, `squeal_packet_bytes` (histograms);
//! - latency by stage (histograms): `squeal_receive_delay_seconds` (source commit to squeal
//!   reading it; MySQL 8 microsecond commit times only), `squeal_batch_wait_seconds` (read
//!   to sent), `squeal_sink_latency_seconds{sink}` (sent to acknowledged),
//!   `squeal_batch_ack_seconds` (read to acknowledged by every sink);
//! - `squeal_keys_delivered_total`, `squeal_checkpoint_writes_total`;
//! - errors: `squeal_bad_annotations_total`, `squeal_bad_keys_total` (every dropped key),
//!   `squeal_keys_dropped_total{reason,table}` (the same by reason and table, counted where
//!   the key is dropped),
//!   `squeal_decode_errors_total`, `squeal_schema_problems_total`,
//!   `squeal_sink_errors_total{sink}`, `squeal_sink_rejected_keys_total`,
//!   `squeal_reconnects_total`, `squeal_rolled_back_total`;
//! - `squeal_up` (1 once the first binlog connection is established).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::extract::process::Stats;

/// Fine at the low end, where the idle-vs-loaded difference shows.
const KEYS_PER_PACKET_BUCKETS: [f64; 36] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 20.0,
    24.0, 28.0, 32.0, 40.0, 48.0, 56.0, 64.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0,
    768.0, 1024.0, 1536.0, 2048.0,
];

pub fn install(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut b = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("squeal_keys_per_packet".into()),
            &KEYS_PER_PACKET_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("squeal_packet_bytes".into()),
            &[64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0],
        )?;
    match listen {
        Some(addr) => {
            b = b.with_http_listener(addr);
            b.install()
                .map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?;
        }
        None => {
            let recorder = b.build_recorder();
            metrics::set_global_recorder(recorder)
                .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
        }
    }
    Ok(())
}

/// Publishes the processor's counters (adds what changed since `prev`).
pub fn publish(stats: &Stats, prev: &mut Stats) {
    macro_rules! delta {
        ($field:ident, $name:literal) => {
            if stats.$field > prev.$field {
                metrics::counter!($name).increment(stats.$field - prev.$field);
            }
        };
    }
    delta!(events, "squeal_events_total");
    delta!(rows, "squeal_rows_total");
    delta!(keys, "squeal_keys_total");
    delta!(txns, "squeal_transactions_total");
    delta!(rolled_back, "squeal_rolled_back_total");
    delta!(bad_annotations, "squeal_bad_annotations_total");
    delta!(bad_keys, "squeal_bad_keys_total");
    delta!(decode_errors, "squeal_decode_errors_total");
    delta!(schema_problems, "squeal_schema_problems_total");
    delta!(ddl, "squeal_ddl_total");
    *prev = stats.clone();
}
