//! What goes over a backend connection, both ways.
//!
//! **Requests** are rebuilt from the parsed, validated fields of a [`Request`]: every key
//! operation becomes one meta command carrying the router's own opaque token (`O<n>`, a
//! per-connection counter). Text `get k1 k2` is `mg k1 v f O7`, `mg k2 v f O8`; `set` is
//! `ms k <len> F.. T.. O9` with the value as the client sent it (a slice, never copied);
//! `delete` is `md`, `incr`/`decr` are `ma`, `touch` is `mg k T..`. A client's own meta
//! command goes out as its validated tokens (no `q`, the client's `O` swapped for the
//! router's). `flush_all`, `version` and forwarded `stats` are plain text lines.
//!
//! **Replies** are checked before they are believed: a meta reply must carry exactly the
//! opaque of the oldest outstanding request, or the connection is out of sync
//! ([`Desync`]) and is reset, failing only the requests on it. An error line
//! (`CLIENT_ERROR`, `SERVER_ERROR`, `ERROR`) carries no opaque and is matched by order: it
//! holds no data, so even a misattributed one could never hand anyone a value. A reply is
//! then turned into the shape the client asked in (`VALUE ... END`, `STORED`, `DELETED`,
//! the number of an `incr`, or the meta reply with the client's own opaque put back).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::reply::Reply;
use crate::protocol::{Op, Request, StoreMode};

/// The connection is out of sync: a reply the router did not ask for, or not in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desync(pub String);

/// The longest reply line the router waits for (a `stats` line, a `VA` header).
const MAX_LINE: usize = 64 * 1024;

/// What one queued request expects back, and how far its reply has come.
pub struct Expect {
    kind: Kind,
    /// Opaque of the first backend command (`None`: matched by order).
    opaque: Option<u32>,
    /// Backend replies still to come.
    left: u32,
    /// Keys of a text get, in the order asked.
    keys: Vec<Bytes>,
    chunks: Vec<Bytes>,
    error: Option<Bytes>,
    /// `VALUE` blocks seen (hits).
    pub hits: u32,
}

enum Kind {
    Values { cas: bool },
    Store,
    Delete,
    Arith,
    Touch,
    Meta { client_opaque: Option<Bytes> },
    Line,
    Stats,
}

