//! memcached's meta protocol (`mg`, `ms`, `md`, `ma`, `me`; `mn` is answered locally), as
//! memcached 1.6.18 parses it (`process_mget_command` & co. and `_meta_flag_preparse`):
//! token limits, duplicate and unknown flags, numeric flag tokens, opaque length, `ms`
//! modes, base64 keys, and which errors swallow an `ms` value.
//!
//! A command that passes is rebuilt for the backend from its tokens without `q` (the
//! router hides what the client muted: a backend that stays silent could not be matched)
//! and without the client's `O` (the backend codec adds the router's own opaque; the
//! client's is put back into the reply). Everything the router forwards has therefore
//! passed the same checks memcached makes, so memcached answers it with exactly one reply.

use std::ops::Range;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

use super::number::{strtol, strtoul, strtoull};
use super::{
    Cmd, KeyRef, Limits, Quiet, Raw, RawOp, Step, BAD_B64_KEY, BAD_CHUNK, BAD_FORMAT, ERROR,
    TOO_LARGE,
};

/// memcached's `MFLAG_MAX_OPT_LENGTH`: most tokens (terminal one included) a meta command
/// may have.
pub const MAX_META_TOKENS: usize = 20;
/// memcached's `MFLAG_MAX_OPAQUE_LENGTH`, the `O` included.
pub const MAX_OPAQUE_LEN: usize = 32;

const DUP_FLAG: &[u8] = b"CLIENT_ERROR duplicate flag\r\n";
const BAD_FLAG: &[u8] = b"CLIENT_ERROR invalid flag\r\n";
const BAD_TOKEN: &[u8] = b"CLIENT_ERROR bad token in command line format\r\n";
const BAD_M_LEN: &[u8] = b"CLIENT_ERROR incorrect length for M token\r\n";
const BAD_INITIAL: &[u8] = b"CLIENT_ERROR invalid numeric initial value\r\n";
const BAD_META_DELTA: &[u8] = b"CLIENT_ERROR invalid numeric delta value\r\n";
const INVALID_OR_DUP: &[u8] = b"CLIENT_ERROR invalid or duplicate flag\r\n";
const OPAQUE_TOO_LONG: &[u8] = b"CLIENT_ERROR opaque token too long\r\n";
const MG_TOO_LONG: &[u8] = b"CLIENT_ERROR options flags are too long\r\n";
const TOO_LONG: &[u8] = b"CLIENT_ERROR options flags too long\r\n";
const BAD_MS_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ms M token\r\n";
const BAD_MA_MODE: &[u8] = b"CLIENT_ERROR invalid mode for ma M token\r\n";

/// What `_meta_flag_preparse` learned.
#[derive(Default)]
struct Flags {
    base64: bool,
    quiet: bool,
    /// Index (in the line's tokens) of the client's `O` token.
    opaque: Option<usize>,
    mode: Option<u8>,
    /// First error seen (memcached keeps parsing after some errors; the last message
    /// wins there, see `preparse`).
    error: Option<&'static [u8]>,
}

/// memcached's `_meta_flag_preparse`. `Err` carries the reply when memcached bails out at
/// once (a duplicate or unknown flag); otherwise `Flags::error` says whether it failed.
fn preparse(buf: &[u8], toks: &[Range<usize>], start: usize) -> Result<Flags, &'static [u8]> {
    let mut f = Flags::default();
    let mut seen = [false; 127];
    for (i, t) in toks.iter().enumerate().skip(start) {
        let tok = &buf[t.clone()];
        let o = tok[0];
        if o >= 127 || seen[o as usize] {
            return Err(DUP_FLAG);
        }
        seen[o as usize] = true;
        let arg = &tok[1..];
        let mut fail = |e: Option<&'static [u8]>| {
            // memcached overwrites errstr with each failing token that sets one, and
            // keeps its default when a token fails without setting one (`F`).
            if let Some(e) = e {
                f.error = Some(e);
            } else if f.error.is_none() {
                f.error = Some(b"");
            }
        };
        match o {
            b'b' => f.base64 = true,
            b'N' | b'T' | b'R' => {
                if strtol(arg).is_none() {
                    fail(Some(BAD_TOKEN));
                }
            }
            b'F' => {
                if strtoul(arg).is_none() {
                    fail(None);
                }
            }
            b'C' => {
                if strtoull(arg).is_none() {
                    fail(Some(BAD_TOKEN));
                }
            }
            b'M' => {
                if tok.len() != 2 {
                    fail(Some(BAD_M_LEN));
                } else {
                    f.mode = Some(tok[1]);
                }
            }
            b'J' => {
                if strtoull(arg).is_none() {
                    fail(Some(BAD_INITIAL));
                }
            }
            b'D' => {
                if strtoull(arg).is_none() {
                    fail(Some(BAD_META_DELTA));
                }
            }
            b'O' => f.opaque = Some(i),
            b'q' => f.quiet = true,
            b'l' | b'P' | b'L' | b'k' | b's' | b't' | b'c' | b'f' | b'v' | b'h' | b'u' | b'I' => {}
            _ => return Err(BAD_FLAG),
        }
    }
    Ok(f)
}

