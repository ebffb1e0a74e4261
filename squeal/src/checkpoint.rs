//! The checkpoint: the binlog position (file:pos, and the GTID position when known) up to
//! which every key has been acknowledged by every sink. Written atomically: to a temporary
//! file, fsynced, renamed over the old one, and the directory fsynced (`marker::durable`).
//! After a crash squeal resumes there and re-sends what followed (at least once, never a
//! skip). Here too: where a run starts ([`start_position`]) and the task that writes the
//! acknowledged position ([`checkpointer`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, OnMissing, StartAt};
use crate::delivery::Acked;
use crate::model::Position;
use crate::sink;
use crate::source::live;

/// What the checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub file: String,
    pub pos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl Checkpoint {
    /// A checkpoint at `p`, without a GTID position.
    pub fn at(p: &Position) -> Checkpoint {
        Checkpoint {
            file: p.file.clone(),
            pos: p.pos,
            gtid: None,
        }
    }

    pub fn position(&self) -> Position {
        Position {
            file: self.file.clone(),
            pos: self.pos,
        }
    }
}

/// Reads the checkpoint; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let cp: Checkpoint = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
            if cp.file.is_empty() || cp.pos < 4 {
                anyhow::bail!("checkpoint {}: no valid position", path.display());
            }
            Ok(Some(cp))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("reading checkpoint {}: {e}", path.display()),
    }
}

/// Writes the checkpoint atomically and durably (`marker::durable`: write, fsync, rename,
/// fsync the directory).
pub fn store(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let text = toml::to_string(cp).map_err(std::io::Error::other)?;
    marker::durable::write_atomically(path, text.as_bytes())
}

/// Chooses where to start: the checkpoint, or (without one) `start`, which is then written
/// as the checkpoint before anything is read, so a crash before the first acknowledgement
/// resumes there instead of at a later "current" (which would skip what was read). Waits
/// (with backoff) for an unreachable server; `None` if stopped while waiting.
pub async fn start_position(cfg: &Config) -> anyhow::Result<Option<(Position, Option<String>)>> {
    let Some(mut conn) = live::connect_retrying(&cfg.source).await? else {
        return Ok(None);
    };
    live::check_server(&mut conn, &cfg.source).await?;
    let logs = live::binary_logs(&mut conn).await?;
    let cp = load(&cfg.checkpoint.path)?;
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
                    store(&cfg.checkpoint.path, &Checkpoint::at(&p))?;
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
            store(&cfg.checkpoint.path, &Checkpoint::at(&p)).with_context(|| {
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

/// Writes the acknowledged position every `interval`, and once more at the end.
pub async fn checkpointer(
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
                match store(&cfg.checkpoint.path, &cp) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        assert_eq!(load(&path).unwrap(), None);
        let a = Checkpoint {
            file: "bin.000001".into(),
            pos: 1234,
            gtid: Some("0-1-7".into()),
        };
        store(&path, &a).unwrap();
        assert_eq!(load(&path).unwrap(), Some(a));
        let b = Checkpoint {
            file: "bin.000002".into(),
            pos: 4,
            gtid: None,
        };
        store(&path, &b).unwrap();
        assert_eq!(load(&path).unwrap(), Some(b));
        std::fs::write(&path, "garbage").unwrap();
        assert!(load(&path).is_err());
    }
}
