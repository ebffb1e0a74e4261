//! One memcached server as the inspector sees it: a connection that stores the heartbeat
//! key (recording the CAS each store got, see [`super::classify::Watermarks`]) and reads
//! keys without filling or extending them.
//!
//! memcached 1.6 (meta protocol): the heartbeat is `ms <key> <n> c T<ttl>`, whose `HD c<cas>`
//! answer carries the CAS; a read is `mg <key> c` (CAS only, no value, no TTL change).
//! Older servers (`ms`/`mg` answered with `ERROR`): `set` then `gets` for the heartbeat
//! and `gets` for reads. A read marks the item recently used in memcached's LRU, as any
//! get does; nothing else changes.

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::classify::{now_micros, Beat, Copy, Micros, Watermarks};

/// The heartbeat's TTL: long enough to outlive a pause of the inspector, short enough that a
/// stopped inspector leaves nothing behind for long.
const HEARTBEAT_TTL_SECS: u32 = 300;

/// The wire dialect a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Meta,
    Classic,
}

struct Conn {
    stream: BufReader<TcpStream>,
    dialect: Dialect,
}

/// One server: address, the target it belongs to, its connection and its heartbeats.
pub struct Server {
    pub addr: String,
    pub target: String,
    conn: Mutex<Option<Conn>>,
    marks: StdMutex<Watermarks>,
    /// Set while the server does not answer: reads fail at once (`down`) instead of each
    /// waiting for the timeout; the heartbeat loop reconnects.
    down: std::sync::atomic::AtomicBool,
    /// memcached's `pid` and start time, to notice a restart (its CAS counter starts again).
    identity: StdMutex<Option<(u64, u64)>>,
    timeout: Duration,
}

