//! The item codec of composite routes: requests they build from parsed fields (a backfill
//! `add`, a `set` with a gutter TTL, a hold-off tombstone, a meta get for a value's flags
//! and remaining TTL) and the replies they read back into an [`Item`] (the `mg` header and
//! the lease rule come from `marker::memcache`). They work on the frames the protocol
//! parser produced and never touch the hot path of plain pools.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use marker::memcache::MetaGet;

use super::reply::Reply;
use super::{Cmd, KeyedRequest, MetaOp, Op, Request, StoreMode};

/// The bytes of a reply, joined when it came in pieces.
pub fn bytes_of(r: &Reply) -> Cow<'_, [u8]> {
    match r {
        Reply::Data(b) | Reply::Error(b) => Cow::Borrowed(&b[..]),
        Reply::Chunks(c) => Cow::Owned(c.concat()),
    }
}

/// An item as read from a server.
#[derive(Debug, Clone)]
pub struct Item {
    pub flags: u32,
    /// The value, without its `\r\n`.
    pub data: Bytes,
    pub cas: Option<u64>,
    /// Remaining TTL in seconds (`mg ... t`): -1 never expires.
    pub ttl: Option<i64>,
}

impl Item {
    pub fn is_tombstone(&self) -> bool {
        marker::holdoff::is_tombstone(self.flags, self.data.len())
    }

    /// The exptime that gives a copy the same remaining life (0: never expires).
    pub fn exptime(&self) -> i64 {
        match self.ttl {
            Some(t) if t > 0 => t,
            Some(0) => 1, // expires this second
            _ => 0,
        }
    }
}

/// What a read returned.
#[derive(Debug, Clone)]
pub enum Read {
    Hit(Item),
    Miss,
    /// An error (router-made or from the server): not a miss, not a hit.
    Failed,
}

fn num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Reads a one-key text get/gets reply: `VALUE k f n [cas]\r\n<data>\r\nEND\r\n` or `END`.
pub fn parse_get(r: &Reply) -> Read {
    let Reply::Data(d) = r else {
        if let Reply::Chunks(_) = r {
            return parse_get(&Reply::Data(Bytes::from(bytes_of(r).into_owned())));
        }
        return Read::Failed;
    };
    if d.starts_with(b"END") {
        return Read::Miss;
    }
    if !d.starts_with(b"VALUE ") {
        return Read::Failed;
    }
    let Some(nl) = memchr::memchr(b'\n', d) else {
        return Read::Failed;
    };
    let line = d[..nl].strip_suffix(b"\r").unwrap_or(&d[..nl]);
    let toks: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let (Some(flags), Some(len)) = (
        toks.get(2).and_then(|t| num::<u32>(t)),
        toks.get(3).and_then(|t| num::<usize>(t)),
    ) else {
        return Read::Failed;
    };
    let start = nl + 1;
    if d.len() < start + len {
        return Read::Failed;
    }
    Read::Hit(Item {
        flags,
        data: d.slice(start..start + len),
        cas: toks.get(4).and_then(|t| num(t)),
        ttl: None,
    })
}

/// The first line of a reply, without its `\r\n`, and where the rest starts.
fn first_line(d: &[u8]) -> (&[u8], usize) {
    let nl = memchr::memchr(b'\n', d).unwrap_or(d.len());
    (d[..nl].strip_suffix(b"\r").unwrap_or(&d[..nl]), nl + 1)
}

/// Reads an `mg` reply asked with `v f t` (and maybe `c`): `VA n f.. t.. c..` or `EN`. A
/// lease placeholder or a stale item is a miss (`marker::memcache`'s rule): for a reader
/// that backfills other layers it is no value to serve or copy.
pub fn parse_mg(r: &Reply) -> Read {
    let Reply::Data(d) = r else {
        if let Reply::Chunks(_) = r {
            return parse_mg(&Reply::Data(Bytes::from(bytes_of(r).into_owned())));
        }
        return Read::Failed;
    };
    if memchr::memchr(b'\n', d).is_none() {
        return Read::Failed;
    }
    let (line, start) = first_line(d);
    let v = match MetaGet::parse(line) {
        Some(MetaGet::Miss) => return Read::Miss,
        Some(MetaGet::Found(v)) if !v.is_value() => return Read::Miss,
        Some(MetaGet::Found(v)) => v,
        None => return Read::Failed,
    };
    if d.len() < start + v.len {
        return Read::Failed;
    }
    Read::Hit(Item {
        flags: v.flags.unwrap_or(0),
        data: d.slice(start..start + v.len),
        cas: v.cas,
        ttl: v.ttl,
    })
}

