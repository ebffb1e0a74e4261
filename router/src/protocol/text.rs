//! memcached's text protocol, as memcached 1.6.18 parses it (`process_command_ascii` and
//! the `process_*_command` functions of its `proto_text.c`): the same tokenizer, token-count
//! rules, number rules, `noreply` rules (which also silence errors), and the same decisions
//! about when a value is swallowed and when it is not, so a client that makes a mistake
//! sees exactly what memcached would show it, and nothing it sends can make a backend
//! answer something the router did not ask for.

use std::ops::Range;

use super::number::{strtol, strtoul, strtoull};
use super::{
    key_ok, meta, tokenize, Cmd, KeyRef, Limits, Quiet, Raw, RawOp, Step, StoreMode, BAD_CHUNK,
    BAD_DELTA, BAD_EXPTIME, BAD_FORMAT, ERROR, TOO_LARGE,
};

/// memcached's `MAX_TOKENS`, the terminal token included: 23 tokens, the rest in one.
const MAX_TOKENS: usize = 24;
/// memcached closes a connection whose first 2048 bytes hold no newline, unless it is a
/// multi-get (the router also lets `gat`/`gats` through: it never forwards such a line).
const MAX_PLAIN_LINE: usize = 2048;

const DELETE_USAGE: &[u8] =
    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n";
const SHUTDOWN_OFF: &[u8] = b"ERROR: shutdown not enabled\r\n";

/// One command line, tokenized as memcached does it.
struct Line<'a> {
    buf: &'a [u8],
    toks: Vec<Range<usize>>,
    /// memcached's `ntokens`: the tokens plus its terminal token.
    ntokens: usize,
    line_len: usize,
    /// The last real token is `noreply` (memcached's `set_noreply_maybe`).
    noreply: bool,
}

