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
        let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let body = format!(
            "workers = 2\nroute = \"main\"\n\n[pools.main]\nservers = [{}]\n{pool_keys}\n{extra}\n",
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
