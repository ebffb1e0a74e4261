//! Wires the stages together: source -> extract -> batch -> sink, and the checkpoint.
//!
//! Tasks: the reader (binlog stream, processor, batcher) in the calling task; the
//! dispatcher (sinks, bounded in-flight, in-order acks); the checkpointer (writes the acked
//! position every `interval_ms`); the lag poller. A bounded channel between reader and
//! dispatcher bounds memory: when the sinks fall behind, reading the binlog waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use mysql_async::prelude::*;
use tokio::sync::{mpsc, watch};

use crate::batch::Batcher;
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, OnMissing, StartAt};
use crate::extract::cascade;
use crate::extract::process::{ProcessError, Processor, Stats};
use crate::model::Position;
use crate::sink::{self, Acked};
use crate::source::live::{self, InfoSchema};

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Until stopped (SIGTERM/SIGINT).
    Follow,
    /// Until the position the server had at start is processed and acknowledged.
    UntilCurrent,
}

/// What a run did (printed by `--until-current`).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub stats: Stats,
    pub seconds: f64,
    pub delivered_keys: u64,
    pub end: Option<Position>,
}

fn before(a: &Position, b: &Position) -> bool {
    (a.file.as_str(), a.pos) < (b.file.as_str(), b.pos)
}

/// Chooses where to start: the checkpoint, or (without one) `start`, which is then written
/// as the checkpoint before anything is read, so a crash before the first acknowledgement
/// resumes there instead of at a later "current" (which would skip what was read). Waits
/// (with backoff) for an unreachable server; `None` if stopped while waiting.
async fn start_position(cfg: &Config) -> anyhow::Result<Option<(Position, Option<String>)>> {
    let Some(mut conn) = live::connect_retrying(&cfg.source).await? else {
        return Ok(None);
    };
    live::check_server(&mut conn, &cfg.source).await?;
    let logs = live::binary_logs(&mut conn).await?;
    let cp = checkpoint::load(&cfg.checkpoint.path)?;
    let pos = match cp {
        Some(cp) => {
            if logs.iter().any(|(f, _)| *f == cp.file) {
                tracing::info!(position = %cp.position(), gtid = ?cp.gtid, "resuming from checkpoint");
                return Ok(Some((cp.position(), cp.gtid)));
            }
            let oldest = logs.first().map(|(f, _)| f.as_str()).unwrap_or("none");
            match cfg.checkpoint.on_missing_binlog {
                OnMissing::Fail => bail!(
                    "the checkpoint {} points at binlog {}:{}, which the server no longer has \
                     (oldest is {oldest}); invalidations between them are lost to squeal. \
                     Flush the caches and remove the checkpoint, or set \
                     [checkpoint] on_missing_binlog = \"flush\"",
                    cfg.checkpoint.path.display(),
                    cp.file,
                    cp.pos
                ),
                OnMissing::Flush => {
                    tracing::warn!(file = %cp.file, oldest, "binlog at checkpoint is gone: flushing every target and resuming at the current position");
                    for s in sink::build(&cfg.sinks)? {
                        s.flush_all()
                            .await
                            .map_err(|e| anyhow::anyhow!("{}: {e}", s.name()))?;
                    }
                    let p = live::server_position(&mut conn).await?;
                    checkpoint::store(
                        &cfg.checkpoint.path,
                        &Checkpoint {
                            file: p.file.clone(),
                            pos: p.pos,
                            gtid: None,
                        },
                    )?;
                    p
                }
            }
        }
        None => {
            let p = match cfg.source.start {
                StartAt::Current => live::server_position(&mut conn).await?,
                StartAt::Earliest => Position {
                    file: logs
                        .first()
                        .map(|(f, _)| f.clone())
                        .context("the server lists no binary logs")?,
                    pos: 4,
                },
            };
            checkpoint::store(
                &cfg.checkpoint.path,
                &Checkpoint {
                    file: p.file.clone(),
                    pos: p.pos,
                    gtid: None,
                },
            )
            .with_context(|| {
                format!(
                    "writing the first checkpoint {}",
                    cfg.checkpoint.path.display()
                )
            })?;
            tracing::info!(position = %p, path = %cfg.checkpoint.path.display(), "first start: start position written as the checkpoint");
            p
        }
    };
    let _ = conn.disconnect().await;
    Ok(Some((pos, None)))
}