pub fn parse(
    buf: &[u8],
    _end: usize,
    line_len: usize,
    toks: &[Range<usize>],
    cmd: Cmd,
    limits: &Limits,
) -> Step {
    let reply = |r: &'static [u8]| Step::Frame {
        len: line_len,
        raw: Raw::Reply(r),
    };
    let ntokens = toks.len() + 1;
    if cmd == Cmd::Me {
        return me(buf, line_len, toks);
    }
    if ntokens < 3 {
        return reply(ERROR);
    }
    let raw_key = &buf[toks[1].clone()];
    if raw_key.len() > marker::key::MAX_KEY_LEN {
        return reply(BAD_FORMAT);
    }
    let mut vlen = None;
    if cmd == Cmd::Ms && ntokens == 3 {
        return reply(BAD_FORMAT);
    }
    if ntokens > MAX_META_TOKENS {
        return reply(if cmd == Cmd::Mg {
            MG_TOO_LONG
        } else {
            TOO_LONG
        });
    }
    if cmd == Cmd::Ms {
        match strtol(&buf[toks[2].clone()]) {
            Some(v) if (0..=i32::MAX - 2).contains(&v) => vlen = Some(v as usize),
            _ => return reply(BAD_FORMAT),
        }
    }
    let first_flag = if cmd == Cmd::Ms { 3 } else { 2 };
    // From here on an `ms` error swallows the value (memcached's `goto error`).
    let refuse = |r: &'static [u8]| match vlen {
        Some(v) => Step::Swallow {
            len: line_len,
            drain: v + 2,
            reply: r,
            delete: None,
        },
        None => reply(r),
    };
    let generic = match cmd {
        Cmd::Md | Cmd::Ma => Some(INVALID_OR_DUP),
        _ => None,
    };
    let flags = match preparse(buf, toks, first_flag) {
        Ok(f) => f,
        Err(e) => return refuse(generic.unwrap_or(e)),
    };
    if let Some(e) = flags.error {
        return refuse(generic.unwrap_or(if e.is_empty() { BAD_FORMAT } else { e }));
    }
    let key = if flags.base64 {
        match base64::engine::general_purpose::STANDARD.decode(raw_key) {
            Ok(k) if !k.is_empty() => KeyRef::Decoded(Bytes::from(k)),
            _ => return refuse(generic.unwrap_or(BAD_B64_KEY)),
        }
    } else {
        KeyRef::At(toks[1].clone())
    };
    // As for text storage: never store a key squeal could not invalidate (the value is
    // swallowed, as for memcached's own refusals at this point).
    if cmd == Cmd::Ms {
        let k = match &key {
            KeyRef::At(r) => &buf[r.clone()],
            KeyRef::Decoded(k) => &k[..],
        };
        if marker::key::validate(k).is_err() {
            return refuse(BAD_FORMAT);
        }
    }
    if let Some(i) = flags.opaque {
        if toks[i].len() > MAX_OPAQUE_LEN {
            return refuse(OPAQUE_TOO_LONG);
        }
    }
    match (cmd, flags.mode) {
        (Cmd::Ms, Some(m)) if !b"EAPRS".contains(&m) => return refuse(BAD_MS_MODE),
        (Cmd::Ma, Some(m)) if !b"I+D-".contains(&m) => return refuse(BAD_MA_MODE),
        _ => {}
    }
    if let Some(v) = vlen {
        if v > limits.max_item_size {
            // memcached unlinks the old item whatever the mode: a value the application
            // tried to replace (or extend) is not served on.
            let delete = match &key {
                KeyRef::At(r) => buf[r.clone()].to_vec(),
                KeyRef::Decoded(k) => k.to_vec(),
            };
            return Step::Swallow {
                len: line_len,
                drain: v + 2,
                reply: TOO_LARGE,
                delete: Some(delete),
            };
        }
    }
    let quiet = if !flags.quiet {
        Quiet::No
    } else {
        match cmd {
            Cmd::Mg => Quiet::Miss,
            Cmd::Ma => Quiet::SuccessOrValue,
            _ => Quiet::Success,
        }
    };
    // The backend line: the client's tokens without `q` and `O`, the value length
    // rebuilt. Room for the router's opaque under memcached's token limit?
    let dropped = usize::from(flags.quiet) + usize::from(flags.opaque.is_some());
    let takes_opaque = ntokens - dropped < MAX_META_TOKENS;
    let mut line = BytesMut::with_capacity(line_len + 8);
    let mut opaque_at = None;
    for (i, t) in toks.iter().enumerate() {
        let tok = &buf[t.clone()];
        if Some(i) == flags.opaque {
            opaque_at = Some(line.len());
            continue;
        }
        if i >= first_flag && tok[0] == b'q' {
            continue;
        }
        if i > 0 {
            line.put_u8(b' ');
        }
        if i == 2 && cmd == Cmd::Ms {
            line.extend_from_slice(vlen.unwrap_or(0).to_string().as_bytes());
        } else {
            line.extend_from_slice(tok);
        }
    }
    let mut data = None;
    let mut len = line_len;
    if let Some(v) = vlen {
        let total = line_len + v + 2;
        if buf.len() < total {
            return Step::Incomplete;
        }
        if &buf[total - 2..total] != b"\r\n" {
            return Step::Frame {
                len: total,
                raw: Raw::Reply(BAD_CHUNK),
            };
        }
        data = Some(line_len..total);
        len = total;
    }
    Step::Frame {
        len,
        raw: Raw::Keyed {
            cmd,
            key,
            op: RawOp::Meta {
                opaque_at: opaque_at.unwrap_or(line.len()),
                line: line.freeze(),
                data,
                opaque: flags.opaque.map(|i| toks[i].clone()),
                takes_opaque,
            },
            quiet,
            nkeys: u16::from(cmd == Cmd::Mg),
        },
    }
}

