//! memcached's meta protocol (`mg`, `ms`, `md`, `ma`, `me`; `mn` is answered locally).
//!
//! The router reads only the key, the value length of `ms`, and the `b` (base64 key) and
//! `q` (quiet) flags. Other flags (`O` opaque, `k`, `v`, `T`, `M`, ...) pass through to the
//! server untouched, so their replies are memcached's own.

use std::ops::Range;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

use super::{
    key_ok, parse_i64, text::value_frame, Cmd, Frame, KeyRef, Limits, Quiet, Raw, Step, WireRef,
    BAD_B64_KEY, BAD_FORMAT, ERROR, TOO_LARGE,
};

pub fn parse(
    buf: &[u8],
    _end: usize,
    line_len: usize,
    toks: &[Range<usize>],
    cmd: Cmd,
    limits: &Limits,
) -> Step {
    let reply = |r| Step::Frame {
        len: line_len,
        raw: Raw::Reply(r),
    };
    if toks.len() < 2 {
        return reply(if cmd == Cmd::Me { BAD_FORMAT } else { ERROR });
    }
    let raw_key = &buf[toks[1].clone()];
    if raw_key.len() > marker::key::MAX_KEY_LEN {
        return reply(BAD_FORMAT);
    }
    let (vlen, first_flag) = if cmd == Cmd::Ms {
        match toks.get(2).and_then(|t| parse_i64(&buf[t.clone()])) {
            Some(v) if v >= 0 && v < i32::MAX as i64 - 2 => (Some(v as usize), 3),
            _ => return reply(BAD_FORMAT),
        }
    } else {
        (None, 2)
    };
    let mut base64 = false;
    let mut quiet_at = None;
    for (i, t) in toks.iter().enumerate().skip(first_flag) {
        match buf[t.start] {
            b'b' => base64 = true,
            b'q' if quiet_at.is_none() => quiet_at = Some(i),
            _ => {}
        }
    }
    // A refusal that memcached makes after reading the flags swallows the value of an `ms`.
    let refuse = |r: &'static [u8]| match vlen {
        Some(v) => Step::Swallow {
            len: line_len,
            drain: v + 2,
            reply: r,
            delete: None,
        },
        None => reply(r),
    };
    let key = if base64 {
        match base64::engine::general_purpose::STANDARD.decode(raw_key) {
            Ok(k) if !k.is_empty() && k.len() <= marker::key::MAX_KEY_LEN => {
                KeyRef::Decoded(Bytes::from(k))
            }
            _ => return refuse(BAD_B64_KEY),
        }
    } else {
        if !key_ok(raw_key) {
            return reply(BAD_FORMAT);
        }
        KeyRef::At(toks[1].clone())
    };
    if let Some(v) = vlen {
        if v > limits.max_value {
            // As memcached: an `ms` in set mode (no `M` flag, or `MS`) refused as too large
            // also removes the old item.
            let set_mode = toks.iter().skip(first_flag).all(|t| {
                let f = &buf[t.clone()];
                f[0] != b'M' || f.get(1).is_some_and(|m| m.eq_ignore_ascii_case(&b's'))
            });
            return Step::Swallow {
                len: line_len,
                drain: v + 2,
                reply: TOO_LARGE,
                delete: (set_mode && !base64).then(|| toks[1].clone()),
            };
        }
    }
    let (frame, quiet_kind) = match cmd {
        Cmd::Mg => (Frame::Meta, Quiet::Miss),
        Cmd::Ma => (Frame::Meta, Quiet::SuccessOrValue),
        Cmd::Me => (Frame::Line, Quiet::No),
        _ => (Frame::Line, Quiet::Success),
    };
    let (wire, quiet) = match quiet_at {
        Some(q) if cmd != Cmd::Me => (without_token(buf, toks, q), quiet_kind),
        _ => (WireRef::At(0..line_len), Quiet::No),
    };
    let raw = Raw::Keyed {
        cmd,
        key,
        wire,
        wire2: None,
        frame,
        quiet,
        nkeys: u16::from(cmd == Cmd::Mg),
    };
    match vlen {
        Some(v) => value_frame(buf, line_len, v, false, raw),
        None => Step::Frame { len: line_len, raw },
    }
}

/// The line without token `skip` (the `q` flag), which the backend must not see.
fn without_token(buf: &[u8], toks: &[Range<usize>], skip: usize) -> WireRef {
    let mut line = BytesMut::with_capacity(toks.last().map_or(0, |t| t.end) + 2);
    for (i, t) in toks.iter().enumerate() {
        if i == skip {
            continue;
        }
        if !line.is_empty() {
            line.put_u8(b' ');
        }
        line.extend_from_slice(&buf[t.clone()]);
    }
    line.extend_from_slice(b"\r\n");
    WireRef::Owned(line.freeze())
}
