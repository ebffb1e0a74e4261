//! twemproxy (nutcracker), the peer the router is measured against and placement-checked with.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{free_port, loopback, server_dir, setup, Server};

/// One nutcracker instance over a set of memcached servers, killed on drop.
pub struct Twemproxy {
    pub server: Server,
    pub stats_port: u16,
}

/// How twemproxy spreads keys; the router must place keys identically for the same settings.
#[derive(Debug, Clone)]
pub struct TwemproxyPool {
    /// `host:port` and weight of each server, in order.
    pub servers: Vec<(String, u32)>,
    /// `ketama`, `modula` or `random`.
    pub distribution: String,
    /// `md5`, `fnv1a_64`, `one_at_a_time`, ... (twemproxy's names).
    pub hash: String,
    /// twemproxy's `hash_tag` (two characters, e.g. `{}`), if any.
    pub hash_tag: Option<String>,
}

impl TwemproxyPool {
    /// Ketama over md5, the libmemcached-compatible setting most fleets use.
    pub fn ketama(servers: &[String]) -> TwemproxyPool {
        TwemproxyPool {
            servers: servers.iter().map(|s| (s.clone(), 1)).collect(),
            distribution: "ketama".into(),
            hash: "md5".into(),
            hash_tag: None,
        }
    }
}

impl Twemproxy {
    pub fn start(pool: &TwemproxyPool) -> Result<Twemproxy> {
        setup();
        let port = free_port();
        let dir = server_dir("twemproxy")?;
        let mut conf = String::new();
        writeln!(conf, "squeal:")?;
        writeln!(conf, "  listen: 127.0.0.1:{port}")?;
        writeln!(conf, "  hash: {}", pool.hash)?;
        writeln!(conf, "  distribution: {}", pool.distribution)?;
        if let Some(tag) = &pool.hash_tag {
            writeln!(conf, "  hash_tag: \"{tag}\"")?;
        }
        writeln!(conf, "  timeout: 1000")?;
        writeln!(conf, "  backlog: 1024")?;
        writeln!(conf, "  preconnect: true")?;
        writeln!(conf, "  auto_eject_hosts: false")?;
        writeln!(conf, "  servers:")?;
        for (addr, weight) in &pool.servers {
            writeln!(conf, "   - {addr}:{weight}")?;
        }
        let conf_path = dir.path().join("nutcracker.yml");
        std::fs::write(&conf_path, conf)?;
        Twemproxy::spawn(&conf_path, port, dir)
    }

    /// Runs nutcracker on a `nutcracker.yml` the caller wrote (as an operator's, possibly
    /// with several pools); `first_listen` is the port of a pool's `listen`, waited for.
    pub fn start_file(conf: &std::path::Path, first_listen: u16) -> Result<Twemproxy> {
        setup();
        Twemproxy::spawn(conf, first_listen, server_dir("twemproxy")?)
    }

    /// nutcracker on `conf`, working (logs, pid file) in `dir`, up once `listen` accepts.
    fn spawn(conf: &std::path::Path, listen: u16, dir: tempfile::TempDir) -> Result<Twemproxy> {
        let stats_port = free_port();
        let mut cmd = Command::new("nutcracker");
        cmd.arg("-c")
            .arg(conf)
            .args(["-s", &stats_port.to_string(), "-a", "127.0.0.1"])
            .arg("-o")
            .arg(dir.path().join("nutcracker.out"))
            .arg("-p")
            .arg(dir.path().join("nutcracker.pid"));
        let server = Server::spawn(
            "twemproxy",
            dir,
            cmd,
            loopback(listen),
            Duration::from_secs(10),
        )?;
        Ok(Twemproxy { server, stats_port })
    }

    pub fn addr(&self) -> String {
        self.server.addr.to_string()
    }
}
