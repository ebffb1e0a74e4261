//! Wires the stages together: source -> extract -> batch -> sink (through the delivery
//! dispatcher), and the checkpoint.
//!
//! Tasks: the reader (binlog stream, processor, batcher; [`crate::reader`]) in the calling
//! task; the dispatcher ([`crate::delivery`]: sinks, bounded in-flight, in-order acks); the
//! checkpointer ([`checkpoint::checkpointer`]: writes the acked position every
//! `interval_ms`); the lag poller ([`crate::source::lag`]). A bounded channel between
//! reader and dispatcher bounds memory: when the sinks fall behind, reading the binlog waits.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::batch::Batcher;
use crate::checkpoint;
use crate::config::Config;
use crate::delivery::{self, Acked};
use crate::extract::cascade;
use crate::extract::process::{Processor, Stats};
use crate::model::Position;
use crate::reader::Reader;
use crate::sink;
use crate::source::{lag, live};

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

/// Pieces the batcher may queue ahead of the dispatcher.
const PIECES_QUEUED: usize = 512;

/// Runs squeal until stopped (or, in `UntilCurrent` mode, until caught up).
pub async fn run(cfg: Config, mode: Mode) -> anyhow::Result<Summary> {
    let started = Instant::now();
    for (_, msg) in cfg.ignored_settings() {
        tracing::warn!("{msg}");
    }
    let sinks = sink::build(&cfg.sinks)?;
    let Some((start, _gtid)) = checkpoint::start_position(&cfg).await? else {
        return Ok(Summary::default());
    };
    let target = match mode {
        Mode::UntilCurrent => Some(catch_up_target(&cfg, &start).await?),
        Mode::Follow => None,
    };

    // In pieces (a transaction, or a max_bytes part of a large one): enough queued to fill
    // a packet while one is in flight, few enough to bound memory.
    let (btx, brx) = mpsc::channel(PIECES_QUEUED);
    let (atx, arx) = watch::channel(Acked::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(delivery::dispatch(
        brx,
        sinks,
        delivery::Packing::from(&cfg.batch),
        atx,
    ));

    let mut processor = processor(&cfg).await?;
    processor.reset_to(&start);
    let batcher = Batcher::new(cfg.batch.max_bytes, btx);
    cascade::check_cascades(cfg.clone()).await;
    let reader_pos = Arc::new(Mutex::new((start.clone(), 0u32)));
    let poller = tokio::spawn(lag::poll(cfg.clone(), reader_pos.clone()));

    let mut reader = Reader::new(&cfg, processor, batcher, target, reader_pos)?;
    // The checkpointer starts with the first stream, once the server's flavour is known.
    let mut checkpointer: Option<JoinHandle<()>> = None;
    let result = reader
        .follow(|info| {
            checkpointer.get_or_insert_with(|| {
                tokio::spawn(checkpoint::checkpointer(
                    cfg.clone(),
                    info.mariadb,
                    arx.clone(),
                    stop_rx.clone(),
                ))
            });
        })
        .await;

    let Reader {
        processor, batcher, ..
    } = reader;
    drain(batcher, dispatcher).await;
    let _ = stop_tx.send(true);
    if let Some(t) = checkpointer {
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

/// Where `--until-current` stops: the server's position now.
async fn catch_up_target(cfg: &Config, start: &Position) -> anyhow::Result<Position> {
    let mut c = mysql_async::Conn::new(live::opts(&cfg.source)?).await?;
    let p = live::server_position(&mut c).await?;
    let _ = c.disconnect().await;
    tracing::info!(from = %start, to = %p, "catching up");
    Ok(p)
}

/// The processor of `[extract]`, with the server's TIMESTAMP time zone (or the configured
/// one) and information_schema for tables without FULL row metadata.
async fn processor(cfg: &Config) -> anyhow::Result<Processor> {
    let mut processor = Processor::new(
        &cfg.extract,
        Box::new(live::InfoSchema::new(live::opts(&cfg.source)?)),
    )
    .map_err(|e| anyhow::anyhow!("[extract]: {e}"))?;
    let mut c = mysql_async::Conn::new(live::opts(&cfg.source)?)
        .await
        .context("connecting to the server")?;
    let zone = live::time_zone(&mut c, cfg.extract.time_zone.as_deref()).await?;
    tracing::info!(zone = %zone.name, "TIMESTAMP values render in this time zone");
    processor.set_time_zone(zone);
    let _ = c.disconnect().await;
    Ok(processor)
}

/// Delivers what is batched and waits (30 s at most) for the dispatcher to have it all
/// acknowledged, so the final checkpoint covers it.
async fn drain(mut batcher: Batcher, dispatcher: JoinHandle<()>) {
    let _ = batcher.flush().await;
    drop(batcher);
    let drained = tokio::time::timeout(Duration::from_secs(30), dispatcher).await;
    if drained.is_err() {
        tracing::error!(
            "sinks did not acknowledge everything within 30 s; the checkpoint stays behind"
        );
    }
}
