//! The durable spool: deletes that could not reach their memcached server, kept on disk
//! until the server is back.
//!
//! A batch is acknowledged to squeal only once each of its deletes was applied or spooled
//! (written and fsync'd), so a router crash or restart never loses an invalidation: the
//! spool is read again at start and replayed.
//!
//! On disk, one pair of files per server, named after its address:
//!
//! - `<server>.spool`: one key per line, appended in arrival order. Legal memcache keys hold
//!   no whitespace or control characters, so a newline can end a record safely, and the
//!   line `* flush_all` (it holds a space, so it is never a key) records a flush of the
//!   server, replayed in its place among the deletes: a delete spooled before it is
//!   superseded by it, one spooled after it is still applied after it. A last line
//!   without its newline was torn by a crash before its fsync, so it was never acknowledged;
//!   it is dropped at open (squeal re-sends it).
//! - `<server>.cursor`: the byte offset replayed so far, replaced atomically (write, fsync,
//!   rename) after each replayed chunk. A crash between a replay and its cursor update
//!   replays that chunk again: deletes are idempotent.
//!
//! Replay goes in order per server. The spool is bounded in bytes across all servers; when
//! full, [`Spool::append`] refuses, the batch is rejected (squeal retries it) and an alarm
//! is raised, rather than anything being dropped.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the spool could not take or give deletes.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({used} of {max} bytes): refusing new deletes until it drains")]
    Full { used: u64, max: u64 },
    #[error("spool I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The spool line that stands for a `flush_all` of the server.
const FLUSH_RECORD: &[u8] = b"* flush_all";

/// One spooled operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Delete(Vec<u8>),
    FlushAll,
}

/// What one server's spool holds, for `stats`, metrics and the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub server: String,
    /// Deletes not yet replayed.
    pub keys: u64,
    /// Flushes not yet replayed.
    pub flushes: u64,
    /// Bytes not yet replayed.
    pub bytes: u64,
}

/// One server's spool file and how far it has been replayed.
struct ServerSpool {
    file: File,
    path: PathBuf,
    cursor_path: PathBuf,
    /// Bytes of complete records in the file.
    len: u64,
    /// Bytes already replayed.
    cursor: u64,
    /// Deletes and flushes not yet replayed (kept so `stats` need not read the file).
    pending_keys: u64,
    pending_flushes: u64,
}