impl<'a> Line<'a> {
    fn tok(&self, i: usize) -> &'a [u8] {
        self.toks.get(i).map_or(&b""[..], |r| &self.buf[r.clone()])
    }

    fn done(&self, raw: Raw) -> Step {
        Step::Frame {
            len: self.line_len,
            raw,
        }
    }

    /// memcached's `out_string` after `set_noreply_maybe`: silent under `noreply`.
    fn err(&self, reply: &'static [u8]) -> Step {
        self.done(Raw::Reply(if self.noreply { b"" } else { reply }))
    }

    fn quiet(&self) -> Quiet {
        if self.noreply {
            Quiet::All
        } else {
            Quiet::No
        }
    }
}

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
    let toks = tokenize(&buf[..end], MAX_TOKENS - 1);
    let ntokens = toks.len() + 1;
    let noreply = ntokens >= 3 && &buf[toks[toks.len() - 1].clone()] == b"noreply";
    let l = Line {
        buf,
        toks,
        ntokens,
        line_len: nl + 1,
        noreply,
    };
    let cmd = l.tok(0);
    if l.toks.is_empty() || cmd.len() < 2 {
        return l.done(Raw::Reply(ERROR));
    }
    let n = l.ntokens;
    let want = |ok: bool, then: &dyn Fn() -> Step| {
        if ok {
            then()
        } else {
            l.done(Raw::Reply(ERROR))
        }
    };
    if cmd[0] == b'm' && cmd.len() == 2 {
        let c = match cmd[1] {
            b'g' => Cmd::Mg,
            b's' => Cmd::Ms,
            b'd' => Cmd::Md,
            b'a' => Cmd::Ma,
            b'e' => Cmd::Me,
            b'n' => return l.done(Raw::Mn),
            _ => return l.done(Raw::Reply(ERROR)),
        };
        return meta::parse(buf, end, l.line_len, &l.toks, c, limits);
    }
    match cmd {
        b"get" | b"bget" => want(n >= 3, &|| get(&l, end, Cmd::Get, false, false)),
        b"gets" => want(n >= 3, &|| get(&l, end, Cmd::Gets, true, false)),
        b"gat" => want(n >= 3, &|| get(&l, end, Cmd::Gat, false, true)),
        b"gats" => want(n >= 3, &|| get(&l, end, Cmd::Gats, true, true)),
        b"set" => want(n == 6 || n == 7, &|| storage(&l, StoreMode::Set, limits)),
        b"add" => want(n == 6 || n == 7, &|| storage(&l, StoreMode::Add, limits)),
        b"append" => want(n == 6 || n == 7, &|| storage(&l, StoreMode::Append, limits)),
        b"replace" => want(n == 6 || n == 7, &|| {
            storage(&l, StoreMode::Replace, limits)
        }),
        b"prepend" => want(n == 6 || n == 7, &|| {
            storage(&l, StoreMode::Prepend, limits)
        }),
        b"cas" => want(n == 7 || n == 8, &|| storage(&l, StoreMode::Cas, limits)),
        b"incr" => want(n == 4 || n == 5, &|| arith(&l, false)),
        b"decr" => want(n == 4 || n == 5, &|| arith(&l, true)),
        b"touch" => want(n == 4 || n == 5, &|| touch(&l)),
        b"delete" => want((3..=5).contains(&n), &|| delete(&l)),
        b"flush_all" => want((2..=4).contains(&n), &|| flush_all(&l)),
        b"verbosity" => want(n == 3 || n == 4, &|| match strtoul(l.tok(1)) {
            Some(_) if l.noreply => l.done(Raw::Reply(b"")),
            Some(_) => l.done(Raw::Verbosity),
            None => l.err(BAD_FORMAT),
        }),
        b"version" => l.done(Raw::Version),
        b"quit" => l.done(Raw::Quit),
        b"stats" => stats(&l, end),
        b"shutdown" => l.done(Raw::Reply(SHUTDOWN_OFF)),
        _ if l.tok(l.toks.len() - 1).starts_with(b"HTTP/") => Step::Close,
        _ => l.done(Raw::Reply(ERROR)),
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

/// `stats`: the router's own (no argument, `servers`, `commands`, `routes`, `route ...`),
/// or the servers' (`settings`, `items`, `slabs`, `sizes`, `conns`, `reset`).
fn stats(l: &Line, end: usize) -> Step {
    match l.tok(1) {
        b"settings" | b"items" | b"slabs" | b"sizes" | b"conns" | b"reset" => {
            l.done(Raw::BackendStats(l.toks[1].clone()))
        }
        _ => l.done(Raw::Stats(l.toks.get(1).map_or(end..end, |t| t.start..end))),
    }
}

fn get(l: &Line, end: usize, cmd: Cmd, cas: bool, touch: bool) -> Step {
    let mut first_key = 1;
    let mut exptime = None;
    if touch {
        match strtol(l.tok(1)) {
            Some(e) => exptime = Some(e),
            None => return l.done(Raw::Reply(BAD_EXPTIME)),
        }
        first_key = 2;
    }
    // Every key of the line: memcached tokenizes what is past its 23rd token again, so a
    // multi-get has no token limit.
    let all = tokenize(&l.buf[..end], usize::MAX);
    let keys = all.get(first_key..).unwrap_or(&[]);
    if keys.iter().any(|k| !key_ok(&l.buf[k.clone()])) {
        return l.done(Raw::Reply(BAD_FORMAT));
    }
    match keys.len() {
        // `gat 5` with no key: memcached answers an empty result.
        0 => l.done(Raw::Reply(b"END\r\n")),
        1 => l.done(Raw::Keyed {
            cmd,
            key: KeyRef::At(keys[0].clone()),
            op: RawOp::Get {
                cas,
                touch: exptime,
            },
            quiet: Quiet::No,
            nkeys: 1,
        }),
        _ => l.done(Raw::MultiGet {
            cmd,
            keys: keys.to_vec(),
            cas,
            touch: exptime,
        }),
    }
}

fn storage(l: &Line, mode: StoreMode, limits: &Limits) -> Step {
    let key = l.tok(1);
    // Stricter than memcached on purpose: a key with control bytes is readable and
    // deletable, but never stored, since squeal could never invalidate it
    // (`marker::key::validate`); refused like an over-long key, the value not swallowed.
    if marker::key::validate(key).is_err() {
        return l.err(BAD_FORMAT);
    }
    let (Some(flags), Some(exptime), Some(vlen)) =
        (strtoul(l.tok(2)), strtol(l.tok(3)), strtol(l.tok(4)))
    else {
        return l.err(BAD_FORMAT);
    };
    let mut cas = 0;
    if mode == StoreMode::Cas {
        match strtoull(l.tok(5)) {
            Some(c) => cas = c,
            None => return l.err(BAD_FORMAT),
        }
    }
    if !(0..=i32::MAX - 2).contains(&vlen) {
        return l.err(BAD_FORMAT);
    }
    let vlen = vlen as usize;
    if vlen > limits.max_item_size {
        return Step::Swallow {
            len: l.line_len,
            drain: vlen + 2,
            reply: if l.noreply { b"" } else { TOO_LARGE },
            delete: (mode == StoreMode::Set).then(|| key.to_vec()),
        };
    }
    let total = l.line_len + vlen + 2;
    if l.buf.len() < total {
        return Step::Incomplete;
    }
    if &l.buf[total - 2..total] != b"\r\n" {
        return Step::Frame {
            len: total,
            raw: Raw::Reply(if l.noreply { b"" } else { BAD_CHUNK }),
        };
    }
    let cmd = match mode {
        StoreMode::Set => Cmd::Set,
        StoreMode::Add => Cmd::Add,
        StoreMode::Replace => Cmd::Replace,
        StoreMode::Append => Cmd::Append,
        StoreMode::Prepend => Cmd::Prepend,
        StoreMode::Cas => Cmd::Cas,
    };
    Step::Frame {
        len: total,
        raw: Raw::Keyed {
            cmd,
            key: KeyRef::At(l.toks[1].clone()),
            op: RawOp::Store {
                mode,
                flags,
                exptime,
                cas,
                data: l.line_len..total,
            },
            quiet: l.quiet(),
            nkeys: 0,
        },
    }
}

fn keyed(l: &Line, cmd: Cmd, op: RawOp) -> Step {
    l.done(Raw::Keyed {
        cmd,
        key: KeyRef::At(l.toks[1].clone()),
        op,
        quiet: l.quiet(),
        nkeys: 0,
    })
}

fn arith(l: &Line, decr: bool) -> Step {
    if !key_ok(l.tok(1)) {
        return l.err(BAD_FORMAT);
    }
    let Some(delta) = strtoull(l.tok(2)) else {
        return l.err(BAD_DELTA);
    };
    let cmd = if decr { Cmd::Decr } else { Cmd::Incr };
    keyed(l, cmd, RawOp::Arith { decr, delta })
}

fn touch(l: &Line) -> Step {
    if !key_ok(l.tok(1)) {
        return l.err(BAD_FORMAT);
    }
    let Some(exptime) = strtol(l.tok(2)) else {
        return l.err(BAD_EXPTIME);
    };
    keyed(l, Cmd::Touch, RawOp::Touch { exptime })
}

fn delete(l: &Line) -> Step {
    // memcached accepts a legacy hold time of 0, and `noreply`, nothing else.
    let noreply = l.ntokens > 3 && l.noreply;
    if l.ntokens > 3 {
        let hold_is_zero = l.tok(2) == b"0";
        let valid = (l.ntokens == 4 && (hold_is_zero || noreply))
            || (l.ntokens == 5 && hold_is_zero && noreply);
        if !valid {
            return l.err(DELETE_USAGE);
        }
    }
    if !key_ok(l.tok(1)) {
        return l.err(BAD_FORMAT);
    }
    l.done(Raw::Keyed {
        cmd: Cmd::Delete,
        key: KeyRef::At(l.toks[1].clone()),
        op: RawOp::Delete,
        quiet: if noreply { Quiet::All } else { Quiet::No },
        nkeys: 0,
    })
}

fn flush_all(l: &Line) -> Step {
    let plain = if l.noreply { 3 } else { 2 };
    let mut delay = None;
    if l.ntokens != plain {
        match strtol(l.tok(1)) {
            Some(d) => delay = Some(d),
            None => return l.err(BAD_EXPTIME),
        }
    }
    l.done(Raw::FlushAll {
        delay,
        quiet: l.quiet(),
    })
}
