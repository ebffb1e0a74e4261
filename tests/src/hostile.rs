//! Hostile memcached traffic: a corpus of requests that break framing, hang a naive proxy
//! or stretch its limits (every case of issue 16 and its neighbours), and a seeded mutation
//! fuzz of valid commands. Used to prove that nothing one client sends reaches another.
//!
//! Everything here touches only keys starting with `h` (and never `flush_all`, `shutdown`
//! or memory settings), so a correct router leaves the well-behaved clients' keys alone; a
//! value written over theirs is the router's doing. Values that memcached would run as a
//! command (after refusing their `ms` line) only read well-behaved keys.

use std::time::{Duration, Instant};

use crate::wire::Wire;

/// One hostile input, with the issue-16 group it belongs to.
#[derive(Debug, Clone)]
pub struct Case {
    pub group: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn case(group: &'static str, name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        group,
        name: name.into(),
        bytes: bytes.into(),
    }
}

/// `get`/`gat ...` over `n` keys of `len` bytes each (`h` + digits + padding).
pub fn multi_key_line(cmd: &str, n: usize, len: usize) -> Vec<u8> {
    let mut line = cmd.as_bytes().to_vec();
    for i in 0..n {
        line.push(b' ');
        let k = format!("h{i:06}");
        line.extend_from_slice(k.as_bytes());
        line.extend_from_slice(&vec![b'x'; len.saturating_sub(k.len())]);
    }
    line.extend_from_slice(b"\r\n");
    line
}

/// `<head>\r\n<value>\r\n` with a value of `len` bytes.
fn with_value(head: &str, len: usize) -> Vec<u8> {
    let mut v = format!("{head}\r\n").into_bytes();
    v.extend_from_slice(&vec![b'v'; len]);
    v.extend_from_slice(b"\r\n");
    v
}

