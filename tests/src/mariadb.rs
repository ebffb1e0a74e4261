//! Private MariaDB servers with the binlog squeal needs (ROW format, annotate events, FULL
//! row metadata), and replicas of them for the replica-region tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mysql_async::prelude::*;

use crate::process::{free_port, is_root, loopback, server_dir, setup, Server};

/// One private MariaDB instance with its own datadir in a temp dir, killed on drop.
pub struct MariaDb {
    pub server: Server,
    pub server_id: u32,
    extra_args: Vec<String>,
}

/// Which options a server starts with beyond the binlog settings every instance has.
#[derive(Debug, Clone, Default)]
pub struct MariaDbOptions {
    pub server_id: u32,
    /// Extra `mariadbd` arguments, e.g. `--binlog-row-metadata=MINIMAL`.
    pub extra_args: Vec<String>,
}

impl MariaDbOptions {
    /// A primary (server id 1) that does not fsync per commit: for tests and benchmarks
    /// that commit a lot and do not test durability.
    pub fn fast() -> MariaDbOptions {
        MariaDbOptions {
            server_id: 1,
            extra_args: vec![
                "--innodb-flush-log-at-trx-commit=2".into(),
                "--sync-binlog=0".into(),
            ],
        }
    }
}

impl MariaDb {
    /// A primary with server id 1.
    pub async fn start() -> Result<MariaDb> {
        MariaDb::start_with(MariaDbOptions {
            server_id: 1,
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(opts: MariaDbOptions) -> Result<MariaDb> {
        setup();
        let dir = server_dir("mariadb")?;
        let datadir = dir.path().join("data");
        std::fs::create_dir_all(&datadir)?;
        // A private tmpdir: bootstraps running at once in a shared /tmp delete each other's
        // temporary tables ("Error on delete of '/tmp/#sql-temptable-...'").
        let tmpdir = dir.path().join("tmp");
        std::fs::create_dir_all(&tmpdir)?;
        let user = run_as();
        let install = Command::new("mariadb-install-db")
            .arg(format!("--user={user}"))
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--tmpdir={}", tmpdir.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--no-defaults",
            ])
            .output()
            .context("running mariadb-install-db")?;
        if !install.status.success() {
            bail!(
                "mariadb-install-db failed: {}\n{}",
                String::from_utf8_lossy(&install.stdout),
                String::from_utf8_lossy(&install.stderr)
            );
        }
        let port = free_port();
        let cmd = command(dir.path().into(), port, opts.server_id, &opts.extra_args);
        let server = Server::spawn("mariadb", dir, cmd, loopback(port), Duration::from_secs(60))?;
        let db = MariaDb {
            server,
            server_id: opts.server_id,
            extra_args: opts.extra_args,
        };
        db.wait_ready(Duration::from_secs(30)).await?;
        Ok(db)
    }

    /// A second server replicating from `primary` with GTID (`MASTER_USE_GTID=slave_pos`)
    /// and `--log-slave-updates`, so its own binlog carries the primary's changes: what a
    /// replica region's squeal tails.
    pub async fn start_replica_of(primary: &MariaDb, server_id: u32) -> Result<MariaDb> {
        let replica = MariaDb::start_with(MariaDbOptions {
            server_id,
            extra_args: vec!["--log-slave-updates".into()],
        })
        .await?;
        let mut conn = replica.conn().await?;
        conn.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
             MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            primary.port()
        ))
        .await?;
        conn.query_drop("START SLAVE").await?;
        conn.disconnect().await?;
        Ok(replica)
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `mysql://root@127.0.0.1:port/`, what squeal's config takes.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port())
    }

    /// Connection options for `mysql_async`.
    pub fn opts(&self) -> mysql_async::Opts {
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port())
            .user(Some("root"))
            .prefer_socket(false)
            .into()
    }

    /// A new connection as root.
    pub async fn conn(&self) -> Result<mysql_async::Conn> {
        mysql_async::Conn::new(self.opts())
            .await
            .with_context(|| format!("connecting to MariaDB on port {}", self.port()))
    }

    /// Runs statements separated by `;` on a new connection.
    pub async fn exec(&self, sql: &str) -> Result<()> {
        let mut conn = self.conn().await?;
        conn.query_drop(sql)
            .await
            .with_context(|| format!("executing {sql}"))?;
        conn.disconnect().await?;
        Ok(())
    }

    /// `SHOW MASTER STATUS`: the binlog file and position the next event will be written at.
    pub async fn binlog_position(&self) -> Result<(String, u64)> {
        let mut conn = self.conn().await?;
        let row: mysql_async::Row = conn
            .query_first("SHOW MASTER STATUS")
            .await?
            .context("SHOW MASTER STATUS returned nothing: is the binlog on?")?;
        conn.disconnect().await?;
        Ok((
            row.get::<String, _>(0).context("File")?,
            row.get::<u64, _>(1).context("Position")?,
        ))
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port and datadir, and waits until it answers queries.
    pub async fn restart(&mut self) -> Result<()> {
        let cmd = command(
            self.server.dir().into(),
            self.port(),
            self.server_id,
            &self.extra_args,
        );
        self.server.restart(cmd, Duration::from_secs(60))?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Polls with a real connection until the server answers `SELECT 1`.
    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.conn().await {
                Ok(mut conn) => {
                    let one: Option<u32> = conn.query_first("SELECT 1").await?;
                    if one == Some(1) {
                        conn.disconnect().await?;
                        return Ok(());
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "MariaDB on port {} not ready within {:?}: {e:#}; log {}:\n{}",
                        self.port(),
                        timeout,
                        self.server.log.display(),
                        self.server.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The user mariadbd runs as: as root, `--user=root` keeps the temp datadir's ownership
/// simple; otherwise the current user (the option is then ignored).
fn run_as() -> String {
    if is_root() {
        "root".into()
    } else {
        std::env::var("USER").unwrap_or_else(|_| "mysql".into())
    }
}

fn command(dir: PathBuf, port: u16, server_id: u32, extra: &[String]) -> Command {
    let datadir = dir.join("data");
    let mut cmd = Command::new("mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--user={}", run_as()))
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("mariadb.sock").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .arg("--skip-name-resolve")
        .arg(format!("--log-bin={}", datadir.join("bin").display()))
        .arg("--binlog-format=ROW")
        .arg(format!("--server-id={server_id}"))
        .arg("--binlog-annotate-row-events=ON")
        .arg("--binlog-row-metadata=FULL")
        // Small buffers: tests start several servers on a 2-core, shared machine.
        .arg("--innodb-buffer-pool-size=64M")
        .arg("--innodb-log-file-size=32M")
        .arg("--skip-innodb-adaptive-hash-index")
        .arg("--performance-schema=OFF")
        .arg("--max-connections=500")
        .args(extra);
    cmd
}