/// The cascade check ([`cascade::warn_cascades`]) on its own connection; a failure is logged,
/// never fatal (squeal works without it, only the warning is missing).
async fn check_cascades(cfg: Config) {
    let rules: Vec<crate::extract::rules::Rule> = cfg
        .extract
        .rules
        .iter()
        .filter_map(|r| crate::extract::rules::Rule::new(r).ok())
        .collect();
    let r = async {
        let mut conn = mysql_async::Conn::new(live::opts(&cfg.source)?).await?;
        cascade::warn_cascades(&mut conn, &rules).await?;
        let _ = conn.disconnect().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = r {
        metrics::counter!("squeal_fk_check_errors_total").increment(1);
        tracing::warn!(error = %format!("{e:#}"), "could not look for foreign-key cascades");
    }
}

/// Writes the acknowledged position every `interval`, and once more at the end.
async fn checkpointer(
    cfg: Config,
    mariadb: bool,
    mut acked: watch::Receiver<Acked>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(cfg.checkpoint.interval_ms.max(1));
    let mut written: Option<Position> = None;
    let mut gtid_conn: Option<mysql_async::Conn> = None;
    loop {
        let stopping = *stop.borrow();
        let a = acked.borrow_and_update().clone();
        if let Some(pos) = a.pos {
            if written.as_ref() != Some(&pos) {
                // MariaDB: the GTID position of file:pos, when the stream did not carry it.
                let mut gtid = a.gtid.clone();
                if mariadb && (gtid.is_none() || cfg.source.mariadb_capability < 4) {
                    if gtid_conn.is_none() {
                        if let Ok(o) = live::opts(&cfg.source) {
                            gtid_conn = mysql_async::Conn::new(o).await.ok();
                        }
                    }
                    if let Some(c) = gtid_conn.as_mut() {
                        match c
                            .exec_first::<Option<String>, _, _>(
                                "SELECT BINLOG_GTID_POS(?, ?)",
                                (pos.file.as_str(), pos.pos),
                            )
                            .await
                        {
                            Ok(Some(Some(g))) if !g.is_empty() => gtid = Some(g),
                            Ok(_) => {}
                            Err(_) => gtid_conn = None,
                        }
                    }
                }
                let cp = Checkpoint {
                    file: pos.file.clone(),
                    pos: pos.pos,
                    gtid,
                };
                match checkpoint::store(&cfg.checkpoint.path, &cp) {
                    Ok(()) => {
                        metrics::counter!("squeal_checkpoint_writes_total").increment(1);
                        written = Some(pos);
                    }
                    Err(e) => {
                        metrics::counter!("squeal_checkpoint_errors_total").increment(1);
                        tracing::error!(path = %cfg.checkpoint.path.display(), error = %e, "writing checkpoint");
                    }
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Polls the server's position for the lag metrics.
async fn lag_poller(cfg: Config, reader: Arc<Mutex<(Position, u32)>>) {
    let mut conn: Option<mysql_async::Conn> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if conn.is_none() {
            conn = match live::opts(&cfg.source) {
                Ok(o) => mysql_async::Conn::new(o).await.ok(),
                Err(_) => None,
            };
        }
        let Some(c) = conn.as_mut() else { continue };
        let (rpos, ts) = reader.lock().map(|g| g.clone()).unwrap_or_default();
        let logs = match live::binary_logs(c).await {
            Ok(l) => l,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let mut behind = 0u64;
        let mut seen = false;
        for (f, size) in &logs {
            if *f == rpos.file {
                seen = true;
                behind += size.saturating_sub(rpos.pos);
            } else if seen || f.as_str() > rpos.file.as_str() {
                behind += size.saturating_sub(4);
            }
        }
        metrics::gauge!("squeal_lag_bytes").set(behind as f64);
        let lag = if behind == 0 || ts == 0 {
            0.0
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            now.saturating_sub(ts as u64) as f64
        };
        metrics::gauge!("squeal_lag_seconds").set(lag);
    }
}

enum ReadEnd {
    /// Target reached or stop requested.
    Done,
    /// Connection lost: reconnect.
    Lost(String),
}

/// Runs squeal until stopped (or, in `UntilCurrent` mode, until caught up).
pub async fn run(cfg: Config, mode: Mode) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let sinks = sink::build(&cfg.sinks)?;
    let Some((start, _gtid)) = start_position(&cfg).await? else {
        return Ok(Summary::default());
    };
    let target = if mode == Mode::UntilCurrent {
        let mut c = mysql_async::Conn::new(live::opts(&cfg.source)?).await?;
        let p = live::server_position(&mut c).await?;
        let _ = c.disconnect().await;
        tracing::info!(from = %start, to = %p, "catching up");
        Some(p)
    } else {
        None
    };

    let (btx, brx) = mpsc::channel(cfg.batch.max_in_flight.max(1) * 2);
    let (atx, arx) = watch::channel(Acked::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = Arc::new(crate::batch::SinkLoad::default());
    let dispatcher = tokio::spawn(sink::dispatch(
        brx,
        sinks,
        cfg.batch.max_in_flight,
        atx,
        load.clone(),
    ));

    let mut processor = Processor::new(
        &cfg.extract,
        Box::new(InfoSchema::new(live::opts(&cfg.source)?)),
    )
    .map_err(|e| anyhow::anyhow!("[extract]: {e}"))?;
    {
        let mut c = mysql_async::Conn::new(live::opts(&cfg.source)?)
            .await
            .context("connecting to the server")?;
        let zone = live::time_zone(&mut c, cfg.extract.time_zone.as_deref()).await?;
        tracing::info!(zone = %zone.name, "TIMESTAMP values render in this time zone");
        processor.set_time_zone(zone);
        let _ = c.disconnect().await;
    }
    processor.reset_to(&start);
    let mut batcher = Batcher::new(
        cfg.batch.max_bytes,
        Duration::from_micros(cfg.batch.linger_us),
        btx,
    )
    .send_when_idle(load.clone());
    check_cascades(cfg.clone()).await;
    let mut ddl_seen = 0u64;
    let reader_pos = Arc::new(Mutex::new((start.clone(), 0u32)));
    let poller = tokio::spawn(lag_poller(cfg.clone(), reader_pos.clone()));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut prev = Stats::default();
    let mut backoff = Duration::from_millis(cfg.source.reconnect_min_ms);
    let dead_after = cfg.heartbeat() * 3 + Duration::from_secs(1);
    let mut checkpointer_task = None;
    let mut out = Vec::new();
    // Extract problems (dropped keys, schema mismatches...): 20 lines per 10 s, then a
    // count of the rest.
    let mut problem_log = crate::ratelimit::Limited::new(Duration::from_secs(10), 20);
    let mut last_publish = Instant::now();
    // Disconnects by the server because another replica registered our server_id.
    let mut collisions: Vec<Instant> = Vec::new();
    let result: anyhow::Result<()> = 'outer: loop {
        let pos = processor.position();
        let (mut stream, info) = match live::open_stream(&cfg.source, &pos).await {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!("squeal_reconnects_total").increment(1);
                let msg = format!("{e:#}");
                if e.downcast_ref::<live::Refused>().is_some() {
                    break Err(e);
                }
                tracing::warn!(address = %live::address(&cfg.source), error = %msg, retry_in = ?backoff, "binlog connection failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                    _ = sigterm.recv() => break Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_millis(cfg.source.reconnect_max_ms));
                continue;
            }
        };
        if checkpointer_task.is_none() {
            checkpointer_task = Some(tokio::spawn(checkpointer(
                cfg.clone(),
                info.mariadb,
                arx.clone(),
                stop_rx.clone(),
            )));
        }
        tracing::info!(position = %pos, server = %info.version, "binlog stream open");
        let end: ReadEnd = loop {
            if let Some(t) = &target {
                if !processor.in_transaction() && !before(&processor.position(), t) {
                    break ReadEnd::Done;
                }
            }
            let deadline = batcher.deadline();
            let ev = tokio::select! {
                ev = tokio::time::timeout(dead_after, stream.next()) => ev,
                _ = async { tokio::time::sleep_until(deadline.expect("guarded").into()).await }, if deadline.is_some() => {
                    if batcher.flush().await.is_err() { break 'outer Err(anyhow::anyhow!("sink stage stopped")); }
                    continue;
                }
                _ = sigterm.recv() => break ReadEnd::Done,
                _ = tokio::signal::ctrl_c() => break ReadEnd::Done,
            };
            let ev = match ev {
                Err(_) => break ReadEnd::Lost(format!("no event or heartbeat for {dead_after:?}")),
                Ok(None) => break ReadEnd::Lost("the server ended the stream".into()),
                Ok(Some(Err(e))) => {
                    let msg = e.to_string();
                    if msg.contains("1236") || msg.contains("Could not find first log file") {
                        break 'outer Err(anyhow::anyhow!(
                            "the server cannot send binlog {pos}: {msg}"
                        ));
                    }
                    if msg.contains("same server_uuid/server_id") || msg.contains("same server_id")
                    {
                        // MariaDB/MySQL drop the older of two connections with one server_id:
                        // reconnecting would only take turns with the other replica.
                        collisions.retain(|t| t.elapsed() < Duration::from_secs(120));
                        collisions.push(Instant::now());
                        metrics::counter!("squeal_server_id_collisions_total").increment(1);
                        if collisions.len() >= 3 {
                            break 'outer Err(anyhow::anyhow!(
                                "[source] server_id = {} is used by another replica of {}: the \
                                 server dropped squeal's binlog connection {} times because a \
                                 replica with the same server_id connected ({msg}). Give squeal a \
                                 server_id no other replica uses (SHOW SLAVE HOSTS on the server \
                                 lists them)",
                                cfg.source.server_id,
                                live::address(&cfg.source),
                                collisions.len()
                            ));
                        }
                    }
                    break ReadEnd::Lost(msg);
                }
                Ok(Some(Ok(ev))) => ev,
            };
            metrics::gauge!("squeal_up").set(1.0);
            backoff = Duration::from_millis(cfg.source.reconnect_min_ms);
            if let Err(e) = processor.handle(&ev, &mut out) {
                match e {
                    ProcessError::Spill(_)
                    | ProcessError::Unsupported(..)
                    | ProcessError::Event(..) => {
                        break 'outer Err(anyhow::anyhow!("at {}: {e}", processor.position()));
                    }
                    ProcessError::MissingColumn(_) | ProcessError::TableReset(_) => {
                        tracing::error!(checkpoint_stays_at = %processor.position(), "{e}");
                        break 'outer Err(anyhow::anyhow!("{e}"));
                    }
                }
            }
            if processor.stats.ddl != ddl_seen {
                // Foreign keys may have changed.
                ddl_seen = processor.stats.ddl;
                tokio::spawn(check_cascades(cfg.clone()));
            }
            for c in out.drain(..) {
                if batcher.push(c).await.is_err() {
                    break 'outer Err(anyhow::anyhow!("sink stage stopped"));
                }
            }
            // Publish every 64 events, and at least every 50 ms (so an idle stream's last
            // events show up at once).
            if processor.stats.events % 64 == 0
                || last_publish.elapsed() > Duration::from_millis(50)
                || !processor.problems.is_empty()
            {
                last_publish = Instant::now();
                crate::metrics::publish(&processor.stats, &mut prev);
                if let Ok(mut g) = reader_pos.lock() {
                    *g = (processor.position(), processor.last_ts);
                }
                log_problems(&mut processor.problems, &mut problem_log, false);
            }
        };
        match end {
            ReadEnd::Done => break Ok(()),
            ReadEnd::Lost(why) => {
                metrics::counter!("squeal_reconnects_total").increment(1);
                metrics::gauge!("squeal_up").set(0.0);
                let resume = processor.position();
                tracing::warn!(reason = %why, resume = %resume, retry_in = ?backoff, "binlog stream lost; reconnecting");
                processor.reset_to(&resume);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(cfg.source.reconnect_max_ms));
            }
        }
    };
    crate::metrics::publish(&processor.stats, &mut prev);
    log_problems(&mut processor.problems, &mut problem_log, true);
    // Deliver what is batched, then the final checkpoint.
    let _ = batcher.flush().await;
    drop(batcher);
    let drained = tokio::time::timeout(Duration::from_secs(30), dispatcher).await;
    if drained.is_err() {
        tracing::error!(
            "sinks did not acknowledge everything within 30 s; the checkpoint stays behind"
        );
    }
    let _ = stop_tx.send(true);
    if let Some(t) = checkpointer_task {
        let _ = t.await;
    }
    poller.abort();
    result?;
    let acked = arx.borrow().clone();
    Ok(Summary {
        stats: processor.stats.clone(),
        seconds: started.elapsed().as_secs_f64(),
        delivered_keys: acked.keys,
        end: acked.pos,
    })
}

/// Logs extract problems through the rate limiter, then the count it suppressed (`end`:
/// say it now, even inside the window, as squeal is stopping).
fn log_problems(problems: &mut Vec<String>, limiter: &mut crate::ratelimit::Limited, end: bool) {
    for p in problems.drain(..) {
        if limiter.allow() {
            tracing::warn!(problem = %p, "extract");
        }
    }
    if let Some((n, over)) = limiter.summary(end) {
        tracing::warn!(
            suppressed = n,
            "extract problems: {}",
            crate::ratelimit::suppressed_text(n, over)
        );
    }
}
