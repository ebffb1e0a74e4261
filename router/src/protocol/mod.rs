//! Client-side protocol: turns bytes in a connection's read buffer into requests.
//!
//! Parsing is split from execution: [`parse`] only looks at a borrowed slice and reports
//! how many bytes one request takes and what it is, with positions instead of copies. The
//! client then cuts exactly those bytes off its `BytesMut` (one `split_to().freeze()`, no
//! copy) and [`Raw::into_parsed`] turns positions into `Bytes` slices of that frame (a
//! value travels to the backend as that slice).
//!
//! **Isolation rests here.** Backend connections are process by every client of a worker,
//! and replies are matched to requests there. So the router never forwards a client's
//! bytes: every command is parsed as strictly as memcached 1.6 parses it (same tokenizer,
//! token counts, number rules, meta flag rules, and the same decisions about when a value
//! is swallowed), whatever memcached would refuse is refused here with memcached's own
//! error, and what is accepted becomes a typed [`Op`] that the backend codec
//! (`crate::backend::codec`) rebuilds as one canonical meta command with the router's own
//! opaque token. Nothing a client sends reaches a backend as it was sent.

pub mod item_codec;
pub mod meta;
pub mod number;
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

/// The text storage commands, as the backend's `ms` modes express them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

/// What the backend is asked to do for one key. Every field was checked by the parser;
/// the backend codec turns it into one meta command.
#[derive(Debug, Clone)]
pub enum Op {
    /// Text `get`/`gets`/`gat`/`gats` of one key (answered as `VALUE ... END`).
    Get {
        cas: bool,
        touch: Option<i32>,
    },
    /// Text storage; `data` is the value with its `\r\n`.
    Store {
        mode: StoreMode,
        flags: u32,
        exptime: i32,
        cas: u64,
        data: Bytes,
    },
    Delete,
    Arith {
        decr: bool,
        delta: u64,
    },
    Touch {
        exptime: i32,
    },
    /// A meta command (`mg`/`ms`/`md`/`ma`/`me`), rebuilt from its validated tokens.
    Meta(MetaOp),
}

/// A client's meta command, ready for a backend.
#[derive(Debug, Clone)]
pub struct MetaOp {
    /// Command, key and flags without `q` and `O`, without `\r\n`.
    pub line: Bytes,
    /// Where in `line` the router's ` O<n>` goes: where the client had its own, so the
    /// reply's flags come back in the order memcached would give them.
    pub opaque_at: usize,
    /// The value of an `ms`, with its `\r\n` (empty otherwise).
    pub data: Bytes,
    /// The client's own `O` token (with the `O`), put back into the reply.
    pub opaque: Option<Bytes>,
    /// False for `me` (no flags) and for a command with no room left for the router's
    /// opaque under memcached's token limit: such a reply is matched by order alone.
    pub takes_opaque: bool,
}

/// A request that needs a backend: what a [`crate::route::Route`] receives.
#[derive(Debug, Clone)]
pub enum Request {
    /// One key, so one server: storage, delete, incr/decr, touch, a one-key get, meta.
    Keyed(KeyedRequest),
    /// A get/gets/gat/gats with several keys, possibly on several servers.
    MultiGet(MultiGetRequest),
    /// `flush_all [delay]`: goes to every server.
    FlushAll { delay: Option<i32> },
    /// `version`: answered by a backend server.
    Version,
    /// `stats settings|items|slabs|sizes|conns|reset`: asked of every server of a pool
    /// and merged (see `crate::route::pool`).
    Stats { args: Bytes },
}

