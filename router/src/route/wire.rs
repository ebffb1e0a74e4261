//! Small encoders and decoders composite routes need: requests built from parsed fields
//! (a backfill `add`, a `set` with a gutter TTL, a hold-off tombstone, a meta get for a
//! value's flags and remaining TTL) and the few reply shapes they must read. They work on
//! the frames the protocol parser produced and never touch the hot path of plain pools.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::Reply;
use crate::protocol::{Cmd, Frame, KeyedRequest, MultiGetRequest, Request};

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

/// Reads an `mg` reply asked with `v f t` (and maybe `c`): `VA n f.. t.. c..` or `EN`.
pub fn parse_mg(r: &Reply) -> Read {
    let Reply::Data(d) = r else {
        return Read::Failed;
    };
    if d.starts_with(b"EN") {
        return Read::Miss;
    }
    if !d.starts_with(b"VA ") {
        return Read::Failed;
    }
    let Some(nl) = memchr::memchr(b'\n', d) else {
        return Read::Failed;
    };
    let line = d[..nl].strip_suffix(b"\r").unwrap_or(&d[..nl]);
    let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty()).skip(1);
    let Some(len) = toks.next().and_then(num::<usize>) else {
        return Read::Failed;
    };
    let mut item = Item {
        flags: 0,
        data: Bytes::new(),
        cas: None,
        ttl: None,
    };
    for t in toks {
        match t {
            // A lease placeholder being filled (W: this reader won, Z: another one did) or
            // an item marked stale (X) is no value to serve or copy: for a reader that
            // backfills other layers it is a miss.
            b"W" | b"Z" | b"X" => return Read::Miss,
            _ => {}
        }
        match t[0] {
            b'f' => item.flags = num(&t[1..]).unwrap_or(0),
            b't' => item.ttl = num(&t[1..]),
            b'c' => item.cas = num(&t[1..]),
            _ => {}
        }
    }
    let start = nl + 1;
    if d.len() < start + len {
        return Read::Failed;
    }
    item.data = d.slice(start..start + len);
    Read::Hit(item)
}