/// A failed exchange.
#[derive(Debug)]
struct Failure(&'static str, String);

impl Server {
    pub fn new(addr: String, target: String, timeout: Duration, keep: Micros) -> Server {
        Server {
            addr,
            target,
            conn: Mutex::new(None),
            marks: StdMutex::new(Watermarks::new(keep)),
            down: std::sync::atomic::AtomicBool::new(false),
            identity: StdMutex::new(None),
            timeout,
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with the watermarks (classification reads them).
    pub fn with_marks<R>(&self, f: impl FnOnce(&Watermarks) -> R) -> R {
        f(&self.marks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Stores the heartbeat key once and records its CAS. Reconnects when needed.
    pub async fn heartbeat(&self, key: &str) -> Result<(), String> {
        let sent = now_micros();
        let r = self
            .exchange(|c| Box::pin(store_heartbeat(c, key.to_string())))
            .await;
        let answered = now_micros();
        match r {
            Ok(cas) => {
                let mut m = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                if !m.record(Beat {
                    sent,
                    answered,
                    cas,
                }) {
                    metrics::counter!("squeal_inspect_cas_resets_total", "target" => self.target.clone())
                        .increment(1);
                    tracing::warn!(server = %self.addr, target = %self.target, cas, "the server's CAS counter went back (restarted, or CAS is off with -C): its older heartbeats are forgotten");
                }
                self.down.store(false, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(Failure(reason, msg)) => {
                metrics::counter!("squeal_inspect_heartbeat_errors_total", "target" => self.target.clone(), "reason" => reason)
                    .increment(1);
                self.down.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(format!("{reason}: {msg}"))
            }
        }
    }

    /// Reads `key`'s CAS (never fills, never extends its TTL).
    pub async fn read(&self, key: &str) -> (Copy, Duration) {
        let start = Instant::now();
        if self.is_down() {
            return (Copy::Unreachable("down"), Duration::ZERO);
        }
        let r = self
            .exchange(|c| Box::pin(read_cas(c, key.to_string())))
            .await;
        let took = start.elapsed();
        match r {
            Ok(Some(cas)) => (Copy::Present { cas }, took),
            Ok(None) => (Copy::Absent, took),
            Err(Failure(reason, _)) => {
                if reason == "timeout" {
                    self.down.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                (Copy::Unreachable(reason), took)
            }
        }
    }

    /// One request/answer on the connection (made if missing), within the timeout; on any
    /// failure the connection is dropped, so the next exchange starts clean.
    async fn exchange<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a mut Conn,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, Failure>> + Send + 'a>,
        >,
    ) -> Result<T, Failure> {
        let work = async {
            let mut guard = self.conn.lock().await;
            if guard.is_none() {
                *guard = Some(self.connect().await?);
            }
            let r = f(guard.as_mut().expect("connected")).await;
            if r.is_err() {
                *guard = None;
            }
            r
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                // The connection may hold half an answer: never reuse it.
                if let Ok(mut g) = self.conn.try_lock() {
                    *g = None;
                }
                Err(Failure(
                    "timeout",
                    format!("no answer within {:?}", self.timeout),
                ))
            }
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let s = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Failure("connect", e.to_string()))?;
        let _ = s.set_nodelay(true);
        let mut conn = Conn {
            stream: BufReader::new(s),
            dialect: Dialect::Meta,
        };
        let id = identity(&mut conn).await?;
        let mut known = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        if known.is_some_and(|k| k != id) {
            // Restarted: every CAS recorded belongs to the old counter.
            self.marks.lock().unwrap_or_else(|e| e.into_inner()).clear();
            metrics::counter!("squeal_inspect_cas_resets_total", "target" => self.target.clone())
                .increment(1);
            tracing::warn!(server = %self.addr, target = %self.target, "memcached restarted (new pid or start time): its older heartbeats are forgotten");
        }
        *known = Some(id);
        Ok(conn)
    }
}

fn io(e: std::io::Error) -> Failure {
    Failure("error", e.to_string())
}

/// Sends `cmd` and reads the first line of the answer.
async fn ask(c: &mut Conn, cmd: &[u8]) -> Result<String, Failure> {
    c.stream.get_mut().write_all(cmd).await.map_err(io)?;
    line(c).await
}

async fn line(c: &mut Conn) -> Result<String, Failure> {
    let mut l = String::new();
    let n = c.stream.read_line(&mut l).await.map_err(io)?;
    if n == 0 {
        return Err(Failure("closed", "the server closed the connection".into()));
    }
    Ok(l.trim_end().to_string())
}

/// `stats`: the server's pid and start time (`time - uptime`).
async fn identity(c: &mut Conn) -> Result<(u64, u64), Failure> {
    let mut l = ask(c, b"stats\r\n").await?;
    let (mut pid, mut time, mut uptime) = (0u64, 0u64, 0u64);
    loop {
        if l == "END" {
            break;
        }
        let mut w = l.split(' ');
        if w.next() != Some("STAT") {
            return Err(Failure("protocol", format!("stats answered {l:?}")));
        }
        let (name, value) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
        let v = value.parse().unwrap_or(0);
        match name {
            "pid" => pid = v,
            "time" => time = v,
            "uptime" => uptime = v,
            _ => {}
        }
        l = line(c).await?;
    }
    // Start time in seconds may wobble by one between two reads: round to 4 s.
    Ok((pid, time.saturating_sub(uptime) / 4))
}

async fn store_heartbeat(c: &mut Conn, key: String) -> Result<u64, Failure> {
    let value = now_micros().to_string();
    if c.dialect == Dialect::Meta {
        let cmd = format!(
            "ms {key} {} c T{HEARTBEAT_TTL_SECS}\r\n{value}\r\n",
            value.len()
        );
        let l = ask(c, cmd.as_bytes()).await?;
        if let Some(rest) = l.strip_prefix("HD") {
            return flag_c(rest)
                .ok_or_else(|| Failure("protocol", format!("ms answered {l:?} without a CAS")));
        }
        if l == "ERROR" || l.starts_with("CLIENT_ERROR") {
            // No meta protocol (memcached before 1.6): the classic commands from now on.
            c.dialect = Dialect::Classic;
        } else {
            return Err(Failure("protocol", format!("ms answered {l:?}")));
        }
    }
    let cmd = format!(
        "set {key} 0 {HEARTBEAT_TTL_SECS} {}\r\n{value}\r\n",
        value.len()
    );
    let l = ask(c, cmd.as_bytes()).await?;
    if l != "STORED" {
        return Err(Failure("protocol", format!("set answered {l:?}")));
    }
    // The CAS of our own store (another inspector storing the same key in between would
    // only make it later, still between our send and this answer).
    gets_cas(c, &key)
        .await?
        .ok_or_else(|| Failure("protocol", "the heartbeat vanished after set".into()))
}

async fn read_cas(c: &mut Conn, key: String) -> Result<Option<u64>, Failure> {
    if c.dialect == Dialect::Meta {
        let l = ask(c, format!("mg {key} c\r\n").as_bytes()).await?;
        if l == "EN" {
            return Ok(None);
        }
        if let Some(rest) = l.strip_prefix("HD") {
            return flag_c(rest)
                .map(Some)
                .ok_or_else(|| Failure("protocol", format!("mg answered {l:?}")));
        }
        if l == "ERROR" {
            c.dialect = Dialect::Classic;
        } else {
            return Err(Failure("protocol", format!("mg answered {l:?}")));
        }
    }
    gets_cas(c, &key).await
}

/// `gets key`: the CAS, or `None` when absent (the value is read and discarded).
async fn gets_cas(c: &mut Conn, key: &str) -> Result<Option<u64>, Failure> {
    let l = ask(c, format!("gets {key}\r\n").as_bytes()).await?;
    if l == "END" {
        return Ok(None);
    }
    let w: Vec<&str> = l.split(' ').collect();
    if w.len() != 5 || w[0] != "VALUE" {
        return Err(Failure("protocol", format!("gets answered {l:?}")));
    }
    let bytes: usize = w[3]
        .parse()
        .map_err(|_| Failure("protocol", format!("gets answered {l:?}")))?;
    let cas: u64 = w[4]
        .parse()
        .map_err(|_| Failure("protocol", format!("gets answered {l:?}")))?;
    let mut skip = vec![0u8; bytes + 2];
    c.stream.read_exact(&mut skip).await.map_err(io)?;
    let end = line(c).await?;
    if end != "END" {
        return Err(Failure("protocol", format!("gets ended with {end:?}")));
    }
    Ok(Some(cas))
}

/// The value of the `c` flag in a meta answer's flags (`HD c123 ...`).
fn flag_c(flags: &str) -> Option<u64> {
    flags
        .split(' ')
        .find_map(|f| f.strip_prefix('c'))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::flag_c;

    #[test]
    fn cas_flag_of_meta_answers() {
        assert_eq!(flag_c(" c42"), Some(42));
        assert_eq!(flag_c(" t-1 c7 h1"), Some(7));
        assert_eq!(flag_c(""), None);
        assert_eq!(flag_c(" cx"), None);
    }
}
