//! Enumerating a warm server's keys with `lru_crawler metadump all`.
//!
//! memcached answers one line per item, `key=<url-encoded key> exp=<unix time or -1> ...`,
//! terminated by `\n`, and `END\r\n` at the end. Keys are percent-encoded there; they are
//! decoded here into the bytes a `get` needs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Every key the server holds now (a snapshot: items set later are not listed, which is
/// fine: they were written by the application and reach the cold cluster on their own).
pub fn keys(server: &str, timeout: Duration) -> Result<Vec<Vec<u8>>> {
    let mut stream = TcpStream::connect(server)
        .with_context(|| format!("connecting to warm server {server}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"lru_crawler metadump all\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut keys = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            bail!("{server} closed the connection during metadump");
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"END" {
            return Ok(keys);
        }
        if text.starts_with(b"BUSY")
            || text.starts_with(b"ERROR")
            || text.starts_with(b"CLIENT_ERROR")
        {
            bail!(
                "{server} refused metadump: {} (is the LRU crawler enabled? memcached -o lru_crawler)",
                String::from_utf8_lossy(text)
            );
        }
        if let Some(key) = parse_line(text) {
            keys.push(key);
        }
    }
}

/// The decoded key of one metadump line, or `None` for a line without a usable key.
pub fn parse_line(line: &[u8]) -> Option<Vec<u8>> {
    let field = line
        .split(|&b| b == b' ')
        .find_map(|f| f.strip_prefix(b"key="))?;
    percent_decode(field)
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memcached_metadump_lines() {
        let line = b"key=user%3A1 exp=1795295368 la=1795295366 cas=3 fetch=yes cls=1 size=69";
        assert_eq!(parse_line(line), Some(b"user:1".to_vec()));
        assert_eq!(parse_line(b"key=a%25b exp=-1"), Some(b"a%b".to_vec()));
        assert_eq!(parse_line(b"key=%zz exp=-1"), None);
        assert_eq!(parse_line(b"garbage"), None);
    }
}
