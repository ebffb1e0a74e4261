//! One child process per server, with its own working directory and log, killed on drop.

use std::collections::HashSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `tests/setup.sh` once per test process, so a fresh machine gets its servers
/// installed by the first test that needs them. Returns the tansu broker's path.
pub fn setup() -> &'static Path {
    static TANSU: OnceLock<PathBuf> = OnceLock::new();
    TANSU.get_or_init(|| {
        let _guard = setup_lock();
        let script = crate::project::root().join("tests/setup.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("setup.sh prints tansu's path")
                .trim(),
        )
    })
}

/// Several test binaries may run setup at once (cargo runs them one after another, but
/// nextest or a developer may not): a file lock keeps apt-get from racing itself.
fn setup_lock() -> impl Drop {
    struct Lock(PathBuf);
    impl Drop for Lock {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let path = std::env::temp_dir().join("squeal-setup.lock");
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::create_dir(&path).is_err() {
        // A lock older than the deadline belongs to a dead run.
        let stale = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600))
            .unwrap_or(false);
        if stale || Instant::now() > deadline {
            let _ = std::fs::remove_dir(&path);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Lock(path)
}

/// A loopback port that nothing listens on now and that this process has not handed out
/// before (two servers of one test must never get the same port).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding an ephemeral loopback port")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A running server: a child process, the directory it works in, and its log file.
///
/// Dropping it kills the process. If the thread is panicking (a failed test), the directory
/// is kept and its path printed; otherwise it is removed.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cmd` with stdout and stderr going to `<dir>/<name>.log`, then waits until
    /// `addr` accepts TCP connections. If the process exits or the port stays closed for
    /// `timeout`, the error carries the log's tail.
    pub fn spawn(
        name: &str,
        dir: tempfile::TempDir,
        mut cmd: Command,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Server> {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut server = Server {
            name: name.to_string(),
            addr,
            child: Some(child),
            dir: Some(dir),
            log,
        };
        server.wait_listening(timeout)?;
        Ok(server)
    }

    /// The directory the server works in (datadir, config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("server dir").path()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits until the server's port accepts connections, failing early if it died.
    pub fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} within {:?}; log {}:\n{}",
                    self.name,
                    self.addr,
                    timeout,
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An error with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The last 40 lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL: the crash a fault test wants (no clean shutdown, no flush).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal by name (e.g. "HUP" for a config reload).
    pub fn signal(&self, name: &str) {
        if let Some(child) = self.child.as_ref() {
            signal(child.id(), name);
        }
    }

    /// Restarts a killed server with the same command line and directory.
    pub fn restart(&mut self, mut cmd: Command, timeout: Duration) -> Result<()> {
        self.kill();
        let out = File::options().append(true).open(&self.log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("restarting {}", self.name))?,
        );
        self.wait_listening(timeout)
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() || std::env::var_os("SQUEAL_KEEP_LOGS").is_some() {
                let kept = dir.keep();
                eprintln!(
                    "harness: kept {} logs in {} (log: {})",
                    self.name,
                    kept.display(),
                    self.log.display()
                );
            }
        }
    }
}

/// A fresh temporary directory for one server, named after it.
pub fn server_dir(name: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(&format!("squeal-{name}-"))
        .tempdir()?)
}

/// True when this process runs as root (servers then need an explicit `--user`/`-u`).
pub fn is_root() -> bool {
    // Avoids a libc dependency: `id -u` is on every machine the harness runs on.
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    })
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A process's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`); `None` when the
/// process is gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
