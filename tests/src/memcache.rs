//! A deliberately small, blocking memcached text-protocol client for tests: it is the
//! independent party that checks what the router and squeal did, so it shares no code with
//! them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One connection to a memcached-protocol endpoint (memcached, twemproxy, squeal-router).
pub struct McClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl McClient {
    pub fn connect(addr: &str) -> Result<McClient> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(McClient {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends raw bytes as they are (for protocol and bad-input tests).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Reads one `\r\n`-terminated line, without the terminator.
    pub fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end_matches("\r\n").to_string())
    }

    /// Reads exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.reader.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// `set key flags ttl` and the reply line (`STORED`, ...).
    pub fn set_with(&mut self, key: &str, value: &[u8], flags: u32, ttl: u32) -> Result<String> {
        write!(self.writer, "set {key} {flags} {ttl} {}\r\n", value.len())?;
        self.writer.write_all(value)?;
        self.writer.write_all(b"\r\n")?;
        self.line()
    }

    /// `set` that must be `STORED`.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<()> {
        match self.set_with(key, value, 0, 0)?.as_str() {
            "STORED" => Ok(()),
            other => bail!("set {key}: {other}"),
        }
    }

    /// `add key 0 ttl`: true when stored, false on `NOT_STORED`.
    pub fn add(&mut self, key: &str, value: &[u8], ttl: u32) -> Result<bool> {
        write!(self.writer, "add {key} 0 {ttl} {}\r\n", value.len())?;
        self.writer.write_all(value)?;
        self.writer.write_all(b"\r\n")?;
        match self.line()?.as_str() {
            "STORED" => Ok(true),
            "NOT_STORED" => Ok(false),
            other => bail!("add {key}: {other}"),
        }
    }

    /// `get key`: the value, or `None` on a miss.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_multi(&[key])?.pop().and_then(|(_, v)| v))
    }

    /// `get k1 k2 ...`: each key with its value or `None`, in request order.
    pub fn get_multi(&mut self, keys: &[&str]) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        write!(self.writer, "get {}\r\n", keys.join(" "))?;
        let mut found = std::collections::HashMap::new();
        loop {
            let line = self.line()?;
            if line == "END" {
                break;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() < 4 || parts[0] != "VALUE" {
                bail!("get: unexpected line {line:?}");
            }
            let len: usize = parts[3].parse()?;
            let data = self.bytes(len + 2)?;
            found.insert(parts[1].to_string(), data[..len].to_vec());
        }
        Ok(keys
            .iter()
            .map(|k| (k.to_string(), found.remove(*k)))
            .collect())
    }

    /// `delete key`: the reply line (`DELETED` / `NOT_FOUND`).
    pub fn delete(&mut self, key: &str) -> Result<String> {
        write!(self.writer, "delete {key}\r\n")?;
        self.line()
    }

    /// Sends one command line and returns the reply lines up to and including `END`.
    pub fn stats(&mut self, args: &str) -> Result<Vec<String>> {
        write!(self.writer, "stats {args}\r\n")?;
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let end = line == "END" || line.starts_with("ERROR") || line.contains("_ERROR");
            lines.push(line);
            if end {
                return Ok(lines);
            }
        }
    }
}

/// A client of `addr`; panics if it cannot connect (for tests, where that is the failure).
pub fn mc(addr: &str) -> McClient {
    McClient::connect(addr).unwrap()
}

/// The value of `STAT <name>` in the reply to `stats <args>`; panics if it is missing.
pub fn stat(c: &mut McClient, args: &str, name: &str) -> String {
    let lines = c.stats(args).unwrap();
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
        .to_string()
}

/// A numeric general statistic (`stats`).
pub fn stat_u64(c: &mut McClient, name: &str) -> u64 {
    stat(c, "", name).parse().unwrap()
}
