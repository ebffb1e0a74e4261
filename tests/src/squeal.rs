//! The `squeal` sidecar as a child process: a config in its own temp dir, readiness through
//! its Prometheus port (`squeal_up 1` once its binlog stream is open), and its metrics.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{free_port, loopback, server_dir, Server};

/// A running squeal.
pub struct Squeal {
    pub server: Server,
    pub config: PathBuf,
    pub metrics_port: u16,
    bin: PathBuf,
}

impl Squeal {
    /// Starts squeal with `config` (TOML without a `[metrics]` section: the harness adds one
    /// with a free port) and waits until its binlog stream is open.
    pub fn start(config: &str) -> Result<Squeal> {
        let dir = server_dir("squeal")?;
        Squeal::start_in(dir, config)
    }

    /// Like [`Squeal::start`], reusing a directory (its checkpoint survives a restart).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Result<Squeal> {
        Squeal::start_bin(crate::project::bin("squeal"), dir, config)
    }

    /// Like [`Squeal::start_in`] with an explicit binary (benchmarks run the release build).
    pub fn start_bin(bin: PathBuf, dir: tempfile::TempDir, config: &str) -> Result<Squeal> {
        let metrics_port = free_port();
        let text = format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
        let path = dir.path().join("squeal.toml");
        std::fs::write(&path, text)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&path);
        cmd.env(
            "RUST_LOG",
            std::env::var("SQUEAL_LOG").unwrap_or_else(|_| "info".into()),
        );
        let server = Server::spawn(
            "squeal",
            dir,
            cmd,
            loopback(metrics_port),
            Duration::from_secs(20),
        )?;
        let mut s = Squeal {
            server,
            config: path,
            metrics_port,
            bin,
        };
        s.wait_up(Duration::from_secs(20))?;
        Ok(s)
    }

    /// Restarts a killed squeal with the same config (and checkpoint).
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config").arg(&self.config);
        cmd.env(
            "RUST_LOG",
            std::env::var("SQUEAL_LOG").unwrap_or_else(|_| "info".into()),
        );
        self.server.restart(cmd, Duration::from_secs(20))?;
        self.wait_up(Duration::from_secs(20))
    }

    fn wait_up(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.server.check_alive()?;
            if self.metric("squeal_up").unwrap_or(0.0) >= 1.0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "squeal not up within {timeout:?}; log:\n{}",
                    self.server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        crate::prometheus::scrape(self.metrics_port)
    }

    /// A metric's value (a bare name sums its label sets), `None` if absent or if squeal
    /// does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        crate::prometheus::sample(&self.metrics_text().ok()?, name)
    }

    /// Waits until `name` reaches `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: f64, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name).unwrap_or(0.0);
            if v >= at_least {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} = {v}, wanted >= {at_least} within {timeout:?}; log:\n{}",
                    self.server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Path of the checkpoint file squeal writes (`checkpoint.toml` in its directory).
    pub fn dir(&self) -> PathBuf {
        self.server.dir().to_path_buf()
    }
}

/// A squeal config for `db` with `extra` TOML (rules, outboxes...) and memcache endpoints.
pub fn config(
    db_url: &str,
    endpoints: &[String],
    checkpoint: &std::path::Path,
    extra: &str,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[source]\nurl = \"{db_url}\"\nserver_id = 777\nheartbeat_ms = 500\nreconnect_min_ms = 50\n\
         reconnect_max_ms = 500\n\n[[sink]]\ntype = \"memcache\"\n\
         endpoints = [{}]\ntimeout_ms = 1000\n\n[checkpoint]\npath = \"{}\"\ninterval_ms = 50\n\n{extra}\n",
        eps.join(", "),
        checkpoint.display()
    )
}

/// Reads `checkpoint.toml`-style files: (file, pos).
pub fn read_checkpoint(path: &std::path::Path) -> Result<Option<(String, u64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading checkpoint"),
    };
    let mut file = None;
    let mut pos = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("file = ") {
            file = Some(v.trim_matches('"').to_string());
        }
        if let Some(v) = line.strip_prefix("pos = ") {
            pos = v.trim().parse().ok();
        }
    }
    Ok(file.zip(pos))
}

/// Caches each of `keys` in `mc` (value `cached`), so a test can watch squeal delete them.
pub fn cache(mc: &crate::Memcached, keys: &[&str]) -> Result<()> {
    let mut c = crate::McClient::connect(&mc.addr())?;
    for k in keys {
        c.set(k, b"cached")?;
    }
    Ok(())
}

/// Waits (up to 15 s) until every key of `gone` is deleted from `mc`, then checks every key
/// of `kept` is still cached; fails with `squeal`'s log.
pub fn expect_invalidated(
    mc: &crate::Memcached,
    gone: &[&str],
    kept: &[&str],
    squeal: &Squeal,
) -> Result<()> {
    let mut c = crate::McClient::connect(&mc.addr())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let present: Vec<&str> = gone
            .iter()
            .copied()
            .filter(|k| c.get(k).ok().flatten().is_some())
            .collect();
        if present.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "keys still cached: {present:?}; squeal log:\n{}",
                squeal.server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for k in kept {
        if c.get(k)?.is_none() {
            bail!("{k} was deleted but should not have been (a data value made a key?)");
        }
    }
    Ok(())
}

/// The keys of transaction `t` of the fault tests' `app.items` workload (rule
/// `item:{id}`, `item_group:{grp}`): it writes rows 2t and 2t+1 of group t.
pub fn keys_of(t: u32) -> [String; 3] {
    [
        format!("item:{}", 2 * t),
        format!("item:{}", 2 * t + 1),
        format!("item_group:{t}"),
    ]
}

/// How many keys of the `committed` transactions (see [`keys_of`]) `c` still holds,
/// asked 100 transactions at a time.
pub fn cached_keys_of(c: &mut crate::McClient, committed: &[u32]) -> Result<usize> {
    let mut left = 0;
    for chunk in committed.chunks(100) {
        let keys: Vec<String> = chunk.iter().flat_map(|&t| keys_of(t)).collect();
        let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        left += c
            .get_multi(&refs)?
            .iter()
            .filter(|(_, v)| v.is_some())
            .count();
    }
    Ok(left)
}
