//! The reader: the live binlog stream through the processor into the batcher. It opens the
//! stream at the processor's position, reconnects with backoff when the stream is lost
//! (resuming after the last whole transaction), and stops on SIGTERM/SIGINT, at a target
//! position (`--until-current`), or on an error no reconnect can mend.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mysql_async::BinlogStream;
use mysql_common::binlog::events::Event;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::batch::Batcher;
use crate::config::Config;
use crate::extract::cascade;
use crate::extract::process::{ProcessError, Processor, Stats};
use crate::model::Position;
use crate::ratelimit::Limited;
use crate::source::live::{self, ServerInfo};

/// How reading one stream ended.
enum ReadEnd {
    /// Target reached or stop requested.
    Done,
    /// Connection lost: reconnect.
    Lost(String),
}

/// The reader's state across reconnects.
pub struct Reader {
    cfg: Config,
    pub processor: Processor,
    pub batcher: Batcher,
    /// Stop once the processor is past this position (outside a transaction).
    target: Option<Position>,
    /// Position and timestamp of the last event read, for the lag poller.
    position: Arc<Mutex<(Position, u32)>>,
    sigterm: Signal,
    backoff: Duration,
    /// No event nor heartbeat for this long: the connection is dead.
    dead_after: Duration,
    out: Vec<crate::model::Committed>,
    /// Counters as last published.
    published: Stats,
    last_publish: Instant,
    /// Extract problems (dropped keys, schema mismatches...): 20 lines per 10 s, then a
    /// count of the rest.
    problem_log: Limited,
    ddl_seen: u64,
    /// Disconnects by the server because another replica registered our server_id.
    collisions: Vec<Instant>,
}

impl Reader {
    pub fn new(
        cfg: &Config,
        processor: Processor,
        batcher: Batcher,
        target: Option<Position>,
        position: Arc<Mutex<(Position, u32)>>,
    ) -> anyhow::Result<Reader> {
        Ok(Reader {
            processor,
            batcher,
            target,
            position,
            sigterm: signal(SignalKind::terminate())?,
            backoff: Duration::from_millis(cfg.source.reconnect_min_ms),
            dead_after: cfg.heartbeat() * 3 + Duration::from_secs(1),
            out: Vec::new(),
            published: Stats::default(),
            last_publish: Instant::now(),
            problem_log: Limited::new(Duration::from_secs(10), 20),
            ddl_seen: 0,
            collisions: Vec::new(),
            cfg: cfg.clone(),
        })
    }

    /// Reads until stopped, caught up or failed; `on_open` sees the server each time the
    /// stream opens. Publishes the last counters and problems on the way out.
    pub async fn follow(&mut self, mut on_open: impl FnMut(&ServerInfo)) -> anyhow::Result<()> {
        let result = self.follow_streams(&mut on_open).await;
        crate::metrics::publish(&self.processor.stats, &mut self.published);
        log_problems(&mut self.processor.problems, &mut self.problem_log, true);
        result
    }

    async fn follow_streams(
        &mut self,
        on_open: &mut impl FnMut(&ServerInfo),
    ) -> anyhow::Result<()> {
        loop {
            let pos = self.processor.position();
            let Some((stream, info)) = self.open(&pos).await? else {
                return Ok(());
            };
            on_open(&info);
            tracing::info!(position = %pos, server = %info.version, "binlog stream open");
            match self.read(stream, &pos).await? {
                ReadEnd::Done => return Ok(()),
                ReadEnd::Lost(why) => {
                    metrics::counter!("squeal_reconnects_total").increment(1);
                    metrics::gauge!("squeal_up").set(0.0);
                    let resume = self.processor.position();
                    tracing::warn!(reason = %why, resume = %resume, retry_in = ?self.backoff, "binlog stream lost; reconnecting");
                    self.processor.reset_to(&resume);
                    tokio::time::sleep(self.backoff).await;
                    self.back_off();
                }
            }
        }
    }

    fn back_off(&mut self) {
        self.backoff =
            (self.backoff * 2).min(Duration::from_millis(self.cfg.source.reconnect_max_ms));
    }

    /// Opens the stream at `pos`, retrying with backoff; `None` if stopped while waiting,
    /// an error if the server refuses squeal for good.
    async fn open(&mut self, pos: &Position) -> anyhow::Result<Option<(BinlogStream, ServerInfo)>> {
        loop {
            let e = match live::open_stream(&self.cfg.source, pos).await {
                Ok(s) => return Ok(Some(s)),
                Err(e) => e,
            };
            metrics::counter!("squeal_reconnects_total").increment(1);
            if e.downcast_ref::<live::Refused>().is_some() {
                return Err(e);
            }
            tracing::warn!(address = %live::address(&self.cfg.source), error = %format!("{e:#}"), retry_in = ?self.backoff, "binlog connection failed");
            tokio::select! {
                _ = tokio::time::sleep(self.backoff) => {}
                _ = tokio::signal::ctrl_c() => return Ok(None),
                _ = self.sigterm.recv() => return Ok(None),
            }
            self.back_off();
        }
    }

