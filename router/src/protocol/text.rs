//! memcached's text protocol, as memcached 1.6 parses it: same tokenizer, same token-count
//! rules, same decisions about when a value is swallowed and when it is not (so a client
//! that makes a mistake sees exactly what memcached would show it).

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use super::{
    key_ok, meta, parse_i64, parse_u64, tokenize, Cmd, Frame, KeyRef, Limits, Quiet, Raw, Step,
    WireRef, BAD_CHUNK, BAD_EXPTIME, BAD_FORMAT, ERROR, TOO_LARGE,
};

/// memcached's `MAX_TOKENS` for the text protocol (the last one holds the rest of the line).
const MAX_TOKENS: usize = 24;
/// memcached closes a connection whose first 2048 bytes hold no newline, unless it is a get.
const MAX_PLAIN_LINE: usize = 2048;

pub fn parse(buf: &[u8], limits: &Limits) -> Step {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        return unterminated(buf, limits);
    };
    if nl > limits.max_get_line {
        return Step::Close;
    }
    let end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line_len = nl + 1;
    let mut toks: [Range<usize>; MAX_TOKENS] = std::array::from_fn(|_| 0..0);
    let n = tokenize(&buf[..end], 0, &mut toks);
    let toks = &toks[..n];
    let done = |raw| Step::Frame { len: line_len, raw };
    if n == 0 {
        return done(Raw::Reply(ERROR));
    }
    let cmd = &buf[toks[0].clone()];
    let noreply = n > 1 && &buf[toks[n - 1].clone()] == b"noreply";
    match cmd {
        b"get" => get(buf, end, line_len, Cmd::Get, false),
        b"gets" => get(buf, end, line_len, Cmd::Gets, false),
        b"gat" => get(buf, end, line_len, Cmd::Gat, true),
        b"gats" => get(buf, end, line_len, Cmd::Gats, true),
        b"set" => storage(buf, line_len, toks, Cmd::Set, noreply, limits),
        b"add" => storage(buf, line_len, toks, Cmd::Add, noreply, limits),
        b"replace" => storage(buf, line_len, toks, Cmd::Replace, noreply, limits),
        b"append" => storage(buf, line_len, toks, Cmd::Append, noreply, limits),
        b"prepend" => storage(buf, line_len, toks, Cmd::Prepend, noreply, limits),
        b"cas" => storage(buf, line_len, toks, Cmd::Cas, noreply, limits),
        b"delete" if (2..=4).contains(&n) => keyed(buf, line_len, toks, Cmd::Delete, noreply),
        b"incr" if (3..=4).contains(&n) => keyed(buf, line_len, toks, Cmd::Incr, noreply),
        b"decr" if (3..=4).contains(&n) => keyed(buf, line_len, toks, Cmd::Decr, noreply),
        b"touch" if (3..=4).contains(&n) => keyed(buf, line_len, toks, Cmd::Touch, noreply),
        b"flush_all" if n <= 3 => done(Raw::FlushAll {
            wire: wire(buf, line_len, toks, noreply),
            quiet: if noreply { Quiet::All } else { Quiet::No },
        }),
        b"version" if n == 1 => done(Raw::Version),
        b"quit" if n == 1 => done(Raw::Quit),
        b"verbosity" if (2..=3).contains(&n) => done(Raw::Verbosity { noreply }),
        b"stats" => done(Raw::Stats(toks.get(1).map_or(end..end, |t| t.start..end))),
        b"mn" => done(Raw::Mn),
        b"mg" => meta::parse(buf, end, line_len, toks, Cmd::Mg, limits),
        b"ms" => meta::parse(buf, end, line_len, toks, Cmd::Ms, limits),
        b"md" => meta::parse(buf, end, line_len, toks, Cmd::Md, limits),
        b"ma" => meta::parse(buf, end, line_len, toks, Cmd::Ma, limits),
        b"me" => meta::parse(buf, end, line_len, toks, Cmd::Me, limits),
        _ => done(Raw::Reply(ERROR)),
    }
}

/// No newline yet: wait, unless memcached would already have given up on this line.
fn unterminated(buf: &[u8], limits: &Limits) -> Step {
    if buf.len() <= MAX_PLAIN_LINE {
        return Step::Incomplete;
    }
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[spaces..];
    let is_get = rest.starts_with(b"get ")
        || rest.starts_with(b"gets ")
        || rest.starts_with(b"gat ")
        || rest.starts_with(b"gats ");
    if spaces > 100 || !is_get || buf.len() > limits.max_get_line {
        Step::Close
    } else {
        Step::Incomplete
    }
}

/// A local error; `noreply` silences even errors in memcached.
fn err(line_len: usize, noreply: bool, reply: &'static [u8]) -> Step {
    Step::Frame {
        len: line_len,
        raw: Raw::Reply(if noreply { b"" } else { reply }),
    }
}

/// The line as it goes to the backend: as received, or without its `noreply` token.
fn wire(buf: &[u8], line_len: usize, toks: &[Range<usize>], noreply: bool) -> WireRef {
    if !noreply {
        return WireRef::At(0..line_len);
    }
    let mut line = BytesMut::with_capacity(line_len);
    for (i, t) in toks[..toks.len() - 1].iter().enumerate() {
        if i > 0 {
            line.put_u8(b' ');
        }
        line.extend_from_slice(&buf[t.clone()]);
    }
    line.extend_from_slice(b"\r\n");
    WireRef::Owned(line.freeze())
}

