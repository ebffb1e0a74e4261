//! Source: the binlog, read as a replica (live, [`live`]) or from a file (tests, tools),
//! decoded into committed transactions by [`process::Processor`].

pub mod decode;
pub mod live;
pub mod mariadb;
pub mod process;
pub mod schema;
pub mod text;

use std::path::Path;

use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::TransactionPayloadEvent;
use mysql_common::binlog::EventStreamReader;

use crate::model::Committed;
use process::{ProcessError, Processor};

/// Why a binlog file could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a binlog file (no \\xfebin magic)")]
    NotBinlog { path: String },
    #[error("{path}: event {index} at offset {offset}: {error}")]
    Event {
        path: String,
        index: usize,
        offset: u64,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Process { path: String, error: ProcessError },
}

/// Reads a binlog file through `proc`, calling `on_commit` for every committed transaction.
/// Compressed transaction payloads (MySQL 8) are unpacked and their events processed in
/// place. Returns the number of events read. Never panics on a damaged file.
pub fn read_file(
    path: &Path,
    proc: &mut Processor,
    mut on_commit: impl FnMut(Committed),
) -> Result<usize, FileError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|error| FileError::Io {
        path: p.clone(),
        error,
    })?;
    if data.len() < 4 || &data[..4] != b"\xfebin" {
        return Err(FileError::NotBinlog { path: p });
    }
    proc.file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    proc.pos = 4;
    read_events(&data[4..], proc, &mut on_commit).map_err(|e| match e {
        ReadError::Event(index, offset, error) => FileError::Event {
            path: p.clone(),
            index,
            offset: offset + 4,
            error,
        },
        ReadError::Process(error) => FileError::Process {
            path: p.clone(),
            error,
        },
    })
}

/// An error reading a buffer of events.
#[derive(Debug)]
pub enum ReadError {
    Event(usize, u64, std::io::Error),
    Process(ProcessError),
}

/// Checks that `buf` starts with a whole event: a header whose size fits in `buf`.
/// mysql_common trusts the size field (and panics on a short body), so every event is
/// framed here first.
pub fn check_frame(buf: &[u8]) -> std::io::Result<usize> {
    const HEADER: usize = 19;
    if buf.len() < HEADER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("truncated event header ({} of {HEADER} bytes)", buf.len()),
        ));
    }
    let size = u32::from_le_bytes(buf[9..13].try_into().expect("4 bytes")) as usize;
    if size < HEADER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("event size {size} is smaller than its header"),
        ));
    }
    if size > buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "truncated event: {size} bytes announced, {} left",
                buf.len()
            ),
        ));
    }
    Ok(size)
}

/// Largest decompressed transaction payload accepted (MySQL caps a payload at 1 GiB).
const MAX_PAYLOAD: u64 = 1 << 30;

/// Reads events back to back from `bytes` (what follows the magic of a binlog file).
pub fn read_events(
    bytes: &[u8],
    proc: &mut Processor,
    on_commit: &mut dyn FnMut(Committed),
) -> Result<usize, ReadError> {
    use std::io::Read;
    let mut esr = EventStreamReader::new(BinlogVersion::Version4);
    let mut out = Vec::new();
    let mut n = 0;
    let mut at = 0usize;
    while at < bytes.len() {
        let offset = at as u64;
        let size = check_frame(&bytes[at..]).map_err(|e| ReadError::Event(n, offset, e))?;
        // mysql_common panics on an event shorter than its checksum: an error instead.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            esr.read(&bytes[at..at + size])
        }))
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "malformed event (shorter than its checksum?)",
            ))
        });
        let ev = match read {
            Ok(Some(ev)) => ev,
            Ok(None) => break,
            Err(e) => return Err(ReadError::Event(n, offset, e)),
        };
        at += size;
        n += 1;
        proc.handle(&ev, &mut out).map_err(ReadError::Process)?;
        if ev.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
            // mysql_common's payload reader panics on some damaged headers (an unknown
            // field's length past the end, an unknown compression type): an error instead.
            let tpe: TransactionPayloadEvent =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.read_event()))
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::other("malformed transaction payload event"))
                    })
                    .map_err(|e| ReadError::Event(n, offset, e))?;
            let mut inner_bytes = Vec::new();
            tpe.decompressed()
                .and_then(|r| r.take(MAX_PAYLOAD).read_to_end(&mut inner_bytes))
                .map_err(|e| ReadError::Event(n, offset, e))?;
            let mut i = 0;
            while i < inner_bytes.len() {
                let size =
                    check_frame(&inner_bytes[i..]).map_err(|e| ReadError::Event(n, offset, e))?;
                match esr.read_decompressed(&inner_bytes[i..i + size]) {
                    Ok(Some(inner)) => {
                        n += 1;
                        proc.handle(&inner, &mut out).map_err(ReadError::Process)?;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(ReadError::Event(n, offset, e)),
                }
                i += size;
            }
        }
        for c in out.drain(..) {
            on_commit(c);
        }
    }
    Ok(n)
}
