//! Copying one chunk of keys: pipelined `mg <key> v t f` on the warm server, then pipelined
//! `add` on the cold side, then, for each `add` that was refused, a look at what the cold
//! side holds to tell a hold-off tombstone from a value already present.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use marker::holdoff;
use marker::memcache::{self, MetaGet, StoreReply};

/// What happened to each key; the summary adds these up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Added to the cold side.
    pub copied: u64,
    /// The cold side already had a value: never overwritten.
    pub present: u64,
    /// The cold side holds a hold-off tombstone: the key was invalidated moments ago, and
    /// the warm value may predate that.
    pub held_off: u64,
    /// Gone from the warm server (expired, evicted, deleted) since the dump, or not a settled
    /// value: a tombstone, a lease placeholder being filled, an item marked stale.
    pub gone: u64,
    /// Keys that cannot be copied through the text protocol (binary keys).
    pub failed: u64,
}

impl Outcome {
    pub fn add(&mut self, o: Outcome) {
        self.copied += o.copied;
        self.present += o.present;
        self.held_off += o.held_off;
        self.gone += o.gone;
        self.failed += o.failed;
    }

    pub fn total(&self) -> u64 {
        self.copied + self.present + self.held_off + self.gone + self.failed
    }
}

/// An item as read from the warm side: value, remaining TTL in seconds (-1: none), flags.
pub type Item = (Vec<u8>, i64, u32);

/// A blocking, pipelining memcache connection.
pub struct Conn {
    addr: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Conn {
            addr: addr.into(),
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("{} closed the connection", self.addr);
        }
        Ok(line.trim_end().to_string())
    }

    /// Pipelined meta gets: for each key, `(value, remaining ttl (-1: none), flags)`, or
    /// `None` on a miss or an unsettled item (lease placeholder, stale).
    pub fn meta_get_all(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Item>>> {
        let mut out = Vec::new();
        for key in keys {
            memcache::meta_get(key, "v t f", &mut out);
        }
        self.writer.write_all(&out)?;
        let mut items = Vec::with_capacity(keys.len());
        for _ in keys {
            let line = self.line()?;
            match MetaGet::parse(line.as_bytes()) {
                Some(MetaGet::Miss) => items.push(None),
                Some(MetaGet::Found(v)) => {
                    let mut value = vec![0; v.len + 2];
                    self.reader.read_exact(&mut value)?;
                    value.truncate(v.len);
                    // A lease placeholder or a stale item: not a value anyone should copy.
                    items.push(
                        v.is_value()
                            .then(|| (value, v.ttl.unwrap_or(-1), v.flags.unwrap_or(0))),
                    );
                }
                None => bail!("{} answered {line:?} to mg", self.addr),
            }
        }
        Ok(items)
    }

    /// Pipelined `add`s: true where stored.
    pub fn add_all(&mut self, items: &[(&[u8], &[u8], u32, i64)]) -> Result<Vec<bool>> {
        let mut out = Vec::new();
        for (key, value, flags, ttl) in items {
            memcache::add(key, *flags, (*ttl).max(0), value, &mut out);
        }
        self.writer.write_all(&out)?;
        items
            .iter()
            .map(|_| {
                let line = self.line()?;
                match StoreReply::parse(line.as_bytes()) {
                    StoreReply::Stored => Ok(true),
                    StoreReply::NotStored | StoreReply::Exists => Ok(false),
                    StoreReply::Other => bail!("{} answered {line:?} to add", self.addr),
                }
            })
            .collect()
    }
}

/// Copies `keys` (all held by `warm`) to `cold` with `add`, never overwriting.
pub fn chunk(warm: &mut Conn, cold: &mut Conn, keys: &[Vec<u8>]) -> Result<Outcome> {
    let mut outcome = Outcome::default();
    let text_keys: Vec<&[u8]> = keys
        .iter()
        .filter(|k| marker::key::validate(k).is_ok())
        .map(|k| k.as_slice())
        .collect();
    outcome.failed += (keys.len() - text_keys.len()) as u64;
    let items = warm.meta_get_all(&text_keys)?;
    let mut to_add = Vec::new();
    for (key, item) in text_keys.iter().zip(&items) {
        match item {
            // `t0` would mean "expires now": treat like gone.
            Some((value, ttl, flags))
                if *ttl != 0 && !holdoff::is_tombstone(*flags, value.len()) =>
            {
                to_add.push((*key, value.as_slice(), *flags, *ttl))
            }
            _ => outcome.gone += 1,
        }
    }
    let stored = cold.add_all(&to_add)?;
    let refused: Vec<&[u8]> = to_add
        .iter()
        .zip(&stored)
        .filter(|(_, s)| !**s)
        .map(|((k, ..), _)| *k)
        .collect();
    outcome.copied += stored.iter().filter(|s| **s).count() as u64;
    for item in cold.meta_get_all(&refused)? {
        match item {
            Some((value, _, flags)) if holdoff::is_tombstone(flags, value.len()) => {
                outcome.held_off += 1
            }
            // Present, or already expired again: either way not ours to write.
            _ => outcome.present += 1,
        }
    }
    Ok(outcome)
}