impl Request {
    pub fn cmd(&self) -> Cmd {
        match self {
            Request::Keyed(k) => k.cmd,
            Request::MultiGet(m) => m.cmd,
            Request::FlushAll { .. } => Cmd::FlushAll,
            Request::Version => Cmd::Version,
            Request::Stats { .. } => Cmd::Stats,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyedRequest {
    pub cmd: Cmd,
    /// The key to hash (base64-decoded for meta `b`).
    pub key: Bytes,
    pub op: Op,
    /// How many keys a hit/miss count covers (0: not a retrieval).
    pub nkeys: u16,
}

#[derive(Debug, Clone)]
pub struct MultiGetRequest {
    pub cmd: Cmd,
    pub keys: Vec<Bytes>,
    /// `gets`/`gats`: return CAS values.
    pub cas: bool,
    /// `gat`/`gats`: the new exptime.
    pub touch: Option<i32>,
}

impl MultiGetRequest {
    /// The same command for `keys` (a share of this one, on one server).
    pub fn with_keys(&self, keys: Vec<Bytes>) -> MultiGetRequest {
        MultiGetRequest {
            cmd: self.cmd,
            keys,
            cas: self.cas,
            touch: self.touch,
        }
    }

    /// The same command for one key.
    pub fn single(&self, key: Bytes) -> KeyedRequest {
        KeyedRequest {
            cmd: self.cmd,
            key,
            op: Op::Get {
                cas: self.cas,
                touch: self.touch,
            },
            nkeys: 1,
        }
    }
}

/// What the client connection does with one parsed frame.
#[derive(Debug)]
pub enum Parsed {
    /// Send to the route; the reply is filtered by `Quiet`.
    Route(Request, Quiet),
    /// Answer locally with these bytes (errors memcached would give).
    Reply(&'static [u8]),
    /// `stats` with these arguments, answered by the router itself.
    Stats(Bytes),
    Verbosity,
    Mn,
    Quit,
}

/// Limits the parser enforces (`[limits] max_item_size` and `max_get_line`, part of
/// `crate::config::Limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest value accepted; larger ones are refused and drained.
    pub max_item_size: usize,
    /// Longest `get`/`gets`/`gat`/`gats` line: memcached itself has no bound for
    /// multi-gets, the router bounds what one client can make it buffer.
    pub max_get_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_item_size: 1024 * 1024,
            max_get_line: 16 * 1024 * 1024,
        }
    }
}

/// A key position in the frame, or a decoded (base64) key.
#[derive(Debug, Clone)]
pub enum KeyRef {
    At(Range<usize>),
    Decoded(Bytes),
}

/// An [`Op`] whose value is still a position in the frame.
#[derive(Debug, Clone)]
pub enum RawOp {
    Get {
        cas: bool,
        touch: Option<i32>,
    },
    Store {
        mode: StoreMode,
        flags: u32,
        exptime: i32,
        cas: u64,
        data: Range<usize>,
    },
    Delete,
    Arith {
        decr: bool,
        delta: u64,
    },
    Touch {
        exptime: i32,
    },
    Meta {
        line: Bytes,
        opaque_at: usize,
        data: Option<Range<usize>>,
        opaque: Option<Range<usize>>,
        takes_opaque: bool,
    },
}

/// A parsed frame with positions into the buffer it was parsed from.
#[derive(Debug)]
pub enum Raw {
    Keyed {
        cmd: Cmd,
        key: KeyRef,
        op: RawOp,
        quiet: Quiet,
        nkeys: u16,
    },
    MultiGet {
        cmd: Cmd,
        keys: Vec<Range<usize>>,
        cas: bool,
        touch: Option<i32>,
    },
    FlushAll {
        delay: Option<i32>,
        quiet: Quiet,
    },
    Version,
    /// Forwarded stats (`settings`, `items`, ...): the argument bytes.
    BackendStats(Range<usize>),
    Reply(&'static [u8]),
    Stats(Range<usize>),
    Verbosity,
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
        delete: Option<Vec<u8>>,
    },
    /// What memcached does with an unterminated line this long, or with `quit`: close
    /// this client's connection (after the replies before it).
    Close,
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8], limits: &Limits) -> Step {
    text::parse(buf, limits)
}

