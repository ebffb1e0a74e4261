//! Client-side protocol: turns bytes in a connection's read buffer into requests.
//!
//! Parsing is split from execution: [`parse`] only looks at a borrowed slice and reports
//! how many bytes one request takes and what it is, with positions instead of copies. The
//! client then cuts exactly those bytes off its `BytesMut` (one `split_to().freeze()`, no
//! copy) and [`Step::into_parsed`] turns positions into `Bytes` slices of that frame. A
//! request line plus its value usually travel to the backend as that one slice.
//!
//! The router only understands as much of a command as it needs to route it, frame it
//! and keep the connection in sync (key, value length, `noreply`, meta `q` and `b`). Every
//! other argument is checked by the memcached server, whose error reply is passed back
//! unchanged: that is how replies stay byte-identical to memcached's.

pub mod meta;
pub mod reply;
pub mod text;

use std::ops::Range;

use bytes::Bytes;

/// Every command the router counts in `stats`; the order is the order of `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    Get,
    Gets,
    Gat,
    Gats,
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
    Delete,
    Incr,
    Decr,
    Touch,
    FlushAll,
    Version,
    Stats,
    Verbosity,
    Quit,
    Mg,
    Ms,
    Md,
    Ma,
    Mn,
    Me,
    /// Unknown or malformed commands.
    Other,
}

impl Cmd {
    pub const ALL: [Cmd; 26] = [
        Cmd::Get,
        Cmd::Gets,
        Cmd::Gat,
        Cmd::Gats,
        Cmd::Set,
        Cmd::Add,
        Cmd::Replace,
        Cmd::Append,
        Cmd::Prepend,
        Cmd::Cas,
        Cmd::Delete,
        Cmd::Incr,
        Cmd::Decr,
        Cmd::Touch,
        Cmd::FlushAll,
        Cmd::Version,
        Cmd::Stats,
        Cmd::Verbosity,
        Cmd::Quit,
        Cmd::Mg,
        Cmd::Ms,
        Cmd::Md,
        Cmd::Ma,
        Cmd::Mn,
        Cmd::Me,
        Cmd::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cmd::Get => "get",
            Cmd::Gets => "gets",
            Cmd::Gat => "gat",
            Cmd::Gats => "gats",
            Cmd::Set => "set",
            Cmd::Add => "add",
            Cmd::Replace => "replace",
            Cmd::Append => "append",
            Cmd::Prepend => "prepend",
            Cmd::Cas => "cas",
            Cmd::Delete => "delete",
            Cmd::Incr => "incr",
            Cmd::Decr => "decr",
            Cmd::Touch => "touch",
            Cmd::FlushAll => "flush_all",
            Cmd::Version => "version",
            Cmd::Stats => "stats",
            Cmd::Verbosity => "verbosity",
            Cmd::Quit => "quit",
            Cmd::Mg => "mg",
            Cmd::Ms => "ms",
            Cmd::Md => "md",
            Cmd::Ma => "ma",
            Cmd::Mn => "mn",
            Cmd::Me => "me",
            Cmd::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// Commands whose replies count as hits or misses.
    pub fn is_retrieval(self) -> bool {
        matches!(self, Cmd::Get | Cmd::Gets | Cmd::Gat | Cmd::Gats | Cmd::Mg)
    }
}

/// How a backend's reply to a request is delimited, so replies can be matched to requests
/// on a pipelined connection without understanding them fully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// One line (`STORED`, `DELETED`, `HD`, `CLIENT_ERROR ...`).
    Line,
    /// `VALUE` blocks up to `END` (get/gets/gat/gats), or one error line.
    Values,
    /// One line, followed by a data block when it starts with `VA` (mg, ma).
    Meta,
}

/// Which replies the client asked not to see. The router never forwards `noreply` or the
/// meta `q` flag: a backend that stays silent could not be matched on a pipelined
/// connection, so the backend always answers and the router drops what the client muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    No,
    /// Text `noreply`: nothing at all.
    All,
    /// `mg ... q`: hide `EN` (miss).
    Miss,
    /// `ms`/`md ... q`: hide `HD`.
    Success,
    /// `ma ... q`: hide `HD` and `VA` (memcached 1.6 hides both).
    SuccessOrValue,
}

impl Quiet {
    pub fn hides(self, reply: &[u8]) -> bool {
        match self {
            Quiet::No => false,
            Quiet::All => true,
            Quiet::Miss => reply.starts_with(b"EN"),
            Quiet::Success => reply.starts_with(b"HD"),
            Quiet::SuccessOrValue => reply.starts_with(b"HD") || reply.starts_with(b"VA"),
        }
    }
}

