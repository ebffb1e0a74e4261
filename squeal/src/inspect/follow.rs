//! The inspector's binlog reader: squeal's own connection code ([`crate::source::live`])
//! and extraction ([`Processor`]), registered under the inspector's `server_id`, starting
//! at the server's current position (nothing is checkpointed: a restart starts again at
//! the then current position; what was committed meanwhile is simply not sampled).

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::config::SourceConfig;
use crate::extract::process::{ProcessError, Processor};
use crate::model::Committed;
use crate::source::live::{self, InfoSchema};

use super::config::InspectConfig;

/// One committed transaction as the inspector needs it.
pub struct Commit {
    pub committed: Committed,
    /// `(db.table, key)` of its row-rule and outbox keys (see [`Processor::take_origins`]).
    pub origins: Vec<(String, Vec<u8>)>,
    /// When the inspector received it (microseconds since the epoch).
    pub received: u64,
    /// Its commit time in microseconds when the stream carries it (MySQL 8), see
    /// [`Processor::last_commit_micros`].
    pub commit_us: Option<u64>,
}

/// Follows the binlog until `stop` turns true, handing every commit to `on_commit`.
/// Returns an error only for what retrying cannot fix (a refused server, a binlog event
/// squeal cannot read).
pub async fn follow(
    cfg: &InspectConfig,
    mut stop: watch::Receiver<bool>,
    mut on_commit: impl FnMut(Commit),
) -> anyhow::Result<()> {
    let src: &SourceConfig = &cfg.source;
    let Some(mut conn) = live::connect_retrying(src).await? else {
        return Ok(());
    };
    live::check_server(&mut conn, src).await?;
    let start = live::server_position(&mut conn).await?;
    let zone = live::time_zone(&mut conn, cfg.extract.time_zone.as_deref()).await?;
    let _ = conn.disconnect().await;
    let mut processor = Processor::new(&cfg.extract, Box::new(InfoSchema::new(live::opts(src)?)))
        .map_err(|e| anyhow::anyhow!("[extract]: {e}"))?;
    processor.set_time_zone(zone);
    processor.record_origins();
    processor.reset_to(&start);
    tracing::info!(position = %start, "following the binlog from the server's current position");
    let dead_after = Duration::from_millis(src.heartbeat_ms) * 3 + Duration::from_secs(1);
    let mut backoff = Duration::from_millis(src.reconnect_min_ms);
    let max_backoff = Duration::from_millis(src.reconnect_max_ms.max(src.reconnect_min_ms));
    let mut out = Vec::new();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let pos = processor.position();
        let mut stream = match live::open_stream(src, &pos).await {
            Ok((s, info)) => {
                tracing::info!(position = %pos, server = %info.version, "binlog stream open");
                metrics::gauge!("squeal_inspect_up").set(1.0);
                s
            }
            Err(e) => {
                if e.downcast_ref::<live::Refused>().is_some() {
                    return Err(e);
                }
                metrics::counter!("squeal_inspect_reconnects_total").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "binlog connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        let why = loop {
            let ev = tokio::select! {
                ev = tokio::time::timeout(dead_after, stream.next()) => ev,
                _ = stop.changed() => return Ok(()),
            };
            let ev = match ev {
                Err(_) => break format!("no event or heartbeat for {dead_after:?}"),
                Ok(None) => break "the server ended the stream".to_string(),
                Ok(Some(Err(e))) => {
                    let msg = e.to_string();
                    if msg.contains("1236") {
                        return Err(anyhow::anyhow!(
                            "the server cannot send binlog {pos}: {msg}"
                        ));
                    }
                    break msg;
                }
                Ok(Some(Ok(ev))) => ev,
            };
            backoff = Duration::from_millis(src.reconnect_min_ms);
            match processor.handle(&ev, &mut out) {
                Ok(()) => {}
                Err(e @ (ProcessError::MissingColumn(_) | ProcessError::TableReset(_))) => {
                    // squeal stops here (or flushes); the inspector only loses the keys of
                    // this transaction, and says so.
                    metrics::counter!("squeal_inspect_dropped_total", "reason" => "extract_error")
                        .increment(1);
                    tracing::warn!(position = %processor.position(), "{e}; this transaction is not sampled");
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("at {}", processor.position()));
                }
            }
            for p in processor.problems.drain(..) {
                tracing::debug!(problem = %p, "extract");
            }
            if !out.is_empty() {
                let received = super::classify::now_micros();
                let origins = processor.take_origins();
                let commit_us = processor.last_commit_micros();
                for (i, committed) in out.drain(..).enumerate() {
                    on_commit(Commit {
                        committed,
                        // One event commits at most one transaction.
                        origins: if i == 0 { origins.clone() } else { Vec::new() },
                        received,
                        commit_us,
                    });
                }
            }
        };
        metrics::gauge!("squeal_inspect_up").set(0.0);
        metrics::counter!("squeal_inspect_reconnects_total").increment(1);
        let resume = processor.position();
        tracing::warn!(reason = %why, resume = %resume, "binlog stream lost; reconnecting");
        processor.reset_to(&resume);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}