impl Raw {
    /// Resolves positions against `frame`, the bytes the request was parsed from.
    pub fn into_parsed(self, frame: &Bytes) -> Parsed {
        match self {
            Raw::Keyed {
                cmd,
                key,
                op,
                quiet,
                nkeys,
            } => {
                let op = match op {
                    RawOp::Get { cas, touch } => Op::Get { cas, touch },
                    RawOp::Store {
                        mode,
                        flags,
                        exptime,
                        cas,
                        data,
                    } => Op::Store {
                        mode,
                        flags,
                        exptime,
                        cas,
                        data: frame.slice(data),
                    },
                    RawOp::Delete => Op::Delete,
                    RawOp::Arith { decr, delta } => Op::Arith { decr, delta },
                    RawOp::Touch { exptime } => Op::Touch { exptime },
                    RawOp::Meta {
                        line,
                        opaque_at,
                        data,
                        opaque,
                        takes_opaque,
                    } => Op::Meta(MetaOp {
                        line,
                        opaque_at,
                        data: data.map(|r| frame.slice(r)).unwrap_or_default(),
                        opaque: opaque.map(|r| frame.slice(r)),
                        takes_opaque,
                    }),
                };
                Parsed::Route(
                    Request::Keyed(KeyedRequest {
                        cmd,
                        key: match key {
                            KeyRef::At(r) => frame.slice(r),
                            KeyRef::Decoded(b) => b,
                        },
                        op,
                        nkeys,
                    }),
                    quiet,
                )
            }
            Raw::MultiGet {
                cmd,
                keys,
                cas,
                touch,
            } => Parsed::Route(
                Request::MultiGet(MultiGetRequest {
                    cmd,
                    keys: keys.into_iter().map(|r| frame.slice(r)).collect(),
                    cas,
                    touch,
                }),
                Quiet::No,
            ),
            Raw::FlushAll { delay, quiet } => Parsed::Route(Request::FlushAll { delay }, quiet),
            Raw::Version => Parsed::Route(Request::Version, Quiet::No),
            Raw::BackendStats(r) => Parsed::Route(
                Request::Stats {
                    args: frame.slice(r),
                },
                Quiet::No,
            ),
            Raw::Reply(r) => Parsed::Reply(r),
            Raw::Stats(r) => Parsed::Stats(frame.slice(r)),
            Raw::Verbosity => Parsed::Verbosity,
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
            Raw::Stats(_) | Raw::BackendStats(_) => Cmd::Stats,
            Raw::Verbosity => Cmd::Verbosity,
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
pub const BAD_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta argument\r\n";
pub const BAD_B64_KEY: &[u8] = b"CLIENT_ERROR error decoding key\r\n";

/// memcached's `tokenize_command`: single spaces separate tokens, runs of spaces produce no
/// empty tokens, the line ends at its first NUL byte (memcached works on C strings). At
/// most `max` tokens (ranges relative to `line`); what follows the last one is left
/// untokenized, as memcached leaves it to its terminal token.
pub(crate) fn tokenize(line: &[u8], max: usize) -> Vec<Range<usize>> {
    let len = memchr::memchr(0, line).unwrap_or(line.len());
    let mut out = Vec::with_capacity(8);
    let mut start = 0;
    let mut i = 0;
    while i < len {
        if line[i] == b' ' {
            if i > start {
                out.push(start..i);
                if out.len() == max {
                    return out;
                }
            }
            start = i + 1;
        }
        i += 1;
    }
    if len > start {
        out.push(start..len);
    }
    out
}

/// memcached's only key rule in the text and meta protocols: at most 250 bytes. A key
/// cannot hold a space, `\n` or NUL (they end a token or the line) and anything else is a
/// key byte to memcached, control characters included.
pub(crate) fn key_ok(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= marker::key::MAX_KEY_LEN
}

#[cfg(test)]
mod tests;