fn opaque_tok(arena: &mut BytesMut, n: u32) {
    arena.extend_from_slice(b" O");
    arena.extend_from_slice(itoa(n as u64, &mut [0; 20]));
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn signed(arena: &mut BytesMut, n: i32) {
    if n < 0 {
        arena.put_u8(b'-');
    }
    arena.extend_from_slice(itoa(n.unsigned_abs() as u64, &mut [0; 20]));
}

/// Appends the backend bytes for `req` to `out` (small parts written into `arena`, values
/// as their own slices) and returns what to expect. `next` is the connection's opaque
/// counter.
pub fn encode(
    req: Request,
    next: &mut u32,
    arena: &mut BytesMut,
    out: &mut VecDeque<Bytes>,
) -> Expect {
    let mut take = |n: u32| {
        let first = *next;
        *next = next.wrapping_add(n);
        first
    };
    let expect = |kind, opaque, left, keys| Expect {
        kind,
        opaque,
        left,
        keys,
        chunks: Vec::new(),
        error: None,
        hits: 0,
    };
    match req {
        Request::Keyed(k) => match k.op {
            Op::Get { cas, touch } => {
                let o = take(1);
                get_line(arena, &k.key, cas, touch, o);
                out.push_back(arena.split().freeze());
                expect(Kind::Values { cas }, Some(o), 1, vec![k.key])
            }
            Op::Store {
                mode,
                flags,
                exptime,
                cas,
                data,
            } => {
                let o = take(1);
                arena.extend_from_slice(b"ms ");
                arena.extend_from_slice(&k.key);
                arena.put_u8(b' ');
                arena.extend_from_slice(itoa((data.len() - 2) as u64, &mut [0; 20]));
                arena.extend_from_slice(b" F");
                arena.extend_from_slice(itoa(flags as u64, &mut [0; 20]));
                arena.extend_from_slice(b" T");
                signed(arena, exptime);
                match mode {
                    StoreMode::Set => {}
                    StoreMode::Add => arena.extend_from_slice(b" ME"),
                    StoreMode::Replace => arena.extend_from_slice(b" MR"),
                    StoreMode::Append => arena.extend_from_slice(b" MA"),
                    StoreMode::Prepend => arena.extend_from_slice(b" MP"),
                    StoreMode::Cas => {
                        arena.extend_from_slice(b" C");
                        arena.extend_from_slice(itoa(cas, &mut [0; 20]));
                    }
                }
                opaque_tok(arena, o);
                arena.extend_from_slice(b"\r\n");
                out.push_back(arena.split().freeze());
                out.push_back(data);
                expect(Kind::Store, Some(o), 1, Vec::new())
            }
            Op::Delete => {
                let o = take(1);
                arena.extend_from_slice(b"md ");
                arena.extend_from_slice(&k.key);
                opaque_tok(arena, o);
                arena.extend_from_slice(b"\r\n");
                out.push_back(arena.split().freeze());
                expect(Kind::Delete, Some(o), 1, Vec::new())
            }
            Op::Arith { decr, delta } => {
                let o = take(1);
                arena.extend_from_slice(b"ma ");
                arena.extend_from_slice(&k.key);
                arena.extend_from_slice(b" v D");
                arena.extend_from_slice(itoa(delta, &mut [0; 20]));
                if decr {
                    arena.extend_from_slice(b" MD");
                }
                opaque_tok(arena, o);
                arena.extend_from_slice(b"\r\n");
                out.push_back(arena.split().freeze());
                expect(Kind::Arith, Some(o), 1, Vec::new())
            }
            Op::Touch { exptime } => {
                let o = take(1);
                arena.extend_from_slice(b"mg ");
                arena.extend_from_slice(&k.key);
                arena.extend_from_slice(b" T");
                signed(arena, exptime);
                opaque_tok(arena, o);
                arena.extend_from_slice(b"\r\n");
                out.push_back(arena.split().freeze());
                expect(Kind::Touch, Some(o), 1, Vec::new())
            }
            Op::Meta(m) => {
                let at = m.opaque_at.min(m.line.len());
                arena.extend_from_slice(&m.line[..at]);
                let o = m.takes_opaque.then(|| {
                    let o = take(1);
                    opaque_tok(arena, o);
                    o
                });
                arena.extend_from_slice(&m.line[at..]);
                arena.extend_from_slice(b"\r\n");
                out.push_back(arena.split().freeze());
                if !m.data.is_empty() {
                    out.push_back(m.data);
                }
                if m.line.starts_with(b"me ") {
                    // `me` answers one `ME ...` or `EN` line, with no opaque.
                    return expect(Kind::Line, None, 1, Vec::new());
                }
                expect(
                    Kind::Meta {
                        client_opaque: m.opaque,
                    },
                    o,
                    1,
                    Vec::new(),
                )
            }
        },
        Request::MultiGet(m) => {
            let n = m.keys.len() as u32;
            let first = take(n);
            for (i, key) in m.keys.iter().enumerate() {
                get_line(arena, key, m.cas, m.touch, first.wrapping_add(i as u32));
            }
            out.push_back(arena.split().freeze());
            expect(Kind::Values { cas: m.cas }, Some(first), n, m.keys)
        }
        Request::FlushAll { delay } => {
            arena.extend_from_slice(b"flush_all");
            if let Some(d) = delay {
                arena.put_u8(b' ');
                signed(arena, d);
            }
            arena.extend_from_slice(b"\r\n");
            out.push_back(arena.split().freeze());
            expect(Kind::Line, None, 1, Vec::new())
        }
        Request::Version => {
            out.push_back(Bytes::from_static(b"version\r\n"));
            expect(Kind::Line, None, 1, Vec::new())
        }
        Request::Stats { args } => {
            arena.extend_from_slice(b"stats ");
            arena.extend_from_slice(&args);
            arena.extend_from_slice(b"\r\n");
            out.push_back(arena.split().freeze());
            expect(Kind::Stats, None, 1, Vec::new())
        }
    }
}

fn get_line(arena: &mut BytesMut, key: &[u8], cas: bool, touch: Option<i32>, o: u32) {
    arena.extend_from_slice(b"mg ");
    arena.extend_from_slice(key);
    arena.extend_from_slice(if cas { b" v f c" } else { b" v f" });
    if let Some(t) = touch {
        arena.extend_from_slice(b" T");
        signed(arena, t);
    }
    opaque_tok(arena, o);
    arena.extend_from_slice(b"\r\n");
}

/// True for a line that reports an error instead of answering (no opaque, no data).
fn is_error_line(line: &[u8]) -> bool {
    line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") || line == b"ERROR"
}

/// Tokens of a reply line (without `\r\n`).
fn tokens(line: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

fn parse_num(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Where one backend reply lies in the read buffer: `(end of its line without \r\n,
/// total length, the data block of a `VA` with its \r\n)`.
type Framed = (usize, usize, Option<std::ops::Range<usize>>);

/// The next complete backend reply at the front of `rbuf`, if it has fully arrived.
fn frame(rbuf: &[u8]) -> Result<Option<Framed>, Desync> {
    let Some(nl) = memchr::memchr(b'\n', rbuf) else {
        if rbuf.len() > MAX_LINE {
            return Err(Desync(format!("a reply line longer than {MAX_LINE} bytes")));
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && rbuf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &rbuf[..line_end];
    if !line.starts_with(b"VA ") {
        return Ok(Some((line_end, nl + 1, None)));
    }
    let len = tokens(line)
        .nth(1)
        .and_then(parse_num)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| Desync("a VA reply without a length".into()))?;
    let total = nl + 1 + len + 2;
    if rbuf.len() < total {
        return Ok(None);
    }
    if &rbuf[total - 2..total] != b"\r\n" {
        return Err(Desync("a value not ended by \\r\\n".into()));
    }
    Ok(Some((line_end, total, Some(nl + 1..total))))
}

/// What [`Expect::take`] did.
pub enum Took {
    /// The reply has not fully arrived.
    NeedMore,
    /// One backend reply of a multi-key request was consumed; more are due.
    Partial,
    /// The request is answered.
    Done(Reply),
}

impl Expect {
    /// Consumes the next backend reply for this request from `rbuf`.
    pub fn take(&mut self, rbuf: &mut BytesMut, arena: &mut BytesMut) -> Result<Took, Desync> {
        let Some((line_end, total, data)) = frame(rbuf)? else {
            return Ok(Took::NeedMore);
        };
        let whole = rbuf.split_to(total).freeze();
        let line = &whole[..line_end];
        if matches!(self.kind, Kind::Line) {
            return Ok(Took::Done(Reply::Data(whole)));
        }
        if matches!(self.kind, Kind::Stats) {
            if line.starts_with(b"STAT ") {
                self.chunks.push(whole);
                return Ok(Took::Partial);
            }
            if line == b"END" || self.chunks.is_empty() {
                self.chunks.push(whole);
                return Ok(Took::Done(Reply::Chunks(std::mem::take(&mut self.chunks))));
            }
            return Err(Desync(format!(
                "unexpected line in a stats reply: {}",
                String::from_utf8_lossy(line)
            )));
        }
        if is_error_line(line) {
            return Ok(self.error_reply(whole));
        }
        let code = &line[..line.len().min(2)];
        if !matches!(code, b"VA" | b"HD" | b"EN" | b"NF" | b"NS" | b"EX")
            || (line.len() > 2 && line[2] != b' ')
        {
            return Err(Desync(format!(
                "not a meta reply: {}",
                String::from_utf8_lossy(&line[..line.len().min(64)])
            )));
        }
        // The opaque must be the one this request's current command carries.
        if let Some(first) = self.opaque {
            let asked = match &self.kind {
                Kind::Values { .. } => first.wrapping_add(self.keys.len() as u32 - self.left),
                _ => first,
            };
            let got = tokens(line)
                .rev()
                .find(|t| t[0] == b'O')
                .and_then(|t| parse_num(&t[1..]));
            if got != Some(asked as u64) {
                return Err(Desync(format!(
                    "reply with opaque {got:?} where O{asked} was due: {}",
                    String::from_utf8_lossy(&line[..line.len().min(64)])
                )));
            }
        }
        let reply = match &self.kind {
            Kind::Values { cas } => {
                let cas = *cas;
                let key = self.keys[self.keys.len() - self.left as usize].clone();
                if code == b"VA" {
                    let data = data.expect("VA has data");
                    self.value_header(arena, &key, line, data.len() - 2, cas);
                    self.chunks.push(whole.slice(data));
                    self.hits += 1;
                } else if code != b"EN" {
                    return Err(Desync(format!(
                        "a get answered by {}",
                        String::from_utf8_lossy(code)
                    )));
                }
                self.left -= 1;
                if self.left > 0 {
                    return Ok(Took::Partial);
                }
                if let Some(e) = self.error.take() {
                    return Ok(Took::Done(Reply::Data(e)));
                }
                if self.chunks.is_empty() {
                    Reply::Data(Bytes::from_static(b"END\r\n"))
                } else {
                    let mut c = std::mem::take(&mut self.chunks);
                    c.push(Bytes::from_static(b"END\r\n"));
                    Reply::Chunks(c)
                }
            }
            Kind::Store => Reply::Data(Bytes::from_static(match code {
                b"HD" => b"STORED\r\n",
                b"NS" => b"NOT_STORED\r\n",
                b"EX" => b"EXISTS\r\n",
                b"NF" => b"NOT_FOUND\r\n",
                _ => return Err(Desync("a store answered by VA/EN".into())),
            })),
            Kind::Delete => Reply::Data(Bytes::from_static(match code {
                b"HD" => b"DELETED\r\n",
                b"NF" => b"NOT_FOUND\r\n",
                _ => return Err(Desync("a delete answered by VA/EN/NS/EX".into())),
            })),
            Kind::Touch => Reply::Data(Bytes::from_static(match code {
                b"HD" => b"TOUCHED\r\n",
                b"EN" => b"NOT_FOUND\r\n",
                _ => return Err(Desync("a touch answered by VA/NF/NS/EX".into())),
            })),
            Kind::Arith => match code {
                b"VA" => Reply::Data(whole.slice(data.expect("VA has data"))),
                b"NF" => Reply::Data(Bytes::from_static(b"NOT_FOUND\r\n")),
                _ => return Err(Desync("an incr answered by HD/EN/NS/EX".into())),
            },
            Kind::Meta { client_opaque } => {
                if self.opaque.is_none() && client_opaque.is_none() {
                    Reply::Data(whole)
                } else {
                    // The line again, the router's opaque swapped for the client's.
                    for (i, t) in tokens(line).enumerate() {
                        if i > 0 {
                            if t[0] == b'O' && self.opaque.is_some() {
                                if let Some(c) = client_opaque {
                                    arena.put_u8(b' ');
                                    arena.extend_from_slice(c);
                                }
                                continue;
                            }
                            arena.put_u8(b' ');
                        }
                        arena.extend_from_slice(t);
                    }
                    arena.extend_from_slice(b"\r\n");
                    let head = arena.split().freeze();
                    match data {
                        Some(d) => Reply::Chunks(vec![head, whole.slice(d)]),
                        None => Reply::Data(head),
                    }
                }
            }
            Kind::Line | Kind::Stats => unreachable!("handled above"),
        };
        Ok(Took::Done(reply))
    }

    /// An error line answers the request (for a multi-key get: once every key answered).
    fn error_reply(&mut self, line: Bytes) -> Took {
        if let Kind::Values { .. } = self.kind {
            if self.error.is_none() {
                self.error = Some(line);
            }
            self.left -= 1;
            if self.left > 0 {
                return Took::Partial;
            }
            self.chunks.clear();
            return Took::Done(Reply::Data(self.error.take().unwrap_or_default()));
        }
        Took::Done(Reply::Data(line))
    }

    /// `VALUE <key> <flags> <len>[ <cas>]\r\n` from a `VA <len> f.. c..` line.
    fn value_header(
        &mut self,
        arena: &mut BytesMut,
        key: &[u8],
        line: &[u8],
        len: usize,
        cas: bool,
    ) {
        let mut flags: &[u8] = b"0";
        let mut cas_v: &[u8] = b"0";
        for t in tokens(line).skip(2) {
            match t[0] {
                b'f' => flags = &t[1..],
                b'c' => cas_v = &t[1..],
                _ => {}
            }
        }
        arena.extend_from_slice(b"VALUE ");
        arena.extend_from_slice(key);
        arena.put_u8(b' ');
        arena.extend_from_slice(flags);
        arena.put_u8(b' ');
        arena.extend_from_slice(itoa(len as u64, &mut [0; 20]));
        if cas {
            arena.put_u8(b' ');
            arena.extend_from_slice(cas_v);
        }
        arena.extend_from_slice(b"\r\n");
        self.chunks.push(arena.split().freeze());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Cmd, KeyedRequest, MultiGetRequest};

    fn wire(out: &VecDeque<Bytes>) -> Vec<u8> {
        out.iter().flat_map(|b| b.to_vec()).collect()
    }

    fn run(req: Request, replies: &[u8]) -> (Vec<u8>, Result<Vec<u8>, Desync>) {
        let mut next = 7;
        let mut arena = BytesMut::new();
        let mut out = VecDeque::new();
        let mut e = encode(req, &mut next, &mut arena, &mut out);
        let mut rbuf = BytesMut::from(replies);
        loop {
            match e.take(&mut rbuf, &mut arena) {
                Ok(Took::NeedMore) => return (wire(&out), Err(Desync("incomplete".into()))),
                Ok(Took::Partial) => continue,
                Ok(Took::Done(r)) => {
                    let b = match r {
                        Reply::Data(d) | Reply::Error(d) => d.to_vec(),
                        Reply::Chunks(c) => c.concat(),
                    };
                    return (wire(&out), Ok(b));
                }
                Err(d) => return (wire(&out), Err(d)),
            }
        }
    }

    fn keyed(cmd: Cmd, op: Op) -> Request {
        Request::Keyed(KeyedRequest {
            cmd,
            key: Bytes::from_static(b"k"),
            op,
            nkeys: 0,
        })
    }

    #[test]
    fn text_commands_become_meta_with_an_opaque() {
        let (w, r) = run(
            keyed(
                Cmd::Get,
                Op::Get {
                    cas: true,
                    touch: None,
                },
            ),
            b"VA 2 f5 c99 O7\r\nab\r\n",
        );
        assert_eq!(w, b"mg k v f c O7\r\n");
        assert_eq!(r.unwrap(), b"VALUE k 5 2 99\r\nab\r\nEND\r\n");
        let store = Op::Store {
            mode: StoreMode::Add,
            flags: 3,
            exptime: -1,
            cas: 0,
            data: Bytes::from_static(b"xy\r\n"),
        };
        let (w, r) = run(keyed(Cmd::Add, store), b"NS O7\r\n");
        assert_eq!(w, b"ms k 2 F3 T-1 ME O7\r\nxy\r\n");
        assert_eq!(r.unwrap(), b"NOT_STORED\r\n");
        let (w, r) = run(
            keyed(
                Cmd::Incr,
                Op::Arith {
                    decr: true,
                    delta: 5,
                },
            ),
            b"VA 1 O7\r\n4\r\n",
        );
        assert_eq!(w, b"ma k v D5 MD O7\r\n");
        assert_eq!(r.unwrap(), b"4\r\n");
        let (_, r) = run(keyed(Cmd::Touch, Op::Touch { exptime: 9 }), b"EN O7\r\n");
        assert_eq!(r.unwrap(), b"NOT_FOUND\r\n");
        let (_, r) = run(keyed(Cmd::Delete, Op::Delete), b"CLIENT_ERROR x\r\n");
        assert_eq!(r.unwrap(), b"CLIENT_ERROR x\r\n");
    }

    #[test]
    fn a_multi_get_folds_into_one_text_reply() {
        let m = MultiGetRequest {
            cmd: Cmd::Get,
            keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            cas: false,
            touch: Some(30),
        };
        let (w, r) = run(Request::MultiGet(m), b"EN O7\r\nVA 1 f0 O8\r\nz\r\n");
        assert_eq!(w, b"mg a v f T30 O7\r\nmg b v f T30 O8\r\n");
        assert_eq!(r.unwrap(), b"VALUE b 0 1\r\nz\r\nEND\r\n");
    }

    #[test]
    fn a_reply_that_answers_someone_else_is_a_desync() {
        let get = || {
            keyed(
                Cmd::Get,
                Op::Get {
                    cas: false,
                    touch: None,
                },
            )
        };
        // Another request's opaque, a text reply, a reply with no opaque.
        for bad in [
            &b"VA 1 O8\r\nx\r\n"[..],
            b"VALUE k 0 1\r\nx\r\nEND\r\n",
            b"EN\r\n",
            b"END\r\n",
            b"STORED\r\n",
        ] {
            assert!(
                run(get(), bad).1.is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let m = crate::protocol::MetaOp {
            line: Bytes::from_static(b"mg k v"),
            opaque_at: 4,
            data: Bytes::new(),
            opaque: Some(Bytes::from_static(b"Oabc")),
            takes_opaque: true,
        };
        let (w, r) = run(keyed(Cmd::Mg, Op::Meta(m)), b"VA 1 O7 t-1\r\nx\r\n");
        assert_eq!(w, b"mg k O7 v\r\n");
        assert_eq!(r.unwrap(), b"VA 1 Oabc t-1\r\nx\r\n");
    }

    proptest::proptest! {
        /// Whatever a backend sends, reading it never panics and never claims more bytes
        /// than arrived; a reply is either believed whole or is a desync.
        #[test]
        fn any_backend_bytes_are_read_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            which in 0usize..6,
        ) {
            let req = match which {
                0 => keyed(Cmd::Get, Op::Get { cas: true, touch: None }),
                1 => keyed(Cmd::Delete, Op::Delete),
                2 => keyed(Cmd::Incr, Op::Arith { decr: false, delta: 1 }),
                3 => Request::Stats { args: Bytes::from_static(b"items") },
                4 => Request::MultiGet(MultiGetRequest {
                    cmd: Cmd::Get,
                    keys: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                    cas: false,
                    touch: None,
                }),
                _ => keyed(Cmd::Mg, Op::Meta(crate::protocol::MetaOp {
                    line: Bytes::from_static(b"mg k v"),
                    opaque_at: 6,
                    data: Bytes::new(),
                    opaque: Some(Bytes::from_static(b"O1")),
                    takes_opaque: true,
                })),
            };
            let mut next = 0;
            let mut arena = BytesMut::new();
            let mut out = VecDeque::new();
            let mut e = encode(req, &mut next, &mut arena, &mut out);
            let mut rbuf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                let before = rbuf.len();
                match e.take(&mut rbuf, &mut arena) {
                    Ok(Took::Partial) => proptest::prop_assert!(rbuf.len() < before),
                    Ok(Took::NeedMore) | Ok(Took::Done(_)) | Err(_) => break,
                }
            }
        }
    }
}
