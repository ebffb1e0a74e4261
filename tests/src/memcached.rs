//! Private memcached servers.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::{free_port, is_root, loopback, server_dir, setup, Server};

/// One memcached server on loopback (64 MB, 2 threads, no UDP), killed on drop.
pub struct Memcached {
    pub server: Server,
}

impl Memcached {
    pub fn start() -> Result<Memcached> {
        Memcached::start_with(&[])
    }

    /// With extra command-line options, e.g. `["-I", "2m"]` for the item size limit a
    /// router in front of it is configured with. They are not kept for [`restart`].
    ///
    /// [`restart`]: Memcached::restart
    pub fn start_with(extra: &[&str]) -> Result<Memcached> {
        setup();
        let port = free_port();
        let dir = server_dir("memcached")?;
        let mut cmd = command(port);
        cmd.args(extra);
        let server = Server::spawn(
            "memcached",
            dir,
            cmd,
            loopback(port),
            Duration::from_secs(10),
        )?;
        Ok(Memcached { server })
    }

    /// `n` servers, e.g. one front-end cluster.
    pub fn start_many(n: usize) -> Result<Vec<Memcached>> {
        (0..n).map(|_| Memcached::start()).collect()
    }

    /// `127.0.0.1:port`, the form pools and clients take.
    pub fn addr(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Kills the server (SIGKILL): its items are gone, as after a real crash.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<()> {
        let port = self.port();
        self.server.restart(command(port), Duration::from_secs(10))
    }
}

/// `"127.0.0.1:p1", "127.0.0.1:p2"`: servers as a TOML array's items, for pool configs.
pub fn toml_list(servers: &[Memcached]) -> String {
    servers
        .iter()
        .map(|s| format!("{:?}", s.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn command(port: u16) -> Command {
    let mut cmd = Command::new("memcached");
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "64",
        "-t",
        "2",
        "-v",
    ]);
    if is_root() {
        cmd.args(["-u", "root"]);
    }
    cmd
}