/// A request that needs a backend: what a [`crate::route::Route`] receives.
#[derive(Debug, Clone)]
pub enum Request {
    /// One key, so one server: storage, delete, incr/decr, touch, a one-key get, meta.
    Keyed(KeyedRequest),
    /// A get/gets/gat/gats with several keys, possibly on several servers.
    MultiGet(MultiGetRequest),
    /// `flush_all` (already without `noreply`): goes to every server.
    FlushAll { wire: Bytes },
    /// `version`: answered by a backend server.
    Version,
}

impl Request {
    pub fn cmd(&self) -> Cmd {
        match self {
            Request::Keyed(k) => k.cmd,
            Request::MultiGet(m) => m.cmd,
            Request::FlushAll { .. } => Cmd::FlushAll,
            Request::Version => Cmd::Version,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyedRequest {
    pub cmd: Cmd,
    /// The key to hash (base64-decoded for meta `b`).
    pub key: Bytes,
    /// Bytes to send: the command line (and value), ready for the backend.
    pub wire: Bytes,
    /// A second part to send right after `wire` (the value, when the line was rewritten).
    pub wire2: Bytes,
    pub frame: Frame,
    /// How many keys a hit/miss count covers (0: not a retrieval).
    pub nkeys: u16,
}

#[derive(Debug, Clone)]
pub struct MultiGetRequest {
    pub cmd: Cmd,
    /// `get`, `gets`, `gat <exptime>` or `gats <exptime>`: what each per-server line starts with.
    pub head: Bytes,
    pub keys: Vec<Bytes>,
    /// The whole original line, sent as it is when every key lives on one server.
    pub line: Bytes,
}

/// What the client connection does with one parsed frame.
#[derive(Debug)]
pub enum Parsed {
    /// Send to the route; the reply is filtered by `Quiet`.
    Route(Request, Quiet),
    /// Answer locally with these bytes (errors memcached would give).
    Reply(&'static [u8]),
    Stats(Bytes),
    Verbosity {
        noreply: bool,
    },
    Mn,
    Quit,
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest value accepted; larger ones are refused and drained.
    pub max_value: usize,
    /// Longest `get`/`gets` line (memcached bounds other lines at 2048 bytes).
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value: 1024 * 1024,
            max_get_line: 256 * 1024,
        }
    }
}

/// A key position in the frame, or a decoded (base64) key.
#[derive(Debug, Clone)]
pub enum KeyRef {
    At(Range<usize>),
    Decoded(Bytes),
}

/// Bytes to send: a slice of the frame, or a rewritten line.
#[derive(Debug, Clone)]
pub enum WireRef {
    At(Range<usize>),
    Owned(Bytes),
}

/// A parsed frame with positions into the buffer it was parsed from.
#[derive(Debug)]
pub enum Raw {
    Keyed {
        cmd: Cmd,
        key: KeyRef,
        wire: WireRef,
        wire2: Option<Range<usize>>,
        frame: Frame,
        quiet: Quiet,
        nkeys: u16,
    },
    MultiGet {
        cmd: Cmd,
        head: Range<usize>,
        keys: Vec<Range<usize>>,
        line: Range<usize>,
    },
    FlushAll {
        wire: WireRef,
        quiet: Quiet,
    },
    Version,
    Reply(&'static [u8]),
    Stats(Range<usize>),
    Verbosity {
        noreply: bool,
    },
    Mn,
    Quit,
}

/// One step of parsing the read buffer.
#[derive(Debug)]
pub enum Step {
    /// Not a whole request yet: read more.
    Incomplete,
    /// The first `len` bytes are one request.
    Frame { len: usize, raw: Raw },
    /// Reply `reply`, drop the first `len` bytes, then discard `drain` more bytes as they
    /// arrive (an oversized value is never buffered).
    Swallow {
        len: usize,
        drain: usize,
        reply: &'static [u8],
        /// Where the key sits in the buffer when the refusal must also delete it: memcached
        /// unlinks the old item when a `set` is refused as too large, so that a value the
        /// application tried to replace is not served on.
        delete: Option<std::ops::Range<usize>>,
    },
    /// What memcached does with an unterminated line this long: close the connection.
    Close,
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Step {
    text::parse(buf, limits)
}

impl Raw {
    /// Resolves positions against `frame`, the bytes the request was parsed from.
    pub fn into_parsed(self, frame: &Bytes) -> Parsed {
        let wire = |w: WireRef| match w {
            WireRef::At(r) => frame.slice(r),
            WireRef::Owned(b) => b,
        };
        match self {
            Raw::Keyed {
                cmd,
                key,
                wire: w,
                wire2,
                frame: f,
                quiet,
                nkeys,
            } => Parsed::Route(
                Request::Keyed(KeyedRequest {
                    cmd,
                    key: match key {
                        KeyRef::At(r) => frame.slice(r),
                        KeyRef::Decoded(b) => b,
                    },
                    wire: wire(w),
                    wire2: wire2.map(|r| frame.slice(r)).unwrap_or_default(),
                    frame: f,
                    nkeys,
                }),
                quiet,
            ),
            Raw::MultiGet {
                cmd,
                head,
                keys,
                line,
            } => Parsed::Route(
                Request::MultiGet(MultiGetRequest {
                    cmd,
                    head: frame.slice(head),
                    keys: keys.into_iter().map(|r| frame.slice(r)).collect(),
                    line: frame.slice(line),
                }),
                Quiet::No,
            ),
            Raw::FlushAll { wire: w, quiet } => {
                Parsed::Route(Request::FlushAll { wire: wire(w) }, quiet)
            }
            Raw::Version => Parsed::Route(Request::Version, Quiet::No),
            Raw::Reply(r) => Parsed::Reply(r),
            Raw::Stats(r) => Parsed::Stats(frame.slice(r)),
            Raw::Verbosity { noreply } => Parsed::Verbosity { noreply },
            Raw::Mn => Parsed::Mn,
            Raw::Quit => Parsed::Quit,
        }
    }

    pub fn cmd(&self) -> Cmd {
        match self {
            Raw::Keyed { cmd, .. } | Raw::MultiGet { cmd, .. } => *cmd,
            Raw::FlushAll { .. } => Cmd::FlushAll,
            Raw::Version => Cmd::Version,
            Raw::Reply(_) => Cmd::Other,
            Raw::Stats(_) => Cmd::Stats,
            Raw::Verbosity { .. } => Cmd::Verbosity,
            Raw::Mn => Cmd::Mn,
            Raw::Quit => Cmd::Quit,
        }
    }
}

pub const ERROR: &[u8] = b"ERROR\r\n";
pub const BAD_FORMAT: &[u8] = b"CLIENT_ERROR bad command line format\r\n";
pub const BAD_CHUNK: &[u8] = b"CLIENT_ERROR bad data chunk\r\n";
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
pub const BAD_EXPTIME: &[u8] = b"CLIENT_ERROR invalid exptime argument\r\n";
pub const BAD_B64_KEY: &[u8] = b"CLIENT_ERROR error decoding key\r\n";

/// memcached's tokenizer: single spaces separate tokens, runs of spaces produce no empty
/// tokens. Returns the number of tokens written; at most `out.len()`, the last one holding
/// the rest of the line when there are more.
pub(crate) fn tokenize(line: &[u8], base: usize, out: &mut [Range<usize>]) -> usize {
    let mut n = 0;
    let mut start = 0;
    let len = line.len();
    let mut i = 0;
    while i < len {
        if line[i] == b' ' {
            if i > start {
                if n == out.len() - 1 {
                    out[n] = base + start..base + len;
                    return n + 1;
                }
                out[n] = base + start..base + i;
                n += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    if len > start {
        out[n] = base + start..base + len;
        n += 1;
    }
    n
}

/// Key rule for routing: memcached's length limit plus the project-wide rule
/// ([`marker::key::validate`]) that also refuses control characters.
pub(crate) fn key_ok(key: &[u8]) -> bool {
    marker::key::validate(key).is_ok()
}

/// `strtoul`-like: decimal digits only, fits in u64.
pub(crate) fn parse_u64(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in t {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// `strtol`-like: optional `-`, then decimal digits, fits in i64.
pub(crate) fn parse_i64(t: &[u8]) -> Option<i64> {
    match t.split_first() {
        Some((b'-', rest)) => parse_u64(rest)
            .filter(|&v| v <= i64::MAX as u64 + 1)
            .map(|v| (v as i64).wrapping_neg()),
        _ => parse_u64(t).and_then(|v| i64::try_from(v).ok()),
    }
}

#[cfg(test)]
mod tests;
