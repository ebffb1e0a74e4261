//! squeal-router instances for tests: writes a config with run-time ports, starts the
//! built binary, waits until it listens.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{free_port, loopback, server_dir, Server};

/// A running `squeal-router`, killed on drop.
pub struct Router {
    pub server: Server,
    pub admin_port: u16,
    pub config: PathBuf,
}

impl Router {
    /// One pool named `main` over `servers` (`host:port[:weight]`), serving client traffic;
    /// `extra` is appended (e.g. `[limits]` or more pool keys under `[pools.main]`).
    pub fn start(servers: &[String], pool_keys: &str, extra: &str) -> Result<Router> {
        Router::start_workers(servers, 2, pool_keys, extra)
    }

    /// [`Router::start`] with `workers` threads.
    pub fn start_workers(
        servers: &[String],
        workers: usize,
        pool_keys: &str,
        extra: &str,
    ) -> Result<Router> {
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let body = format!(
            "workers = {workers}\nroute = \"main\"\n\n[pools.main]\nservers = [{}]\n{pool_keys}\n{extra}\n",
            list.join(", ")
        );
        Router::start_config(&body)
    }

    /// Starts with `body` as config, after `listen` and `admin` lines the harness adds.
    pub fn start_config(body: &str) -> Result<Router> {
        let port = free_port();
        let admin_port = free_port();
        let dir = server_dir("router")?;
        let config = dir.path().join("router.toml");
        std::fs::write(
            &config,
            format!("listen = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{admin_port}\"\n{body}"),
        )?;
        let mut cmd = Command::new(router_bin());
        cmd.arg("--config").arg(&config);
        let server = Server::spawn("router", dir, cmd, loopback(port), Duration::from_secs(10))?;
        Ok(Router {
            server,
            admin_port,
            config,
        })
    }

    /// Starts on a config file as the operator wrote it (TOML, `nutcracker.yml` or mcrouter
    /// JSON), waiting for `listen_port`; metrics on a run-time `--admin` port.
    pub fn start_file(config: &std::path::Path, listen_port: u16) -> Result<Router> {
        let admin_port = free_port();
        let dir = server_dir("router")?;
        let mut cmd = Command::new(router_bin());
        cmd.arg("--config")
            .arg(config)
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin_port}"));
        let server = Server::spawn(
            "router",
            dir,
            cmd,
            loopback(listen_port),
            Duration::from_secs(10),
        )?;
        Ok(Router {
            server,
            admin_port,
            config: config.to_path_buf(),
        })
    }

    pub fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    /// The Prometheus text of the admin port's `/metrics`.
    pub fn metrics_text(&self) -> Result<String> {
        crate::prometheus::scrape(self.admin_port)
    }

    /// A metric's value: a bare name sums all its label sets, `name{labels}` is one sample;
    /// 0 when absent or when the router does not answer (e.g. while it restarts).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().unwrap_or_default();
        crate::prometheus::sample(&text, name).unwrap_or(0.0)
    }

    /// The `STAT name value` pairs of the router's `stats` command, on a new connection.
    pub fn stats(&self) -> Result<Vec<(String, String)>> {
        let mut c = crate::McClient::connect(&self.addr())?;
        Ok(c.stats("")?
            .iter()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// What shows that backend connections were reset, for isolation and load tests to
    /// compare before and after: see [`BackendCounters`].
    pub fn backend_counters(&self) -> Result<BackendCounters> {
        let stats = self.stats()?;
        let sum = |suffix: &str| -> u64 {
            stats
                .iter()
                .filter(|(k, _)| k.starts_with("server:") && k.ends_with(suffix))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        };
        let get = |name: &str| -> u64 {
            stats
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        let text = self.metrics_text().unwrap_or_default();
        let resets = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.contains("reset") || l.contains("desync"))
            .map(str::to_string)
            .collect();
        Ok(BackendCounters {
            connects: sum(":connects"),
            connections_up: sum(":connections_up"),
            server_errors: sum(":errors"),
            timeouts: sum(":timeouts"),
            backend_errors: get("backend_errors"),
            client_errors: get("client_errors"),
            reset_metrics: resets,
        })
    }

    /// Why backend connections went down, from the router's log: each distinct `reason`
    /// of a "backend connection down" line with how often it was logged.
    pub fn backend_down_reasons(&self) -> Vec<(String, usize)> {
        let log = std::fs::read(&self.server.log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let mut counts: Vec<(String, usize)> = Vec::new();
        for line in log
            .lines()
            .filter(|l| l.contains("backend connection down"))
        {
            let plain = strip_ansi(line);
            let reason = plain
                .split_once("reason=")
                .map_or("?", |(_, r)| r.trim())
                .to_string();
            match counts.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => counts.push((reason, 1)),
            }
        }
        counts
    }

    /// SIGKILLs the router and starts it again with the same config and ports: what a
    /// crash and a supervisor restart look like.
    pub fn restart(&mut self) -> Result<()> {
        self.server.kill();
        let mut cmd = Command::new(router_bin());
        cmd.arg("--config").arg(&self.config);
        self.server.restart(cmd, Duration::from_secs(10))
    }

    /// Runs `squeal-router --check` on a config text: (exit success, stderr).
    pub fn check(config_text: &str) -> Result<(bool, String)> {
        let dir = server_dir("router-check")?;
        let path = dir.path().join("router.toml");
        std::fs::write(&path, config_text)?;
        let out = Command::new(router_bin())
            .arg("--check")
            .arg("--config")
            .arg(&path)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// The `squeal-router` to run: `$SQUEAL_ROUTER_BIN`, else the one beside the running
/// program (a bench binary in `target/release/`), else the test profile's build.
fn router_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SQUEAL_ROUTER_BIN") {
        return PathBuf::from(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("squeal-router")));
    match beside {
        Some(p) if p.exists() => p,
        _ => crate::project::bin("squeal-router"),
    }
}

/// Backend-side counters of a router. A backend connection that is reset reconnects, so
/// `connects` grows by one per reset (once the backoff has passed; `connections_up` shows
/// the ones still down); `backend_errors` counts requests the router failed itself
/// (`SERVER_ERROR backend unavailable`, queue full, timeouts).
#[derive(Debug, Clone, Default)]
pub struct BackendCounters {
    pub connects: u64,
    pub connections_up: u64,
    pub server_errors: u64,
    pub timeouts: u64,
    pub backend_errors: u64,
    pub client_errors: u64,
    /// Prometheus samples whose name or labels mention `reset` or `desync`, verbatim.
    pub reset_metrics: Vec<String>,
}

impl BackendCounters {
    /// Backend connections reset between `before` and `self`: reconnects, plus connections
    /// that are down now but were up then.
    pub fn resets_since(&self, before: &BackendCounters) -> u64 {
        self.connects.saturating_sub(before.connects)
            + before.connections_up.saturating_sub(self.connections_up)
    }
}

/// `line` without terminal colour escapes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