/// True when an `mg` reply is a hold-off tombstone (only visible if `f` was asked).
pub fn mg_is_tombstone(d: &[u8]) -> bool {
    matches!(
        MetaGet::parse(first_line(d).0),
        Some(MetaGet::Found(v)) if v.flags.is_some_and(|f| marker::holdoff::is_tombstone(f, v.len))
    )
}

/// The reply a text `get` (or `gets`, with a CAS) gives for `item`.
pub fn value_reply(key: &[u8], item: &Item, with_cas: bool) -> Reply {
    let mut b = BytesMut::with_capacity(key.len() + item.data.len() + 64);
    b.extend_from_slice(b"VALUE ");
    b.extend_from_slice(key);
    b.extend_from_slice(format!(" {} {}", item.flags, item.data.len()).as_bytes());
    if with_cas {
        b.extend_from_slice(format!(" {}", item.cas.unwrap_or(0)).as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b.extend_from_slice(&item.data);
    b.extend_from_slice(b"\r\nEND\r\n");
    Reply::Data(b.freeze())
}

pub fn miss_reply(cmd: Cmd) -> Reply {
    Reply::Data(Bytes::from_static(if cmd == Cmd::Mg {
        b"EN\r\n"
    } else {
        b"END\r\n"
    }))
}

fn keyed(cmd: Cmd, key: &[u8], op: Op, nkeys: u16) -> Request {
    Request::Keyed(KeyedRequest {
        cmd,
        key: Bytes::copy_from_slice(key),
        op,
        nkeys,
    })
}

/// `mg <key> <flags>` (the key as text; keys reach routes already decoded). The reply
/// comes back as memcached gives it, without an opaque.
pub fn mg(key: &[u8], flags: &str) -> Request {
    let mut b = BytesMut::with_capacity(key.len() + flags.len() + 8);
    b.extend_from_slice(b"mg ");
    b.extend_from_slice(key);
    b.put_u8(b' ');
    b.extend_from_slice(flags.as_bytes());
    let at = b.len();
    keyed(
        Cmd::Mg,
        key,
        Op::Meta(MetaOp {
            line: b.freeze(),
            opaque_at: at,
            data: Bytes::new(),
            opaque: None,
            takes_opaque: true,
        }),
        1,
    )
}

/// `set`/`add` of `data` with `flags` and `exptime`.
pub fn store(cmd: Cmd, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Request {
    let mut d = BytesMut::with_capacity(data.len() + 2);
    d.extend_from_slice(data);
    d.extend_from_slice(b"\r\n");
    let (cmd, mode) = match cmd {
        Cmd::Add => (Cmd::Add, StoreMode::Add),
        _ => (Cmd::Set, StoreMode::Set),
    };
    keyed(
        cmd,
        key,
        Op::Store {
            mode,
            flags,
            exptime: exptime.clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            cas: 0,
            data: d.freeze(),
        },
        0,
    )
}

/// `delete <key>`.
pub fn delete(key: &[u8]) -> Request {
    keyed(Cmd::Delete, key, Op::Delete, 0)
}

/// The hold-off tombstone (see `marker::holdoff`): a `set` of an empty value.
pub fn tombstone(key: &[u8], holdoff_secs: u32) -> Request {
    keyed(
        Cmd::Set,
        key,
        Op::Store {
            mode: StoreMode::Set,
            flags: marker::holdoff::TOMBSTONE_FLAGS,
            exptime: holdoff_secs.min(i32::MAX as u32) as i32,
            cas: 0,
            data: Bytes::from_static(b"\r\n"),
        },
        0,
    )
}

/// A text storage command, taken apart.
#[derive(Debug, Clone)]
pub struct Storage {
    pub flags: u32,
    pub exptime: i64,
    /// The value without `\r\n`.
    pub data: Bytes,
}

/// Flags, exptime and value of a text `set`/`add`/`replace`/`append`/`prepend`/`cas`.
pub fn storage_of(k: &KeyedRequest) -> Option<Storage> {
    match &k.op {
        Op::Store {
            flags,
            exptime,
            data,
            ..
        } => Some(Storage {
            flags: *flags,
            exptime: i64::from(*exptime),
            data: data.slice(..data.len() - 2),
        }),
        _ => None,
    }
}

/// memcached reads exptimes over 30 days as unix times.
const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// The exptime capped at `cap` seconds (0, negative and absolute times included).
pub fn capped(exptime: i64, cap: u32) -> i64 {
    let cap = i64::from(cap);
    if exptime < 0 {
        exptime // already expired: keep
    } else if exptime == 0 || exptime > REALTIME_MAXDELTA {
        cap
    } else {
        exptime.min(cap)
    }
}

/// The same storage request with its TTL capped at `cap` seconds (text storage and `ms`;
/// anything else is returned unchanged).
pub fn with_ttl_cap(req: &Request, cap: u32) -> Request {
    let Request::Keyed(k) = req else {
        return req.clone();
    };
    let op = match &k.op {
        Op::Store {
            mode,
            flags,
            exptime,
            cas,
            data,
        } => Op::Store {
            mode: *mode,
            flags: *flags,
            exptime: capped(i64::from(*exptime), cap) as i32,
            cas: *cas,
            data: data.clone(),
        },
        Op::Meta(m) if k.cmd == Cmd::Ms => {
            // The T token rewritten, or added: `ms <key> <len> <flags...>`. The router's
            // opaque keeps its place between the same two tokens (offsets shift when a
            // T token changes length).
            let mut out = BytesMut::with_capacity(m.line.len() + 16);
            let mut opaque_at = None;
            let mut old_end = 0;
            let mut seen = false;
            for (i, t) in m.line.split(|&b| b == b' ').enumerate() {
                if i > 0 {
                    out.put_u8(b' ');
                    old_end += 1;
                }
                if i >= 3 && t.first() == Some(&b'T') {
                    let exp = super::number::strtol(&t[1..]).unwrap_or(0);
                    out.extend_from_slice(format!("T{}", capped(i64::from(exp), cap)).as_bytes());
                    seen = true;
                } else {
                    out.extend_from_slice(t);
                }
                old_end += t.len();
                if old_end == m.opaque_at && opaque_at.is_none() {
                    opaque_at = Some(out.len());
                }
            }
            if !seen {
                out.extend_from_slice(format!(" T{cap}").as_bytes());
            }
            let opaque_at = opaque_at.unwrap_or(out.len());
            Op::Meta(MetaOp {
                line: out.freeze(),
                opaque_at,
                data: m.data.clone(),
                opaque: m.opaque.clone(),
                takes_opaque: m.takes_opaque,
            })
        }
        _ => return req.clone(),
    };
    Request::Keyed(KeyedRequest {
        cmd: k.cmd,
        key: k.key.clone(),
        op,
        nkeys: k.nkeys,
    })
}

/// True for a reply that says a write took effect.
pub fn is_success(d: &[u8]) -> bool {
    d.starts_with(b"STORED")
        || d.starts_with(b"DELETED")
        || d.starts_with(b"TOUCHED")
        || d.starts_with(b"OK")
        || d.starts_with(b"HD")
        || d.first().is_some_and(|b| b.is_ascii_digit())
        || d.starts_with(b"VA ")
}

/// How bad a reply is, for all-sync's "worst reply": router errors, then server and
/// client errors, then "did not happen" (not stored, not found, exists, miss), then success.
pub fn badness(r: &Reply) -> u8 {
    let d = match r {
        Reply::Error(_) => return 4,
        Reply::Chunks(c) => return u8::from(c.len() <= 1), // only END: a miss
        Reply::Data(d) => d,
    };
    if d.starts_with(b"SERVER_ERROR") {
        3
    } else if d.starts_with(b"CLIENT_ERROR") || d.starts_with(b"ERROR") {
        2
    } else if d.starts_with(b"NOT_")
        || d.starts_with(b"EXISTS")
        || d.starts_with(b"END")
        || d.starts_with(b"EN")
        || d.starts_with(b"NS")
        || d.starts_with(b"NF")
        || d.starts_with(b"EX")
    {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_req(cmd: Cmd, exptime: i32) -> Request {
        Request::Keyed(KeyedRequest {
            cmd,
            key: Bytes::from_static(b"k"),
            op: Op::Store {
                mode: StoreMode::Set,
                flags: 5,
                exptime,
                cas: 0,
                data: Bytes::from_static(b"ab\r\n"),
            },
            nkeys: 0,
        })
    }

    fn exptime_of(r: &Request) -> i32 {
        match r {
            Request::Keyed(KeyedRequest {
                op: Op::Store { exptime, .. },
                ..
            }) => *exptime,
            _ => panic!("not a store"),
        }
    }

    fn meta_line(r: &Request) -> Vec<u8> {
        match r {
            Request::Keyed(KeyedRequest {
                op: Op::Meta(m), ..
            }) => m.line.to_vec(),
            _ => panic!("not meta"),
        }
    }

    fn ms(line: &'static [u8]) -> Request {
        Request::Keyed(KeyedRequest {
            cmd: Cmd::Ms,
            key: Bytes::from_static(b"k"),
            op: Op::Meta(MetaOp {
                line: Bytes::from_static(line),
                opaque_at: line.len(),
                data: Bytes::from_static(b"ab\r\n"),
                opaque: None,
                takes_opaque: true,
            }),
            nkeys: 0,
        })
    }

    #[test]
    fn ttl_caps() {
        assert_eq!(exptime_of(&with_ttl_cap(&store_req(Cmd::Set, 0), 10)), 10);
        assert_eq!(exptime_of(&with_ttl_cap(&store_req(Cmd::Set, 3), 10)), 3);
        assert_eq!(
            exptime_of(&with_ttl_cap(&store_req(Cmd::Cas, 2_000_000_000), 10)),
            10
        );
        assert_eq!(
            meta_line(&with_ttl_cap(&ms(b"ms k 2 T100 F3"), 10)),
            b"ms k 2 T10 F3"
        );
        assert_eq!(meta_line(&with_ttl_cap(&ms(b"ms k 2"), 10)), b"ms k 2 T10");
        // The client's opaque sat between T100 and F3: the router's goes there still.
        let mut mid = ms(b"ms k 2 T100 F3");
        if let Request::Keyed(KeyedRequest {
            op: Op::Meta(m), ..
        }) = &mut mid
        {
            m.opaque_at = b"ms k 2 T100".len();
        }
        let capped_mid = with_ttl_cap(&mid, 10);
        let Request::Keyed(KeyedRequest {
            op: Op::Meta(m), ..
        }) = &capped_mid
        else {
            panic!("not meta")
        };
        assert_eq!(
            [&m.line[..m.opaque_at], b" O7", &m.line[m.opaque_at..]].concat(),
            b"ms k 2 T10 O7 F3"
        );
        let d = delete(b"k");
        assert!(matches!(
            with_ttl_cap(&d, 10),
            Request::Keyed(KeyedRequest { op: Op::Delete, .. })
        ));
    }

    #[test]
    fn storage_and_replies() {
        let Request::Keyed(k) = store(Cmd::Add, b"k", 7, 30, b"abc") else {
            panic!()
        };
        let s = storage_of(&k).unwrap();
        assert_eq!((s.flags, s.exptime, &s.data[..]), (7, 30, &b"abc"[..]));
        let Read::Hit(i) = parse_get(&Reply::Data(Bytes::from_static(
            b"VALUE k 7 3 99\r\nabc\r\nEND\r\n",
        ))) else {
            panic!()
        };
        assert_eq!((i.flags, &i.data[..], i.cas), (7, &b"abc"[..], Some(99)));
        let Read::Hit(i) = parse_mg(&Reply::Data(Bytes::from_static(
            b"VA 3 f7 t-1 c5\r\nabc\r\n",
        ))) else {
            panic!()
        };
        assert_eq!((i.flags, i.ttl, i.exptime()), (7, Some(-1), 0));
        assert!(matches!(
            parse_mg(&Reply::Data(Bytes::from_static(b"EN\r\n"))),
            Read::Miss
        ));
        assert!(matches!(parse_get(&Reply::error("x")), Read::Failed));
        assert!(mg_is_tombstone(b"VA 0 f1397836872\r\n\r\n"));
        assert!(!mg_is_tombstone(b"VA 0 f1\r\n\r\n"));
        let r = value_reply(b"k", &i, false);
        assert_eq!(&bytes_of(&r)[..], b"VALUE k 7 3\r\nabc\r\nEND\r\n");
        // garbage never panics
        for g in [
            &b"VALUE"[..],
            b"VALUE k x y\r\n",
            b"VALUE k 1 99\r\nab",
            b"VA x\r\n",
        ] {
            let _ = parse_get(&Reply::Data(Bytes::copy_from_slice(g)));
            let _ = parse_mg(&Reply::Data(Bytes::copy_from_slice(g)));
        }
    }

    #[test]
    fn lease_placeholders_and_stale_items_are_misses() {
        for reply in [
            &b"VA 0 t30 f0 Z\r\n\r\n"[..],
            b"VA 0 c1 W\r\n\r\n",
            b"VA 1 t30 f0 X W\r\nx\r\n",
        ] {
            assert!(
                matches!(
                    parse_mg(&Reply::Data(Bytes::from_static(reply))),
                    Read::Miss
                ),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
    }
}