/// The spool directory: every server's pending deletes.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    servers: Mutex<HashMap<String, ServerSpool>>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering every server's file left by
    /// an earlier run, torn last records included.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut servers = HashMap::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("spool") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let server = unescape_name(name);
            let spool = ServerSpool::open(dir, &server)?;
            servers.insert(server, spool);
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            servers: Mutex::new(servers),
        })
    }

    /// Appends `keys` for `server` and fsyncs before returning: once this is `Ok`, the
    /// deletes survive a crash and the batch may be acknowledged.
    pub fn append<'k>(
        &self,
        server: &str,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<u64, SpoolError> {
        let mut record = Vec::new();
        let mut count = 0;
        for key in keys {
            record.extend_from_slice(key);
            record.push(b'\n');
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        self.write_record(server, &record, count, 0)?;
        Ok(count)
    }

    /// Appends a `flush_all` of `server`, after every delete spooled for it so far, and
    /// fsyncs before returning.
    pub fn append_flush(&self, server: &str) -> Result<(), SpoolError> {
        let mut record = FLUSH_RECORD.to_vec();
        record.push(b'\n');
        self.write_record(server, &record, 0, 1)
    }

    fn write_record(
        &self,
        server: &str,
        record: &[u8],
        count: u64,
        flushes: u64,
    ) -> Result<(), SpoolError> {
        let mut servers = self.servers.lock().unwrap();
        let used: u64 = servers.values().map(|s| s.len - s.cursor).sum();
        if used + record.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.max_bytes,
            });
        }
        if !servers.contains_key(server) {
            let spool = ServerSpool::open(&self.dir, server)?;
            servers.insert(server.to_string(), spool);
        }
        let spool = servers.get_mut(server).expect("inserted above");
        spool.file.write_all(record).map_err(io_err(&spool.path))?;
        spool.file.sync_data().map_err(io_err(&spool.path))?;
        spool.len += record.len() as u64;
        spool.pending_keys += count;
        spool.pending_flushes += flushes;
        Ok(())
    }

    /// True when `server` has deletes waiting: new deletes for it go to the spool too, so
    /// that replay keeps their order and a flapping server is not hammered.
    pub fn has_pending(&self, server: &str) -> bool {
        self.servers
            .lock()
            .unwrap()
            .get(server)
            .is_some_and(|s| s.cursor < s.len)
    }

    /// Servers with deletes waiting.
    pub fn servers_pending(&self) -> Vec<String> {
        let servers = self.servers.lock().unwrap();
        servers
            .iter()
            .filter(|(_, s)| s.cursor < s.len)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Up to `max` of `server`'s oldest unreplayed records, and the offset to pass to
    /// [`Spool::commit`] once they were applied.
    pub fn peek(&self, server: &str, max: usize) -> Result<(Vec<Record>, u64), SpoolError> {
        let servers = self.servers.lock().unwrap();
        let Some(spool) = servers.get(server) else {
            return Ok((Vec::new(), 0));
        };
        let mut file = File::open(&spool.path).map_err(io_err(&spool.path))?;
        file.seek(SeekFrom::Start(spool.cursor))
            .map_err(io_err(&spool.path))?;
        let mut reader = BufReader::new(file.take(spool.len - spool.cursor));
        let mut keys = Vec::new();
        let mut offset = spool.cursor;
        let mut line = Vec::new();
        while keys.len() < max {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_err(&spool.path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            offset += n as u64;
            line.pop();
            keys.push(if line == FLUSH_RECORD {
                Record::FlushAll
            } else {
                Record::Delete(line.clone())
            });
        }
        Ok((keys, offset))
    }

    /// Records that everything before `offset` was replayed. When a server's spool is fully
    /// replayed its files are removed, under the same lock that appends take, so a delete
    /// appended meanwhile is never lost with them.
    pub fn commit(
        &self,
        server: &str,
        offset: u64,
        records: &[Record],
    ) -> Result<bool, SpoolError> {
        let flushes = records.iter().filter(|r| **r == Record::FlushAll).count() as u64;
        let keys = records.len() as u64 - flushes;
        let mut servers = self.servers.lock().unwrap();
        let Some(spool) = servers.get_mut(server) else {
            return Ok(true);
        };
        spool.cursor = offset.min(spool.len);
        spool.pending_keys = spool.pending_keys.saturating_sub(keys);
        spool.pending_flushes = spool.pending_flushes.saturating_sub(flushes);
        if spool.cursor == spool.len {
            let spool = servers.remove(server).expect("present");
            let _ = fs::remove_file(&spool.cursor_path);
            fs::remove_file(&spool.path).map_err(io_err(&spool.path))?;
            sync_dir(&self.dir)?;
            return Ok(true);
        }
        write_atomically(&spool.cursor_path, spool.cursor.to_string().as_bytes())?;
        Ok(false)
    }

    /// Every server's pending deletes.
    pub fn pending(&self) -> Vec<Pending> {
        let servers = self.servers.lock().unwrap();
        let mut out: Vec<Pending> = servers
            .iter()
            .map(|(server, s)| Pending {
                server: server.clone(),
                keys: s.pending_keys,
                flushes: s.pending_flushes,
                bytes: s.len - s.cursor,
            })
            .filter(|p| p.bytes > 0)
            .collect();
        out.sort_by(|a, b| a.server.cmp(&b.server));
        out
    }
}

impl ServerSpool {
    fn open(dir: &Path, server: &str) -> Result<ServerSpool, SpoolError> {
        let name = escape_name(server);
        let path = dir.join(format!("{name}.spool"));
        let cursor_path = dir.join(format!("{name}.cursor"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err(&path))?;
        // Drop a torn last record: it was never fsync'd, so never acknowledged.
        let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < data.len() {
            file.set_len(complete as u64).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        let cursor = match fs::read_to_string(&cursor_path) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(0).min(complete as u64),
            Err(_) => 0,
        };
        let (mut pending_keys, mut pending_flushes) = (0, 0);
        for line in data[cursor as usize..complete].split_inclusive(|&b| b == b'\n') {
            if &line[..line.len() - 1] == FLUSH_RECORD {
                pending_flushes += 1;
            } else {
                pending_keys += 1;
            }
        }
        Ok(ServerSpool {
            file,
            path,
            cursor_path,
            len: complete as u64,
            cursor,
            pending_keys,
            pending_flushes,
        })
    }
}

/// Replaces `path`'s contents so that a crash leaves either the old or the new contents
/// (`marker::durable`: the directory is fsynced too).
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), SpoolError> {
    marker::durable::write_atomically(path, data).map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Server addresses become file names: `:` and `/` are not safe everywhere.
fn escape_name(server: &str) -> String {
    server
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("_{b:02x}"),
        })
        .collect()
}