/// True when an `mg` reply is a hold-off tombstone (only visible if `f` was asked).
pub fn mg_is_tombstone(d: &[u8]) -> bool {
    let line_end = memchr::memchr(b'\n', d).unwrap_or(d.len());
    let line = d[..line_end].strip_suffix(b"\r").unwrap_or(&d[..line_end]);
    let toks: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let flag = format!("f{}", marker::holdoff::TOMBSTONE_FLAGS);
    toks.first() == Some(&&b"VA"[..])
        && toks.get(1) == Some(&&b"0"[..])
        && toks.iter().skip(2).any(|t| *t == flag.as_bytes())
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

fn keyed(cmd: Cmd, key: &[u8], wire: Bytes, frame: Frame, nkeys: u16) -> Request {
    Request::Keyed(KeyedRequest {
        cmd,
        key: Bytes::copy_from_slice(key),
        wire,
        wire2: Bytes::new(),
        frame,
        nkeys,
    })
}

/// `mg <key> <flags>` (the key as text; keys reach routes already decoded).
pub fn mg(key: &[u8], flags: &str) -> Request {
    let mut b = BytesMut::with_capacity(key.len() + flags.len() + 8);
    b.extend_from_slice(b"mg ");
    b.extend_from_slice(key);
    b.put_u8(b' ');
    b.extend_from_slice(flags.as_bytes());
    b.extend_from_slice(b"\r\n");
    keyed(Cmd::Mg, key, b.freeze(), Frame::Meta, 1)
}

/// `set`/`add` of `data` with `flags` and `exptime`.
pub fn store(cmd: Cmd, key: &[u8], flags: u32, exptime: i64, data: &[u8]) -> Request {
    let word = match cmd {
        Cmd::Add => "add",
        _ => "set",
    };
    let mut b = BytesMut::with_capacity(key.len() + data.len() + 48);
    b.extend_from_slice(word.as_bytes());
    b.put_u8(b' ');
    b.extend_from_slice(key);
    b.extend_from_slice(format!(" {flags} {exptime} {}\r\n", data.len()).as_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    keyed(
        if cmd == Cmd::Add { Cmd::Add } else { Cmd::Set },
        key,
        b.freeze(),
        Frame::Line,
        0,
    )
}

/// `delete <key>`.
pub fn delete(key: &[u8]) -> Request {
    let mut b = BytesMut::with_capacity(key.len() + 10);
    b.extend_from_slice(b"delete ");
    b.extend_from_slice(key);
    b.extend_from_slice(b"\r\n");
    keyed(Cmd::Delete, key, b.freeze(), Frame::Line, 0)
}

/// The hold-off tombstone (see `marker::holdoff`): a `set` of an empty value.
pub fn tombstone(key: &[u8], holdoff_secs: u32) -> Request {
    let mut out = Vec::with_capacity(key.len() + 32);
    marker::holdoff::tombstone_command(key, holdoff_secs, &mut out);
    keyed(Cmd::Set, key, Bytes::from(out), Frame::Line, 0)
}

/// A one-key text get (`get`, `gets`, `gat N`, `gats N`) from a multi-get's head.
pub fn single_get(m: &MultiGetRequest, key: &Bytes) -> Request {
    let mut b = BytesMut::with_capacity(m.head.len() + key.len() + 3);
    b.extend_from_slice(&m.head);
    b.put_u8(b' ');
    b.extend_from_slice(key);
    b.extend_from_slice(b"\r\n");
    Request::Keyed(KeyedRequest {
        cmd: m.cmd,
        key: key.clone(),
        wire: b.freeze(),
        wire2: Bytes::new(),
        frame: Frame::Values,
        nkeys: 1,
    })
}

/// A multi-get of some of `m`'s keys.
pub fn sub_multi_get(m: &MultiGetRequest, keys: Vec<Bytes>) -> Request {
    let mut b = BytesMut::with_capacity(m.head.len() + keys.len() * 16 + 2);
    b.extend_from_slice(&m.head);
    for k in &keys {
        b.put_u8(b' ');
        b.extend_from_slice(k);
    }
    b.extend_from_slice(b"\r\n");
    Request::MultiGet(MultiGetRequest {
        cmd: m.cmd,
        head: m.head.clone(),
        keys,
        line: b.freeze(),
    })
}

/// A text storage command, taken apart.
#[derive(Debug, Clone)]
pub struct Storage {
    pub flags: u32,
    pub exptime: i64,
    /// The value without `\r\n`.
    pub data: Bytes,
}

/// The command line and the value part (value + `\r\n`) of a keyed request.
fn line_and_value(k: &KeyedRequest) -> Option<(&[u8], Bytes)> {
    let nl = memchr::memchr(b'\n', &k.wire)?;
    if k.wire2.is_empty() {
        Some((&k.wire[..=nl], k.wire.slice(nl + 1..)))
    } else {
        Some((&k.wire[..=nl], k.wire2.clone()))
    }
}

/// Flags, exptime and value of a text `set`/`add`/`replace`/`append`/`prepend`/`cas`.
pub fn storage_of(k: &KeyedRequest) -> Option<Storage> {
    if !matches!(
        k.cmd,
        Cmd::Set | Cmd::Add | Cmd::Replace | Cmd::Append | Cmd::Prepend | Cmd::Cas
    ) {
        return None;
    }
    let (line, value) = line_and_value(k)?;
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let toks: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let flags = num(toks.get(2)?)?;
    let exptime = num(toks.get(3)?)?;
    let len: usize = num(toks.get(4)?)?;
    if value.len() != len + 2 {
        return None;
    }
    Some(Storage {
        flags,
        exptime,
        data: value.slice(..len),
    })
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
    let Some((line, value)) = line_and_value(k) else {
        return req.clone();
    };
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let toks: Vec<&[u8]> = body
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = BytesMut::with_capacity(line.len() + 16);
    let push = |out: &mut BytesMut, t: &[u8]| {
        if !out.is_empty() {
            out.put_u8(b' ');
        }
        out.extend_from_slice(t);
    };
    match k.cmd {
        Cmd::Set | Cmd::Add | Cmd::Replace | Cmd::Append | Cmd::Prepend | Cmd::Cas => {
            let Some(exp) = toks.get(3).and_then(|t| num::<i64>(t)) else {
                return req.clone();
            };
            for (i, t) in toks.iter().enumerate() {
                if i == 3 {
                    push(&mut out, capped(exp, cap).to_string().as_bytes());
                } else {
                    push(&mut out, t);
                }
            }
        }
        Cmd::Ms => {
            let mut seen = false;
            for (i, t) in toks.iter().enumerate() {
                if i >= 3 && t.first() == Some(&b'T') {
                    let exp = num::<i64>(&t[1..]).unwrap_or(0);
                    push(&mut out, format!("T{}", capped(exp, cap)).as_bytes());
                    seen = true;
                } else {
                    push(&mut out, t);
                }
            }
            if !seen {
                push(&mut out, format!("T{cap}").as_bytes());
            }
        }
        _ => return req.clone(),
    }
    out.extend_from_slice(b"\r\n");
    Request::Keyed(KeyedRequest {
        cmd: k.cmd,
        key: k.key.clone(),
        wire: out.freeze(),
        wire2: value,
        frame: k.frame,
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

    fn req(cmd: Cmd, wire: &str) -> Request {
        Request::Keyed(KeyedRequest {
            cmd,
            key: Bytes::from_static(b"k"),
            wire: Bytes::copy_from_slice(wire.as_bytes()),
            wire2: Bytes::new(),
            frame: Frame::Line,
            nkeys: 0,
        })
    }

    fn wire(r: &Request) -> Vec<u8> {
        let Request::Keyed(k) = r else { panic!() };
        [&k.wire[..], &k.wire2[..]].concat()
    }

    #[test]
    fn ttl_caps() {
        let r = with_ttl_cap(&req(Cmd::Set, "set k 5 0 2\r\nab\r\n"), 10);
        assert_eq!(wire(&r), b"set k 5 10 2\r\nab\r\n");
        let r = with_ttl_cap(&req(Cmd::Set, "set k 5 3 2\r\nab\r\n"), 10);
        assert_eq!(wire(&r), b"set k 5 3 2\r\nab\r\n");
        let r = with_ttl_cap(&req(Cmd::Cas, "cas k 5 2000000000 2 7\r\nab\r\n"), 10);
        assert_eq!(wire(&r), b"cas k 5 10 2 7\r\nab\r\n");
        let r = with_ttl_cap(&req(Cmd::Ms, "ms k 2 T100 F3\r\nab\r\n"), 10);
        assert_eq!(wire(&r), b"ms k 2 T10 F3\r\nab\r\n");
        let r = with_ttl_cap(&req(Cmd::Ms, "ms k 2\r\nab\r\n"), 10);
        assert_eq!(wire(&r), b"ms k 2 T10\r\nab\r\n");
        let r = with_ttl_cap(&req(Cmd::Delete, "delete k\r\n"), 10);
        assert_eq!(wire(&r), b"delete k\r\n");
    }

    #[test]
    fn storage_and_replies() {
        let Request::Keyed(k) = req(Cmd::Add, "add k 7 30 3\r\nabc\r\n") else {
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