/// `me <key> [b]`: memcached's debug dump of an item. It reads no other flag and echoes
/// no opaque; the router sends just the key (and `b`).
fn me(buf: &[u8], line_len: usize, toks: &[Range<usize>]) -> Step {
    let reply = |r: &'static [u8]| Step::Frame {
        len: line_len,
        raw: Raw::Reply(r),
    };
    let ntokens = toks.len() + 1;
    if ntokens < 3 || toks[1].len() > marker::key::MAX_KEY_LEN {
        return reply(BAD_FORMAT);
    }
    let raw_key = &buf[toks[1].clone()];
    let base64 = ntokens >= 4 && &buf[toks[2].clone()] == b"b";
    let key = if base64 {
        match base64::engine::general_purpose::STANDARD.decode(raw_key) {
            Ok(k) if !k.is_empty() => KeyRef::Decoded(Bytes::from(k)),
            _ => return reply(BAD_FORMAT),
        }
    } else {
        KeyRef::At(toks[1].clone())
    };
    let mut line = BytesMut::with_capacity(raw_key.len() + 6);
    line.extend_from_slice(b"me ");
    line.extend_from_slice(raw_key);
    if base64 {
        line.extend_from_slice(b" b");
    }
    Step::Frame {
        len: line_len,
        raw: Raw::Keyed {
            cmd: Cmd::Me,
            key,
            op: RawOp::Meta {
                opaque_at: line.len(),
                line: line.freeze(),
                data: None,
                opaque: None,
                takes_opaque: false,
            },
            quiet: Quiet::No,
            nkeys: 0,
        },
    }
}