/// The corpus. `item_size` is the router's `max_item_size`; `victim` is a key a
/// well-behaved client owns, which embedded commands read (never write).
pub fn corpus(item_size: usize, victim: &str) -> Vec<Case> {
    let mut c = Vec::new();
    // A value memcached runs as a command after refusing the line before it.
    let embedded = format!("get {victim}");
    let o17: Vec<String> = (0..17).map(|i| format!("O{i}")).collect();
    c.push(case(
        "framing",
        "ms with 17 O flags and a value that is a get",
        format!(
            "ms hk {} {}\r\n{embedded}\r\n",
            embedded.len(),
            o17.join(" ")
        ),
    ));
    c.push(case(
        "framing",
        "ms with 17 O flags, 8-byte value 'get key5'",
        format!("ms hk 8 {}\r\nget key5\r\n", o17.join(" ")),
    ));
    let many_flags: Vec<String> = (0..40).map(|i| format!("O{i}")).collect();
    c.push(case(
        "framing",
        "ms with 40 flags",
        format!("ms hk 2 {}\r\nhi\r\n", many_flags.join(" ")),
    ));
    c.push(case(
        "framing",
        "ms with a bad flag and a value that is a get",
        format!("ms hk {} Zz\r\n{embedded}\r\n", embedded.len()),
    ));
    c.push(case(
        "framing",
        "set with too many tokens and a value that is a get",
        format!(
            "set hk 0 0 {} noreply extra more\r\n{embedded}\r\n",
            embedded.len()
        ),
    ));
    c.push(case(
        "framing",
        "set whose value is longer than declared",
        format!("set hk 0 0 2\r\nhi{embedded}\r\n"),
    ));
    // noreply and q variants a proxy can miscount.
    c.push(case(
        "noreply",
        "incr noreply with a NUL",
        &b"set hn 0 0 1\r\n5\r\nincr hn 1 noreply\0xyz\r\n"[..],
    ));
    c.push(case(
        "noreply",
        "incr key1 1 noreply NUL",
        &b"incr hkey1 1 noreply\0\r\n"[..],
    ));
    c.push(case("noreply", "mg nokey v q q", "mg hnokey v q q\r\n"));
    c.push(case(
        "noreply",
        "mg hit v q q",
        "ms hq 2\r\nhi\r\nmg hq v q q\r\n",
    ));
    c.push(case("noreply", "ms k 2 q q", "ms hq 2 q q\r\nhi\r\n"));
    c.push(case("noreply", "md q q", "md hq q q\r\n"));
    c.push(case("noreply", "ma q q", "ma hq q q\r\n"));
    c.push(case(
        "noreply",
        "delete noreply noreply",
        "delete hq noreply noreply\r\n",
    ));
    c.push(case(
        "noreply",
        "touch noreply NUL",
        &b"touch hq 10 noreply\0\r\n"[..],
    ));
    c.push(case(
        "noreply",
        "set noreply with NUL",
        &b"set hq 0 0 1 noreply\0\r\nx\r\n"[..],
    ));
    c.push(case("noreply", "noreply alone", "get hq noreply\r\n"));
    // Long lines.
    c.push(case(
        "long lines",
        "gat with 150 keys (3.3 KB)",
        multi_key_line("gat 0", 150, 21),
    ));
    c.push(case(
        "long lines",
        "gats with 150 keys",
        multi_key_line("gats 0", 150, 21),
    ));
    c.push(case(
        "long lines",
        "gat of 17.5 KB",
        multi_key_line("gat 0", 760, 22),
    ));
    c.push(case(
        "long lines",
        "get with 2,000 keys (400 KB)",
        multi_key_line("get", 2000, 199),
    ));
    c.push(case(
        "long lines",
        "gets with 2,000 keys",
        multi_key_line("gets", 2000, 199),
    ));
    c.push(case(
        "long lines",
        "touch with a 5 KB line",
        format!("touch h{} 0\r\n", "x".repeat(5000)),
    ));
    c.push(case(
        "long lines",
        "mg with a 3 KB line",
        format!("mg h{} v\r\n", "x".repeat(3000)),
    ));
    c.push(case(
        "long lines",
        "mg with 2,000 flags",
        format!("mg hk {}\r\n", vec!["v"; 2000].join(" ")),
    ));
    // Key bytes.
    for (name, key) in [
        ("tab", &b"h\tk"[..]),
        ("0x01", &b"h\x01k"[..]),
        ("0x7f", &b"h\x7fk"[..]),
        ("0xff", &b"h\xffk"[..]),
        ("CR", &b"h\rk"[..]),
    ] {
        let mut get = b"get ".to_vec();
        get.extend_from_slice(key);
        get.extend_from_slice(b"\r\n");
        c.push(case("key bytes", format!("get key with {name}"), get));
        let mut set = b"set ".to_vec();
        set.extend_from_slice(key);
        set.extend_from_slice(b" 0 0 1\r\nx\r\n");
        c.push(case("key bytes", format!("set key with {name}"), set));
        let mut mg = b"mg ".to_vec();
        mg.extend_from_slice(key);
        mg.extend_from_slice(b" v\r\n");
        c.push(case("key bytes", format!("mg key with {name}"), mg));
    }
    c.push(case(
        "key bytes",
        "251-byte key",
        format!("get h{}\r\n", "k".repeat(250)),
    ));
    // Commands with arguments memcached ignores or refuses.
    for line in [
        "version foo\r\n",
        "version foo bar baz\r\n",
        "version\r\n",
        "quit foo\r\n",
        "quit\r\nget hk\r\n",
        "verbosity 1 2 3\r\n",
        "stats reset\r\n",
        "stats settings\r\n",
        "stats items\r\n",
        "stats slabs\r\n",
        "stats detail dump\r\n",
        "stats cachedump 1 1\r\n",
        "stats nonsense\r\n",
        "watch\r\nget hk\r\n",
        "lru_crawler metadump all\r\n",
        "mn extra\r\n",
        "me hk\r\n",
        "misbehave\r\n",
        "\r\n\r\n\r\n",
    ] {
        c.push(case("arguments", line.trim_end().to_string(), line));
    }
    // Numbers in forms memcached parses differently.
    for line in [
        "set hk +1 0 1\r\nx\r\n",
        "set hk 0 +1 1\r\nx\r\n",
        "set hk 0 0 +1\r\nx\r\n",
        "set hk -1 0 1\r\nx\r\n",
        "set hk 4294967296 0 1\r\nx\r\n",
        "set hk 0 0 1x\r\nx\r\n",
        "set hk 0 0 0x1\r\nx\r\n",
        "set hk 0 0  1\r\nx\r\n",
        "gat +5 hk\r\n",
        "gat -1 hk\r\n",
        "gat 99999999999999999999 hk\r\n",
        "gat\r\n",
        "gat 5\r\n",
        "touch hk +5\r\n",
        "incr hn +1\r\n",
        "incr hn -1\r\n",
        "incr hn 18446744073709551616\r\n",
        "decr hn 1 2 3\r\n",
        "cas hk 0 0 1 -1\r\nx\r\n",
        "cas hk 0 0 1 +1\r\nx\r\n",
        "ms hk +2\r\nhi\r\n",
        "ms hk 2 T+1\r\nhi\r\n",
        "mg hk N-1 v\r\n",
        "ma hk D-1\r\n",
    ] {
        c.push(case(
            "numbers",
            line.split("\r\n").next().unwrap().to_string(),
            line,
        ));
    }
    // Values over the limit and lengths beyond any buffer.
    let big = 2 * item_size + 7;
    c.push(case(
        "sizes",
        "set over the item size",
        with_value("set hbig 0 0 LEN", 0),
    ));
    c.last_mut().unwrap().bytes = with_value(&format!("set hbig 0 0 {big}"), big);
    for mode in ["MS", "ME", "MA", "MP", "MR"] {
        c.push(case(
            "sizes",
            format!("ms over the item size in {mode} mode"),
            with_value(&format!("ms hbig {big} M{} T0", &mode[1..]), big),
        ));
    }
    c.push(case(
        "sizes",
        "append over the item size",
        with_value(&format!("append hbig 0 0 {big}"), big),
    ));
    for len in [
        "4294967295",
        "4294967296",
        "99999999999999999999",
        "18446744073709551615",
    ] {
        c.push(case(
            "sizes",
            format!("set declaring {len} bytes"),
            format!("set hk 0 0 {len}\r\nabc\r\nget hk\r\n"),
        ));
        c.push(case(
            "sizes",
            format!("ms declaring {len} bytes"),
            format!("ms hk {len}\r\nabc\r\n"),
        ));
    }
    // Unterminated input (the connection is dropped after it).
    c.push(case("unterminated", "get without newline", "get hk"));
    c.push(case(
        "unterminated",
        "half a value",
        "set hk 0 0 100\r\nabc",
    ));
    c.push(case(
        "unterminated",
        "5 KB without newline",
        "a".repeat(5000),
    ));
    c.push(case("unterminated", "3 KB gat without newline", {
        let mut l = multi_key_line("gat 0", 150, 21);
        l.truncate(l.len() - 2);
        l
    }));
    c.push(case("unterminated", "bare CR", "get hk\rget hk\r"));
    // NUL bytes.
    c.push(case("nul", "NUL in key", &b"get h\0k\r\n"[..]));
    c.push(case("nul", "NULs only", &b"\0\0\0\0\r\n"[..]));
    c.push(case(
        "nul",
        "NUL after set line",
        &b"set hk 0 0 1\0\r\nx\r\n"[..],
    ));
    c.push(case("nul", "NUL in meta flags", &b"mg hk v\0 k\r\n"[..]));
    c.push(case(
        "nul",
        "NUL in the middle of a get",
        &b"get hk\0 hother\r\n"[..],
    ));
    c.push(case("nul", "binary protocol magic", &b"\x80\x00\x00\x02hk\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..]));
    // base64 keys.
    for line in [
        "mg aGs= b v k\r\n",
        "ms aGs= 2 b\r\nhi\r\n",
        "md aGs= b q\r\n",
        "ma aGs= b\r\n",
        "mg ==== b v\r\n",
        "mg !!!! b v\r\n",
        "mg aGs b v\r\n",
        "ms aGs=aGs= 2 b\r\nhi\r\n",
    ] {
        c.push(case(
            "base64",
            line.split("\r\n").next().unwrap().to_string(),
            line,
        ));
    }
    // Meta flags of every kind, duplicated, unknown.
    for line in [
        "mg hk s v f t c k O1 q h l N30 R30 T30 E5\r\n",
        "mg hk v v v k k k\r\n",
        "mg hk Z Y X\r\n",
        "mg hk O\r\n",
        "mg hk Oxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx v\r\n",
        "mg hk N\r\n",
        "mg hk E\r\n",
        "ms hk 2 I\r\nhi\r\n",
        "ms hk 2 F\r\nhi\r\n",
        "ms hk 2 C\r\nhi\r\n",
        "ms hk 2 S2\r\nhi\r\n",
        "ms hk 2 MX\r\nhi\r\n",
        "ms hk 2 MS MA\r\nhi\r\n",
        "md hk I T30\r\n",
        "md hk x y z\r\n",
        "ma hk N0 J13 D1 MI MD\r\n",
        "ma hk MX\r\n",
        "ma hk q v q\r\n",
        "me hk\r\n",
        "mn\r\nmn\r\n",
        "mg\r\n",
        "ms\r\n",
        "ms hk\r\n",
    ] {
        c.push(case(
            "meta flags",
            line.split("\r\n").next().unwrap().to_string(),
            line,
        ));
    }
    c
}

/// Valid commands on hostile keys, the seeds the fuzz mutates.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    [
        "set hf 0 0 5\r\nhello\r\n",
        "set hf 1 100 3 noreply\r\nabc\r\n",
        "add hf2 0 0 2\r\nok\r\n",
        "append hf 0 0 2\r\n!!\r\n",
        "cas hf 0 0 1 12\r\nz\r\n",
        "get hf\r\n",
        "get hf hf2 hf3\r\n",
        "gets hf\r\n",
        "gat 10 hf hf2\r\n",
        "gats 0 hf\r\n",
        "touch hf 10\r\n",
        "incr hn 1\r\n",
        "decr hn 1 noreply\r\n",
        "delete hf\r\n",
        "delete hf noreply\r\n",
        "mg hf v k t c f s\r\n",
        "mg hf v q O123\r\n",
        "ms hf 3 T10 F5\r\nabc\r\n",
        "ms hf 3 q MA\r\nabc\r\n",
        "md hf q\r\n",
        "ma hn D5 MD v\r\n",
        "mn\r\n",
        "version\r\n",
        "verbosity 0\r\n",
        "stats\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// One fuzz input: 1 to 4 mutated seeds in a row (bit flips, truncation, splicing, token
/// duplication, inserted bytes, numbers made huge).
pub fn fuzz_case(rng: &mut fastrand::Rng) -> Vec<u8> {
    let seeds = fuzz_seeds();
    let mut out = Vec::new();
    for _ in 0..rng.usize(1..=4) {
        let mut s = seeds[rng.usize(0..seeds.len())].clone();
        for _ in 0..rng.usize(1..=3) {
            mutate(rng, &mut s, &seeds);
        }
        // A mutation must not make a well-behaved key out of a hostile one.
        if !s.windows(4).any(|w| w == b"iso:" || w == b"ldg:") {
            out.extend_from_slice(&s);
        }
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, s: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    if s.is_empty() {
        s.extend_from_slice(&seeds[0]);
    }
    match rng.u8(0..7) {
        0 => {
            for _ in 0..rng.usize(1..=8) {
                let i = rng.usize(0..s.len());
                s[i] ^= 1 << rng.u8(0..8);
            }
        }
        1 => s.truncate(rng.usize(0..s.len())),
        2 => {
            let other = &seeds[rng.usize(0..seeds.len())];
            let cut = rng.usize(0..=s.len());
            let from = rng.usize(0..=other.len());
            s.truncate(cut);
            s.extend_from_slice(&other[from..]);
        }
        3 => {
            // Duplicate a space-separated token of the first line.
            let line_end = s.iter().position(|&b| b == b'\r').unwrap_or(s.len());
            let toks: Vec<Vec<u8>> = s[..line_end]
                .split(|&b| b == b' ')
                .map(<[u8]>::to_vec)
                .collect();
            let t = rng.usize(0..toks.len());
            let mut line = Vec::new();
            for (i, tok) in toks.iter().enumerate() {
                if i > 0 {
                    line.push(b' ');
                }
                line.extend_from_slice(tok);
                if i == t {
                    for _ in 0..rng.usize(1..=20) {
                        line.push(b' ');
                        line.extend_from_slice(tok);
                    }
                }
            }
            s.splice(..line_end, line);
        }
        4 => {
            let i = rng.usize(0..=s.len());
            let b = [0u8, b'\r', b'\n', b' ', b'\t', 0xff, b'0', b'9'][rng.usize(0..8)];
            for _ in 0..rng.usize(1..=4) {
                s.insert(i, b);
            }
        }
        5 => {
            // Replace a number with a huge or signed one.
            if let Some(i) = s.iter().position(u8::is_ascii_digit) {
                let n = ["99999999999999999999", "-1", "+7", "4294967296", "0"][rng.usize(0..5)];
                let j = s[i..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(s.len(), |j| i + j);
                s.splice(i..j, n.bytes());
            }
        }
        _ => {
            // Drop the terminating CR or LF of a random line.
            let ends: Vec<usize> = s
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\r' || b == b'\n')
                .map(|(i, _)| i)
                .collect();
            if !ends.is_empty() {
                s.remove(ends[rng.usize(0..ends.len())]);
            }
        }
    }
}

/// Sends `bytes` on a new connection, reads (and discards) replies for a moment, closes.
/// Everything is bounded: a router that stops reading or never answers costs at most
/// about `patience` twice.
pub fn send_and_drop(addr: &str, bytes: &[u8], patience: Duration) {
    let Ok(mut w) = Wire::connect(addr, patience) else {
        return;
    };
    let start = Instant::now();
    let _ = w.send(bytes);
    let left = patience.saturating_sub(start.elapsed());
    let _ = w.drain(
        Duration::from_millis(30),
        left.max(Duration::from_millis(30)),
    );
}
