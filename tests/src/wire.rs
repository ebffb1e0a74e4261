//! Byte-exact memcached connections for protocol, isolation and memory tests: no UTF-8
//! assumption, no parsing beyond the framing a reply must have, and every read bounded by a
//! deadline, so a lost reply is reported as lost instead of hanging the test.
//!
//! [`McClient`](crate::McClient) is the convenient client for well-formed traffic; this one
//! is for tests that must see exactly which bytes came back (or that none did).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Why a read ended without the bytes asked for.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing (or not enough) arrived before the deadline.
    Timeout,
    /// The peer closed the connection.
    Closed,
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Timeout => write!(f, "no reply before the deadline"),
            ReadError::Closed => write!(f, "connection closed"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// How a reply is delimited, so it can be read whole without knowing what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// One line (`STORED`, `HD`, `DELETED`, a number, an error line).
    Line,
    /// `VALUE` lines with their data, up to `END` (or a single error line).
    Values,
    /// A meta reply: one line, plus data when it is `VA <len> ...`.
    Meta,
}

/// One raw connection with its own read buffer.
pub struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Wire {
    /// Connects with `timeout` for the connect and as the write timeout.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<Wire> {
        let sa: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let stream = TcpStream::connect_timeout(&sa, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Wire {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes all of `bytes` (bounded by the write timeout).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads more into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadError::Timeout);
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 1 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .map_err(ReadError::Io)?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadError::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ReadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Err(ReadError::Closed),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// One line, `\r\n` included (a bare `\n` ends a line too, as memcached allows).
    pub fn line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.pending()[scanned..].iter().position(|&b| b == b'\n') {
                let end = self.start + scanned + i + 1;
                let line = self.buf[self.start..end].to_vec();
                self.start = end;
                return Ok(line);
            }
            scanned = self.pending().len();
            self.fill(deadline)?;
        }
    }

    /// Exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.pending().len() < n {
            self.fill(deadline)?;
        }
        let out = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(out)
    }

    /// One whole reply framed as `frame`. On an error the bytes read so far are returned
    /// with it, so a report can show what did arrive.
    pub fn reply(
        &mut self,
        frame: Frame,
        deadline: Instant,
    ) -> Result<Vec<u8>, (ReadError, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let line = self.line(deadline).map_err(|e| (e, out.clone()))?;
            let data_len = match frame {
                Frame::Values if line.starts_with(b"VALUE ") => value_len(&line, 3),
                Frame::Meta if line.starts_with(b"VA ") => value_len(&line, 1),
                _ => None,
            };
            let more = frame == Frame::Values && line.starts_with(b"VALUE ");
            out.extend_from_slice(&line);
            if let Some(n) = data_len {
                let data = self.bytes(n + 2, deadline).map_err(|e| (e, out.clone()))?;
                out.extend_from_slice(&data);
            }
            if !more {
                return Ok(out);
            }
        }
    }

    /// Sends `req` then `mn`, and returns everything up to the `MN` that answers it, or up
    /// to a close or the deadline (the [`Exchange`] says which).
    pub fn exchange(&mut self, req: &[u8], timeout: Duration) -> Exchange {
        let deadline = Instant::now() + timeout;
        // A write that fails (the server closed early) still leaves its replies to read.
        let _ = self.send(req).and_then(|_| self.send(b"mn\r\n"));
        let mut bytes = self.pending().to_vec();
        self.start = self.buf.len();
        loop {
            if bytes.ends_with(b"MN\r\n") {
                return Exchange {
                    bytes,
                    end: End::Mn,
                };
            }
            let end = match self.fill(deadline) {
                Ok(()) => {
                    bytes.extend_from_slice(self.pending());
                    self.start = self.buf.len();
                    continue;
                }
                Err(ReadError::Timeout) => End::Timeout,
                Err(ReadError::Closed) => End::Closed,
                Err(ReadError::Io(e)) => End::Io(e.kind()),
            };
            return Exchange { bytes, end };
        }
    }

    /// Reads and discards whatever arrives until nothing has come for `quiet` or `limit`
    /// passes; returns how many bytes that was and whether the peer closed.
    pub fn drain(&mut self, quiet: Duration, limit: Duration) -> (usize, bool) {
        let end = Instant::now() + limit;
        let mut total = self.pending().len();
        self.start = self.buf.len();
        loop {
            let deadline = (Instant::now() + quiet).min(end);
            match self.fill(deadline) {
                Ok(()) => {
                    total += self.pending().len();
                    self.start = self.buf.len();
                }
                Err(ReadError::Timeout) => return (total, false),
                Err(_) => return (total, true),
            }
        }
    }
}

/// How an [`Exchange`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The `MN` sentinel arrived: every reply before it is in `bytes`.
    Mn,
    /// The server closed the connection.
    Closed,
    /// Neither before the deadline.
    Timeout,
    Io(io::ErrorKind),
}

/// The bytes one request got back, and how the reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    pub end: End,
}

impl fmt::Display for Exchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", show(&self.bytes, 600))?;
        match self.end {
            End::Mn => Ok(()),
            ref e => write!(f, " <then {e:?}>"),
        }
    }
}

/// The data length of a `VALUE k f len [cas]` (`field` 3) or `VA len ...` (`field` 1) line.
pub fn value_len(line: &[u8], field: usize) -> Option<usize> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let tok = line.split(|&b| b == b' ').nth(field)?;
    std::str::from_utf8(tok).ok()?.parse().ok()
}

/// `bytes` as an escaped string of at most about `max` characters (`...(N bytes)` after).
pub fn show(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        s.push_str(&format!("...({} bytes)", bytes.len()));
    }
    s
}