fn get(buf: &[u8], end: usize, line_len: usize, cmd: Cmd, touch: bool) -> Step {
    let done = |raw| Step::Frame { len: line_len, raw };
    // Tokens again without the MAX_TOKENS cap: a multi-get may carry hundreds of keys.
    let mut toks = Vec::new();
    let mut start = 0;
    for (i, &b) in buf[..end].iter().enumerate() {
        if b == b' ' {
            if i > start {
                toks.push(start..i);
            }
            start = i + 1;
        }
    }
    if end > start {
        toks.push(start..end);
    }
    let first_key = if touch { 2 } else { 1 };
    if touch {
        match toks.get(1) {
            None => return done(Raw::Reply(ERROR)),
            Some(t) if parse_i64(&buf[t.clone()]).is_none() => {
                return done(Raw::Reply(BAD_EXPTIME))
            }
            _ => {}
        }
    }
    if toks.len() <= first_key {
        return done(Raw::Reply(ERROR));
    }
    let keys = &toks[first_key..];
    if keys.iter().any(|k| !key_ok(&buf[k.clone()])) {
        return done(Raw::Reply(BAD_FORMAT));
    }
    if keys.len() == 1 {
        return done(Raw::Keyed {
            cmd,
            key: KeyRef::At(keys[0].clone()),
            wire: WireRef::At(0..line_len),
            wire2: None,
            frame: Frame::Values,
            quiet: Quiet::No,
            nkeys: 1,
        });
    }
    let head = toks[0].start..toks[first_key - 1].end;
    done(Raw::MultiGet {
        cmd,
        head,
        keys: keys.to_vec(),
        line: 0..line_len,
    })
}

fn storage(
    buf: &[u8],
    line_len: usize,
    toks: &[Range<usize>],
    cmd: Cmd,
    noreply: bool,
    limits: &Limits,
) -> Step {
    let n = toks.len();
    let want = if cmd == Cmd::Cas { 6 } else { 5 };
    if n != want && n != want + 1 {
        return err(line_len, false, ERROR);
    }
    let tok = |i: usize| &buf[toks[i].clone()];
    let key = tok(1);
    if !key_ok(key) {
        return err(line_len, noreply, BAD_FORMAT);
    }
    let flags_ok = parse_u64(tok(2)).is_some_and(|f| f <= u32::MAX as u64);
    let exptime_ok = parse_i64(tok(3)).is_some();
    let vlen = parse_i64(tok(4));
    let cas_ok = cmd != Cmd::Cas || parse_u64(tok(5)).is_some();
    let vlen = match vlen {
        Some(v) if flags_ok && exptime_ok && cas_ok && v >= 0 && v < i32::MAX as i64 - 2 => {
            v as usize
        }
        _ => return err(line_len, noreply, BAD_FORMAT),
    };
    if vlen > limits.max_value {
        return Step::Swallow {
            len: line_len,
            drain: vlen + 2,
            reply: if noreply { b"" } else { TOO_LARGE },
            delete: (cmd == Cmd::Set).then(|| toks[1].clone()),
        };
    }
    value_frame(
        buf,
        line_len,
        vlen,
        noreply,
        Raw::Keyed {
            cmd,
            key: KeyRef::At(toks[1].clone()),
            wire: wire(buf, line_len, toks, noreply),
            wire2: None,
            frame: Frame::Line,
            quiet: if noreply { Quiet::All } else { Quiet::No },
            nkeys: 0,
        },
    )
}

/// A command line followed by `vlen` bytes of value and `\r\n`: waits for all of it and
/// checks the terminator as memcached does (a bad one costs the same bytes).
pub(crate) fn value_frame(
    buf: &[u8],
    line_len: usize,
    vlen: usize,
    noreply: bool,
    mut raw: Raw,
) -> Step {
    let total = line_len + vlen + 2;
    if buf.len() < total {
        return Step::Incomplete;
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Step::Frame {
            len: total,
            raw: Raw::Reply(if noreply { b"" } else { BAD_CHUNK }),
        };
    }
    if let Raw::Keyed { wire, wire2, .. } = &mut raw {
        match wire {
            WireRef::At(r) => *r = 0..total,
            WireRef::Owned(_) => *wire2 = Some(line_len..total),
        }
    }
    Step::Frame { len: total, raw }
}

fn keyed(buf: &[u8], line_len: usize, toks: &[Range<usize>], cmd: Cmd, noreply: bool) -> Step {
    if !key_ok(&buf[toks[1].clone()]) {
        return err(line_len, noreply, BAD_FORMAT);
    }
    Step::Frame {
        len: line_len,
        raw: Raw::Keyed {
            cmd,
            key: KeyRef::At(toks[1].clone()),
            wire: wire(buf, line_len, toks, noreply),
            wire2: None,
            frame: Frame::Line,
            quiet: if noreply { Quiet::All } else { Quiet::No },
            nkeys: 0,
        },
    }
}
