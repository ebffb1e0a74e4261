//! Source: the binlog, read as a replica (live, [`live`]) or from a file or buffer of events
//! ([`EventReader`]), with what decoding row events needs: value layouts ([`decode`]),
//! MariaDB's own event types ([`mariadb`]), table schemas ([`schema`]) and the TIMESTAMP
//! time zone ([`zone`]). The source decodes events; turning them into keys is the extract
//! stage's (`extract::process`).

pub mod decode;
pub mod lag;
pub mod live;
pub mod mariadb;
pub mod schema;
pub mod zone;

use mysql_common::binlog::consts::{BinlogVersion, EventType};
use mysql_common::binlog::events::{Event, TransactionPayloadEvent};
use mysql_common::binlog::EventStreamReader;

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

/// An event that could not be read: how many events came before it (counting the one being
/// read), the offset of the (outer) event, and why.
#[derive(Debug)]
pub struct EventError {
    pub index: usize,
    pub offset: u64,
    pub error: std::io::Error,
}

/// The events of a buffer (what follows the magic of a binlog file), one at a time:
/// each event, and after a compressed transaction payload (MySQL 8) the events inside it.
/// Never panics on damaged bytes: each event is framed first, and mysql_common's panics
/// on malformed events become errors.
pub struct EventReader<'a> {
    bytes: &'a [u8],
    at: usize,
    esr: EventStreamReader,
    /// Events read so far.
    n: usize,
    /// Offset of the last outer event.
    offset: u64,
    /// The decompressed payload being read, and where in it the next event starts.
    inner: Vec<u8>,
    inner_at: usize,
    /// Unpacking the last payload failed: reported by the next call.
    unpack_error: Option<std::io::Error>,
    /// The last event returned was an outer one (not from inside a payload).
    outer: bool,
}

impl<'a> EventReader<'a> {
    pub fn new(bytes: &'a [u8]) -> EventReader<'a> {
        EventReader {
            bytes,
            at: 0,
            esr: EventStreamReader::new(BinlogVersion::Version4),
            n: 0,
            offset: 0,
            inner: Vec::new(),
            inner_at: 0,
            unpack_error: None,
            outer: false,
        }
    }

    /// Events read so far (inner events of payloads included).
    pub fn count(&self) -> usize {
        self.n
    }

    /// True when the last event returned was an outer event (not from inside a payload).
    pub fn was_outer(&self) -> bool {
        self.outer
    }

    /// True when the last event returned ends an outer event: it was not a payload, or it
    /// was the last event inside one.
    pub fn at_outer_end(&self) -> bool {
        self.unpack_error.is_none() && self.inner_at >= self.inner.len()
    }

    fn error(&self, error: std::io::Error) -> EventError {
        EventError {
            index: self.n,
            offset: self.offset,
            error,
        }
    }

    /// The next event; `Ok(None)` at the end.
    pub fn next_event(&mut self) -> Result<Option<Event>, EventError> {
        if let Some(e) = self.unpack_error.take() {
            return Err(self.error(e));
        }
        if self.inner_at < self.inner.len() {
            return self.next_inner();
        }
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        self.offset = self.at as u64;
        let size = check_frame(&self.bytes[self.at..]).map_err(|e| self.error(e))?;
        let (at, esr) = (self.at, &mut self.esr);
        // mysql_common panics on an event shorter than its checksum: an error instead.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            esr.read(&self.bytes[at..at + size])
        }))
        .unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "malformed event (shorter than its checksum?)",
            ))
        });
        let ev = match read {
            Ok(Some(ev)) => ev,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        self.at += size;
        self.n += 1;
        self.outer = true;
        if ev.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
            // Unpacked now, read from the next call on (after the caller saw the payload).
            self.inner.clear();
            self.inner_at = 0;
            if let Err(e) = unpack(&ev, &mut self.inner) {
                self.inner.clear();
                self.unpack_error = Some(e);
            }
        }
        Ok(Some(ev))
    }

    fn next_inner(&mut self) -> Result<Option<Event>, EventError> {
        let i = self.inner_at;
        let size = check_frame(&self.inner[i..]).map_err(|e| self.error(e))?;
        match self.esr.read_decompressed(&self.inner[i..i + size]) {
            Ok(Some(inner)) => {
                self.n += 1;
                self.inner_at += size;
                self.outer = false;
                Ok(Some(inner))
            }
            Ok(None) => {
                // Nothing more in this payload.
                self.inner_at = self.inner.len();
                self.next_event()
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

/// The decompressed events of a transaction payload event, into `out`.
fn unpack(ev: &Event, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    // mysql_common's payload reader panics on some damaged headers (an unknown field's
    // length past the end, an unknown compression type): an error instead.
    let tpe: TransactionPayloadEvent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || ev.read_event(),
    ))
    .unwrap_or_else(|_| Err(std::io::Error::other("malformed transaction payload event")))?;
    tpe.decompressed()
        .and_then(|r| r.take(MAX_PAYLOAD).read_to_end(out))
        .map(|_| ())
}