    /// Reads one stream until it ends, the target is reached or a stop is requested.
    async fn read(&mut self, mut stream: BinlogStream, pos: &Position) -> anyhow::Result<ReadEnd> {
        loop {
            if let Some(t) = &self.target {
                if !self.processor.in_transaction() && !before(&self.processor.position(), t) {
                    return Ok(ReadEnd::Done);
                }
            }
            let ev = tokio::select! {
                ev = tokio::time::timeout(self.dead_after, stream.next()) => ev,
                _ = self.sigterm.recv() => return Ok(ReadEnd::Done),
                _ = tokio::signal::ctrl_c() => return Ok(ReadEnd::Done),
            };
            let ev = match ev {
                Err(_) => {
                    return Ok(ReadEnd::Lost(format!(
                        "no event or heartbeat for {:?}",
                        self.dead_after
                    )))
                }
                Ok(None) => return Ok(ReadEnd::Lost("the server ended the stream".into())),
                Ok(Some(Err(e))) => {
                    return self.stream_error(e.to_string(), pos).map(ReadEnd::Lost)
                }
                Ok(Some(Ok(ev))) => ev,
            };
            metrics::gauge!("squeal_up").set(1.0);
            // Reading the binlog: systemd's Type=notify may go on (a repeat is harmless).
            if let Err(e) = marker::systemd::notify_ready() {
                tracing::warn!("systemd readiness notification failed: {e}");
            }
            self.backoff = Duration::from_millis(self.cfg.source.reconnect_min_ms);
            self.event(&ev).await?;
        }
    }

    /// A stream error: the reason to reconnect, or an error when reconnecting cannot help
    /// (the binlog is gone; another replica keeps taking our server_id).
    fn stream_error(&mut self, msg: String, pos: &Position) -> anyhow::Result<String> {
        if msg.contains("1236") || msg.contains("Could not find first log file") {
            anyhow::bail!("the server cannot send binlog {pos}: {msg}");
        }
        if msg.contains("same server_uuid/server_id") || msg.contains("same server_id") {
            // MariaDB/MySQL drop the older of two connections with one server_id:
            // reconnecting would only take turns with the other replica.
            self.collisions
                .retain(|t| t.elapsed() < Duration::from_secs(120));
            self.collisions.push(Instant::now());
            metrics::counter!("squeal_server_id_collisions_total").increment(1);
            if self.collisions.len() >= 3 {
                anyhow::bail!(
                    "[source] server_id = {} is used by another replica of {}: the \
                     server dropped squeal's binlog connection {} times because a \
                     replica with the same server_id connected ({msg}). Give squeal a \
                     server_id no other replica uses (SHOW SLAVE HOSTS on the server \
                     lists them)",
                    self.cfg.source.server_id,
                    live::address(&self.cfg.source),
                    self.collisions.len()
                );
            }
        }
        Ok(msg)
    }

    /// One event through the processor; its committed transactions into the batcher.
    async fn event(&mut self, ev: &Event) -> anyhow::Result<()> {
        if let Err(e) = self.processor.handle(ev, &mut self.out) {
            match e {
                ProcessError::Spill(_)
                | ProcessError::Unsupported(..)
                | ProcessError::Event(..) => {
                    anyhow::bail!("at {}: {e}", self.processor.position());
                }
                ProcessError::MissingColumn(_) | ProcessError::TableReset(_) => {
                    tracing::error!(checkpoint_stays_at = %self.processor.position(), "{e}");
                    anyhow::bail!("{e}");
                }
            }
        }
        if self.processor.stats.ddl != self.ddl_seen {
            // Foreign keys may have changed.
            self.ddl_seen = self.processor.stats.ddl;
            tokio::spawn(cascade::check_cascades(self.cfg.clone()));
        }
        for c in self.out.drain(..) {
            if let Some(us) = c.commit_us {
                // The receive stage: from the server's commit (MySQL 8 dates it to the
                // microsecond) to squeal reading it.
                metrics::histogram!("squeal_receive_delay_seconds")
                    .record(crate::model::now_micros().saturating_sub(us) as f64 / 1e6);
            }
            if self.batcher.push(c).await.is_err() {
                anyhow::bail!("sink stage stopped");
            }
        }
        // Publish every 64 events, and at least every 50 ms (so an idle stream's last
        // events show up at once).
        if self.processor.stats.events.is_multiple_of(64)
            || self.last_publish.elapsed() > Duration::from_millis(50)
            || !self.processor.problems.is_empty()
        {
            self.publish();
        }
        Ok(())
    }

    fn publish(&mut self) {
        self.last_publish = Instant::now();
        crate::metrics::publish(&self.processor.stats, &mut self.published);
        if let Ok(mut g) = self.position.lock() {
            *g = (self.processor.position(), self.processor.last_ts);
        }
        log_problems(&mut self.processor.problems, &mut self.problem_log, false);
    }
}

fn before(a: &Position, b: &Position) -> bool {
    (a.file.as_str(), a.pos) < (b.file.as_str(), b.pos)
}

/// Logs extract problems through the rate limiter, then the count it suppressed (`end`:
/// say it now, even inside the window, as squeal is stopping).
fn log_problems(problems: &mut Vec<String>, limiter: &mut Limited, end: bool) {
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