fn unescape_name(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            if let Some(b) = name
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<Record> {
        v.iter()
            .map(|k| match *k {
                "FLUSH" => Record::FlushAll,
                k => Record::Delete(k.as_bytes().to_vec()),
            })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for s in ["127.0.0.1:11211", "[::1]:11211", "host/a_b"] {
            assert_eq!(unescape_name(&escape_name(s)), s);
        }
    }

    #[test]
    fn appended_keys_replay_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let server = "127.0.0.1:11211";
        spool.append(server, [&b"a"[..], b"b", b"c"]).unwrap();
        assert!(spool.has_pending(server));
        let (first, offset) = spool.peek(server, 2).unwrap();
        assert_eq!(first, keys(&["a", "b"]));
        assert!(!spool.commit(server, offset, &first).unwrap());
        drop(spool);

        // A restart resumes after the committed cursor.
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            spool.pending(),
            vec![Pending {
                server: server.into(),
                keys: 1,
                flushes: 0,
                bytes: 2
            }]
        );
        spool.append(server, [&b"d"[..]]).unwrap();
        let (rest, offset) = spool.peek(server, 10).unwrap();
        assert_eq!(rest, keys(&["c", "d"]));
        assert!(spool.commit(server, offset, &rest).unwrap(), "drained");
        assert!(!spool.has_pending(server));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files removed"
        );
    }

    #[test]
    fn a_torn_last_record_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append("s:1", [&b"whole"[..]]).unwrap();
        drop(spool);
        let path = dir.path().join(format!("{}.spool", escape_name("s:1")));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"tor").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let (got, _) = spool.peek("s:1", 10).unwrap();
        assert_eq!(got, keys(&["whole"]));
        spool.append("s:1", [&b"next"[..]]).unwrap();
        let (got, _) = spool.peek("s:1", 10).unwrap();
        assert_eq!(got, keys(&["whole", "next"]));
    }

    #[test]
    fn a_flush_keeps_its_place_among_the_deletes_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.append("s:1", [&b"before"[..]]).unwrap();
        spool.append_flush("s:1").unwrap();
        spool.append("s:1", [&b"after"[..], b"flush_all"]).unwrap();
        let check = |spool: &Spool| {
            assert_eq!(
                spool.pending(),
                vec![Pending {
                    server: "s:1".into(),
                    keys: 3,
                    flushes: 1,
                    bytes: 7 + 12 + 6 + 10
                }]
            );
            let (got, _) = spool.peek("s:1", 10).unwrap();
            // A key spelled like the command is still just a key.
            assert_eq!(got, keys(&["before", "FLUSH", "after", "flush_all"]));
        };
        check(&spool);
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        check(&spool);
        let (first, offset) = spool.peek("s:1", 2).unwrap();
        assert!(!spool.commit("s:1", offset, &first).unwrap());
        assert_eq!(spool.pending()[0].flushes, 0);
        assert_eq!(spool.pending()[0].keys, 2);
    }

    #[test]
    fn a_full_spool_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        spool.append("s:1", [&b"12345678"[..]]).unwrap();
        let err = spool.append("s:2", [&b"xy"[..]]).unwrap_err();
        assert!(
            matches!(err, SpoolError::Full { used: 9, max: 10 }),
            "{err}"
        );
        // Replaying frees room.
        let (records, offset) = spool.peek("s:1", 10).unwrap();
        spool.commit("s:1", offset, &records).unwrap();
        spool.append("s:2", [&b"xy"[..]]).unwrap();
    }
}
