//! Binlog files and buffers of events read through the processor (tests, tools,
//! `squeal --read-file`): the source's [`EventReader`] frames and unpacks the events, the
//! [`Processor`] turns them into committed transactions.

use std::path::Path;

use super::process::{ProcessError, Processor};
use crate::model::Committed;
use crate::source::{EventError, EventReader};

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

impl From<EventError> for ReadError {
    fn from(e: EventError) -> ReadError {
        ReadError::Event(e.index, e.offset, e.error)
    }
}

/// Reads events back to back from `bytes` (what follows the magic of a binlog file). The
/// transactions an event commits are handed to `on_commit` once the outer event (with
/// everything inside its payload) is processed.
pub fn read_events(
    bytes: &[u8],
    proc: &mut Processor,
    on_commit: &mut dyn FnMut(Committed),
) -> Result<usize, ReadError> {
    let mut events = EventReader::new(bytes);
    let mut out = Vec::new();
    while let Some(ev) = events.next_event()? {
        if events.was_outer() {
            out.drain(..).for_each(&mut *on_commit);
        }
        proc.handle(&ev, &mut out).map_err(ReadError::Process)?;
        if events.at_outer_end() {
            out.drain(..).for_each(&mut *on_commit);
        }
    }
    out.drain(..).for_each(&mut *on_commit);
    Ok(events.count())
}
