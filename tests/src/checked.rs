//! Well-behaved clients that check every reply they get against exactly what it must be.
//!
//! Each [`Checker`] owns its keys (no other party writes them), so it knows what each key
//! holds: a value that encodes the key and a version (`<key>=v<version>;...`), or nothing.
//! Every request's reply is compared with that knowledge: a `get` must return that value or
//! miss when the key is empty, a `set` must say `STORED`, an `incr` the next number. A reply
//! that differs is *wrong* (and named: a value carrying another key is called out), an
//! error line is an *error*, no reply before the deadline or a closed connection is *lost*.
//!
//! When a request fails without a verdict (an error, a lost reply), the checker cannot know
//! whether a write took effect, so the key's state becomes the set of both possibilities
//! until the next read settles it: failures are counted once, never cascaded into false
//! wrong values.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire::{show, Frame, Wire};

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A reply that is not what the request must get (another key's value, a stray reply).
    Wrong,
    /// No reply before the deadline, or the connection closed under the request.
    Lost,
    /// An error line (`SERVER_ERROR ...`, `CLIENT_ERROR ...`, `ERROR`).
    Error,
}

/// Counts of outcomes, with the first failures described in full.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub wrong: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    /// The first failures of each kind: wrong, lost, error.
    samples: Mutex<[Vec<String>; 3]>,
}

/// How many failure descriptions of each kind a tally keeps.
const SAMPLES: usize = 10;

impl Tally {
    pub fn record(&self, outcome: Outcome, what: impl FnOnce() -> String) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Wrong => &self.wrong,
            Outcome::Lost => &self.lost,
            Outcome::Error => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let kind = match outcome {
            Outcome::Ok => return,
            Outcome::Wrong => 0,
            Outcome::Lost => 1,
            Outcome::Error => 2,
        };
        let mut s = self.samples.lock().unwrap();
        if s[kind].len() < SAMPLES {
            s[kind].push(format!("{outcome:?}: {}", what()));
        }
    }

    pub fn failures(&self) -> u64 {
        self.wrong.load(Ordering::Relaxed)
            + self.lost.load(Ordering::Relaxed)
            + self.errors.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failures()
    }

    /// The first failures described, wrong replies first, then lost ones, then errors.
    pub fn samples(&self) -> Vec<String> {
        self.samples.lock().unwrap().concat()
    }

    /// `ok=.. wrong=.. lost=.. errors=..`
    pub fn summary(&self) -> String {
        format!(
            "ok={} wrong={} lost={} errors={}",
            self.ok.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// What a checker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A mix of single and multi-key reads, text and meta writes, deletes, touches, incr,
    /// `noreply` sets, small to 300 KB values, pipelined 1 to 3 requests at a time: a
    /// client whose every reply is checked while hostile clients share the router.
    Mixed,
    /// 40 pipelined sets, then one `gat`/`gats`/`get` over 100 to 2,000 of its keys (up to
    /// a 50 KB line): ordinary traffic that memcached's own line rules must not trip on.
    BigMultiGet,
}

impl Profile {
    fn keys(self) -> usize {
        match self {
            Profile::Mixed => 16,
            Profile::BigMultiGet => 2000,
        }
    }
}

/// One request in flight and how to judge its reply.
struct Op {
    wire: Vec<u8>,
    /// `None`: a `noreply` request, which must get no reply at all.
    frame: Option<Frame>,
    kind: Kind,
}

enum Kind {
    /// `set`/`ms`: `ok` is the one right reply.
    Store {
        key: usize,
        value: Vec<u8>,
        ok: &'static [u8],
    },
    /// `get`/`gets`/`gat`/`gats` over these keys, in request order.
    Values {
        keys: Vec<usize>,
        cas: bool,
    },
    /// `mg <key> v k`.
    MetaGet {
        key: usize,
    },
    Delete {
        key: usize,
    },
    Touch {
        key: usize,
    },
    Incr {
        key: usize,
    },
}

/// Key 0 of a [`Profile::Mixed`] checker is a counter, only ever set to a number.
const COUNTER: usize = 0;

/// A well-behaved client.
pub struct Checker {
    pub id: usize,
    addr: String,
    conn: Option<Wire>,
    profile: Profile,
    keys: Vec<String>,
    /// Every value each key may hold now (`None`: absent); one entry when known.
    known: Vec<Vec<Option<Vec<u8>>>>,
    version: u64,
    rng: fastrand::Rng,
    /// How long a reply may take before it counts as lost.
    pub deadline: Duration,
}

impl Checker {
    /// Checker `id` with keys `<prefix>:<id>:<n>`, all absent at the start (use a prefix no
    /// other party writes).
    pub fn new(id: usize, addr: &str, prefix: &str, profile: Profile, seed: u64) -> Checker {
        let keys: Vec<String> = (0..profile.keys())
            .map(|n| format!("{prefix}:{id}:{n:05}"))
            .collect();
        Checker {
            id,
            addr: addr.to_string(),
            conn: None,
            profile,
            known: vec![vec![None]; keys.len()],
            keys,
            version: 0,
            rng: fastrand::Rng::with_seed(seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            deadline: Duration::from_secs(5),
        }
    }

    pub fn key(&self, n: usize) -> &str {
        &self.keys[n]
    }

    fn value(&mut self, key: usize) -> Vec<u8> {
        self.version += 1;
        let len = match self.profile {
            Profile::BigMultiGet => self.rng.usize(10..60),
            Profile::Mixed => match self.rng.u32(0..100) {
                0..=79 => self.rng.usize(5..120),
                80..=95 => self.rng.usize(1000..20_000),
                _ => self.rng.usize(100_000..300_000),
            },
        };
        let mut v = format!("{}=v{};", self.keys[key], self.version).into_bytes();
        let fill = b'a' + (self.version % 26) as u8;
        while v.len() < len {
            v.push(fill);
        }
        v
    }

    fn store_op(&mut self, key: usize, meta: bool, noreply: bool) -> Op {
        let value = self.value(key);
        let mut wire = if meta {
            format!("ms {} {} T0", self.keys[key], value.len()).into_bytes()
        } else {
            format!("set {} 0 0 {}", self.keys[key], value.len()).into_bytes()
        };
        if noreply {
            wire.extend_from_slice(if meta { b" q" } else { b" noreply" });
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&value);
        wire.extend_from_slice(b"\r\n");
        Op {
            wire,
            frame: (!noreply).then_some(Frame::Line),
            kind: Kind::Store {
                key,
                value,
                ok: if meta { b"HD\r\n" } else { b"STORED\r\n" },
            },
        }
    }

    fn values_op(&self, cmd: &str, keys: Vec<usize>) -> Op {
        let mut wire = cmd.as_bytes().to_vec();
        for &k in &keys {
            wire.push(b' ');
            wire.extend_from_slice(self.keys[k].as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        Op {
            wire,
            frame: Some(Frame::Values),
            kind: Kind::Values {
                keys,
                cas: cmd.starts_with("gets") || cmd.starts_with("gats"),
            },
        }
    }

    fn simple_op(&self, wire: String, frame: Frame, kind: Kind) -> Op {
        Op {
            wire: wire.into_bytes(),
            frame: Some(frame),
            kind,
        }
    }

    /// The next batch of requests this checker pipelines.
    fn batch(&mut self) -> Vec<Op> {
        match self.profile {
            Profile::Mixed => {
                let n = 1 + self.rng.usize(0..3);
                let mut ops = Vec::new();
                for _ in 0..n {
                    self.mixed_op(&mut ops);
                }
                ops
            }
            Profile::BigMultiGet => {
                let mut ops = Vec::new();
                for _ in 0..40 {
                    let key = self.rng.usize(0..self.keys.len());
                    ops.push(self.store_op(key, false, false));
                }
                let n = self.rng.usize(100..=2000);
                let start = self.rng.usize(0..=self.keys.len() - n);
                let mut keys: Vec<usize> = (start..start + n).collect();
                self.rng.shuffle(&mut keys);
                let cmd = match self.rng.u8(0..3) {
                    0 => "gat 3600",
                    1 => "gats 3600",
                    _ => "get",
                };
                ops.push(self.values_op(cmd, keys));
                ops
            }
        }
    }

    fn mixed_op(&mut self, ops: &mut Vec<Op>) {
        let nkeys = self.keys.len();
        let key = 1 + self.rng.usize(0..nkeys - 1);
        let name = self.keys[key].clone();
        match self.rng.u32(0..100) {
            0..=24 => ops.push(self.values_op("get", vec![key])),
            25..=34 => {
                let n = 2 + self.rng.usize(0..5);
                let keys = (0..n).map(|_| self.rng.usize(0..nkeys)).collect();
                let cmd = if self.rng.bool() { "get" } else { "gets" };
                ops.push(self.values_op(cmd, keys));
            }
            35..=54 => ops.push(self.store_op(key, false, false)),
            55..=64 => ops.push(self.simple_op(
                format!("mg {name} v k\r\n"),
                Frame::Meta,
                Kind::MetaGet { key },
            )),
            65..=69 => ops.push(self.store_op(key, true, false)),
            70..=74 => ops.push(self.simple_op(
                format!("delete {name}\r\n"),
                Frame::Line,
                Kind::Delete { key },
            )),
            75..=79 => ops.push(self.simple_op(
                format!("touch {name} 0\r\n"),
                Frame::Line,
                Kind::Touch { key },
            )),
            80..=84 => {
                // A noreply write, then the read that proves it happened.
                let meta = self.rng.bool();
                ops.push(self.store_op(key, meta, true));
                ops.push(self.values_op("get", vec![key]));
            }
            85..=89 => {
                let keys = (0..1 + self.rng.usize(0..3))
                    .map(|_| self.rng.usize(0..nkeys))
                    .collect();
                ops.push(self.values_op("gat 0", keys));
            }
            _ => {
                let counter = self.keys[COUNTER].clone();
                if self.known[COUNTER].iter().all(Option::is_none) {
                    self.version += 1;
                    let v = (self.version % 1000).to_string().into_bytes();
                    let mut wire = format!("set {counter} 0 0 {}\r\n", v.len()).into_bytes();
                    wire.extend_from_slice(&v);
                    wire.extend_from_slice(b"\r\n");
                    ops.push(Op {
                        wire,
                        frame: Some(Frame::Line),
                        kind: Kind::Store {
                            key: COUNTER,
                            value: v,
                            ok: b"STORED\r\n",
                        },
                    });
                } else {
                    ops.push(self.simple_op(
                        format!("incr {counter} 1\r\n"),
                        Frame::Line,
                        Kind::Incr { key: COUNTER },
                    ));
                }
            }
        }
    }

    fn connection(&mut self) -> std::io::Result<&mut Wire> {
        if self.conn.is_none() {
            self.conn = Some(Wire::connect(&self.addr, self.deadline)?);
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// Sends one batch and checks every reply, recording each request's outcome in `tally`.
    pub fn step(&mut self, tally: &Tally, late: &dyn Fn() -> String) {
        // Failures carry `late()`: where the run was when they were found, if that is not
        // where it was when the batch was sent.
        let record = |outcome: Outcome, what: String| {
            if outcome == Outcome::Ok {
                tally.record(outcome, String::new);
            } else {
                tally.record(outcome, || what + &late());
            }
        };
        let ops = self.batch();
        let mut wire = Vec::new();
        for op in &ops {
            wire.extend_from_slice(&op.wire);
        }
        let deadline_len = self.deadline;
        let sent = self.connection().and_then(|c| c.send(&wire));
        if let Err(e) = sent {
            for op in &ops {
                self.uncertain(op);
                record(Outcome::Lost, {
                    format!(
                        "client {} request {}: could not send: {e}",
                        self.id,
                        show(&op.wire, 120)
                    )
                });
            }
            self.conn = None;
            return;
        }
        let mut broken = false;
        for (i, op) in ops.iter().enumerate() {
            if broken {
                self.uncertain(op);
                record(Outcome::Lost, {
                    format!(
                        "client {} request {}: not answered (an earlier reply in its pipeline was lost or wrong)",
                        self.id,
                        show(&op.wire, 120)
                    )
                });
                continue;
            }
            let Some(frame) = op.frame else {
                // noreply: nothing to read; the next request's reply proves the effect.
                self.settle_noreply(op);
                continue;
            };
            let deadline = Instant::now() + deadline_len;
            let reply = self
                .conn
                .as_mut()
                .expect("connected")
                .reply(frame, deadline);
            match reply {
                Err((e, partial)) => {
                    self.uncertain(op);
                    record(Outcome::Lost, {
                        format!(
                            "client {} request {} (#{i} of a pipeline of {}): {e} within {:?}; got {:?} so far",
                            self.id,
                            show(&op.wire, 120),
                            ops.len(),
                            deadline_len,
                            show(&partial, 200)
                        )
                    });
                    broken = true;
                }
                Ok(bytes) => match self.judge(op, &bytes) {
                    Ok(()) => record(Outcome::Ok, String::new()),
                    Err(expected) => {
                        let outcome = if is_error_line(&bytes) {
                            Outcome::Error
                        } else {
                            broken = true;
                            Outcome::Wrong
                        };
                        self.uncertain(op);
                        let other = self.names_another_key(&bytes);
                        record(outcome, {
                            format!(
                                "client {} request {}: expected {expected}{other}; got {:?}",
                                self.id,
                                show(&op.wire, 120),
                                show(&bytes, 300)
                            )
                        });
                    }
                },
            }
        }
        if broken {
            // The framing of what follows cannot be trusted: start over on a new connection.
            self.conn = None;
        }
    }

    /// Reads every key on a fresh connection and checks it holds what it must: catches a
    /// value another client's traffic wrote over.
    pub fn verify_all(&mut self, tally: &Tally) {
        self.conn = None;
        for key in 0..self.keys.len() {
            let op = self.values_op("get", vec![key]);
            let deadline = Instant::now() + self.deadline;
            let got = match self.connection() {
                Ok(c) => c.send(&op.wire).map_err(|e| e.to_string()).and_then(|_| {
                    c.reply(Frame::Values, deadline)
                        .map_err(|(e, _)| e.to_string())
                }),
                Err(e) => Err(e.to_string()),
            };
            match got {
                Err(e) => {
                    tally.record(Outcome::Lost, || {
                        format!("client {} final read of {}: {e}", self.id, self.keys[key])
                    });
                    self.conn = None;
                }
                Ok(bytes) => match self.judge(&op, &bytes) {
                    Ok(()) => tally.record(Outcome::Ok, String::new),
                    Err(expected) => {
                        let outcome = if is_error_line(&bytes) {
                            Outcome::Error
                        } else {
                            Outcome::Wrong
                        };
                        tally.record(outcome, || {
                            format!(
                                "client {} final read of {}: expected {expected}; got {:?}",
                                self.id,
                                self.keys[key],
                                show(&bytes, 300)
                            )
                        })
                    }
                },
            }
        }
    }

    /// A request whose outcome is unknown: the key may now hold either state.
    fn uncertain(&mut self, op: &Op) {
        match &op.kind {
            Kind::Store { key, value, .. } => self.known[*key].push(Some(value.clone())),
            Kind::Delete { key } => self.known[*key].push(None),
            Kind::Incr { key } => {
                let next: Vec<Option<Vec<u8>>> = self.known[*key]
                    .iter()
                    .flatten()
                    .filter_map(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .map(|n| Some((n + 1).to_string().into_bytes()))
                    .collect();
                self.known[*key].extend(next);
            }
            _ => {}
        }
        for states in &mut self.known {
            let mut unique: Vec<Option<Vec<u8>>> = Vec::with_capacity(states.len());
            for st in states.drain(..) {
                if !unique.contains(&st) {
                    unique.push(st);
                }
            }
            *states = unique;
        }
    }

    fn settle_noreply(&mut self, op: &Op) {
        if let Kind::Store { key, value, .. } = &op.kind {
            self.known[*key] = vec![Some(value.clone())];
        }
    }

    fn possible(&self, key: usize) -> String {
        self.known[key]
            .iter()
            .map(|v| match v {
                None => "absent".to_string(),
                Some(v) => format!("{:?}", show(v, 60)),
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// Checks `bytes` as the reply to `op`; on success settles what it proved. The error
    /// says what was expected.
    fn judge(&mut self, op: &Op, bytes: &[u8]) -> Result<(), String> {
        match &op.kind {
            Kind::Store { key, value, ok } => {
                if bytes == *ok {
                    self.known[*key] = vec![Some(value.clone())];
                    Ok(())
                } else {
                    Err(format!("{:?}", show(ok, 20)))
                }
            }
            Kind::Delete { key } => {
                let st = &self.known[*key];
                let want: Vec<&'static [u8]> = [
                    st.iter()
                        .any(Option::is_some)
                        .then_some(&b"DELETED\r\n"[..]),
                    st.iter()
                        .any(Option::is_none)
                        .then_some(&b"NOT_FOUND\r\n"[..]),
                ]
                .into_iter()
                .flatten()
                .collect();
                if want.contains(&bytes) {
                    self.known[*key] = vec![None];
                    Ok(())
                } else {
                    let want: Vec<String> = want.iter().map(|w| show(w, 20)).collect();
                    Err(format!(
                        "{} (key was {})",
                        want.join(" or "),
                        self.possible(*key)
                    ))
                }
            }
            Kind::Touch { key } => {
                let st = &self.known[*key];
                let hit = bytes == b"TOUCHED\r\n" && st.iter().any(Option::is_some);
                let miss = bytes == b"NOT_FOUND\r\n" && st.iter().any(Option::is_none);
                if hit {
                    self.known[*key].retain(Option::is_some);
                    Ok(())
                } else if miss {
                    // A miss proves nothing when a write may or may not have happened (a
                    // router may answer a failed server's keys as misses).
                    Ok(())
                } else {
                    Err(format!(
                        "TOUCHED or NOT_FOUND as the key is {}",
                        self.possible(*key)
                    ))
                }
            }
            Kind::Incr { key } => {
                for state in self.known[*key].clone() {
                    let want = match &state {
                        None => b"NOT_FOUND\r\n".to_vec(),
                        Some(v) => match std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                        {
                            Some(n) => format!("{}\r\n", n + 1).into_bytes(),
                            None => continue,
                        },
                    };
                    if bytes == want {
                        if state.is_some() {
                            self.known[*key] = vec![Some(want[..want.len() - 2].to_vec())];
                        }
                        return Ok(());
                    }
                }
                Err(format!("the next number after {}", self.possible(*key)))
            }
            Kind::MetaGet { key } => {
                let name = &self.keys[*key];
                for state in self.known[*key].clone() {
                    let want = match &state {
                        // memcached 1.6 returns the k flag on a miss too.
                        None => format!("EN k{name}\r\n").into_bytes(),
                        Some(v) => {
                            let mut w = format!("VA {} k{name}\r\n", v.len()).into_bytes();
                            w.extend_from_slice(v);
                            w.extend_from_slice(b"\r\n");
                            w
                        }
                    };
                    if bytes == want {
                        if state.is_some() {
                            self.known[*key] = vec![state];
                        }
                        return Ok(());
                    }
                }
                Err(format!(
                    "VA/EN k{name} as {name} is {}",
                    self.possible(*key)
                ))
            }
            Kind::Values { keys, cas } => self.judge_values(keys, *cas, bytes),
        }
    }

    fn judge_values(&mut self, keys: &[usize], cas: bool, bytes: &[u8]) -> Result<(), String> {
        let items = parse_values(bytes, cas)?;
        let mut next = items.iter().peekable();
        let mut seen: Vec<(usize, Option<Vec<u8>>)> = Vec::new();
        for &k in keys {
            let name = self.keys[k].as_bytes();
            let hit = next.peek().is_some_and(|(n, _)| n == name);
            let state = if hit {
                Some(next.next().expect("peeked").1.clone())
            } else {
                None
            };
            if !self.known[k].contains(&state) {
                return Err(format!(
                    "{} {}, found {}",
                    self.keys[k],
                    self.possible(k),
                    match &state {
                        None => "no VALUE for it".to_string(),
                        Some(v) => format!("{:?}", show(v, 60)),
                    }
                ));
            }
            seen.push((k, state));
        }
        if let Some((n, _)) = next.next() {
            return Err(format!(
                "no VALUE for {:?} (not asked for, or out of order)",
                show(n, 60)
            ));
        }
        // Hits settle what a key holds; a miss proves nothing when a write may or may not
        // have happened (a router may answer a failed server's keys as misses).
        for (k, state) in seen {
            if state.is_some() {
                self.known[k] = vec![state];
            }
        }
        Ok(())
    }

    /// ` (it names another key: ...)` when `bytes` carries a key this request did not ask
    /// for, the signature of a reply delivered to the wrong client.
    fn names_another_key(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        let Some(prefix) = self.keys[0].rsplitn(3, ':').nth(2) else {
            return String::new();
        };
        let mine = format!("{prefix}:{}:", self.id);
        for word in text.split(|c: char| c.is_whitespace() || c == '=' || c == ';') {
            let w = word.trim_start_matches('k');
            if w.starts_with(&format!("{prefix}:")) && !w.starts_with(&mine) {
                return format!(" (it carries another client's key {w:?})");
            }
        }
        String::new()
    }
}

/// A `VALUE` item: key and data.
type Item = (Vec<u8>, Vec<u8>);

/// `(key, data)` of each `VALUE` in a `get`-family reply that ends in `END`, checking the
/// framing (flags 0, a cas unique exactly when asked for).
fn parse_values(bytes: &[u8], cas: bool) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut rest = bytes;
    loop {
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Err("a reply ending in END\\r\\n".into());
        };
        let line = &rest[..nl];
        rest = &rest[nl + 2..];
        if line == b"END" {
            if !rest.is_empty() {
                return Err("nothing after END".into());
            }
            return Ok(items);
        }
        let toks: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let want_toks = if cas { 5 } else { 4 };
        if toks.len() != want_toks || toks[0] != b"VALUE" || toks[2] != b"0" {
            return Err(format!(
                "VALUE <key> 0 <len>{} lines and END",
                if cas { " <cas>" } else { "" }
            ));
        }
        let len: usize = std::str::from_utf8(toks[3])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a numeric VALUE length")?;
        if cas
            && std::str::from_utf8(toks[4])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_none()
        {
            return Err("a numeric cas unique".into());
        }
        if rest.len() < len + 2 || &rest[len..len + 2] != b"\r\n" {
            return Err(format!("{len} data bytes then \\r\\n"));
        }
        items.push((toks[1].to_vec(), rest[..len].to_vec()));
        rest = &rest[len + 2..];
    }
}

/// A reply that is one error line.
pub fn is_error_line(bytes: &[u8]) -> bool {
    let one_line = bytes.iter().filter(|&&b| b == b'\n').count() == 1;
    one_line
        && (bytes.starts_with(b"SERVER_ERROR")
            || bytes.starts_with(b"CLIENT_ERROR")
            || bytes.starts_with(b"ERROR"))
}

/// Runs checkers on their own threads until `stop` returns true, each step's outcomes
/// recorded in the tally `phase` selects at the time the step starts; then each checker
/// reads back all its keys into `final_tally`. Returns when all are done.
pub fn run_checkers(
    mut checkers: Vec<Checker>,
    tallies: &[Tally],
    phase: &AtomicUsize,
    stop: &(dyn Fn() -> bool + Sync),
    final_tally: &Tally,
) {
    std::thread::scope(|s| {
        for c in checkers.iter_mut() {
            s.spawn(move || {
                // Bounded in count as well as in time.
                for _ in 0..10_000_000u64 {
                    if stop() {
                        break;
                    }
                    let p = phase.load(Ordering::Relaxed).min(tallies.len() - 1);
                    let late = || {
                        let now = phase.load(Ordering::Relaxed).min(tallies.len() - 1);
                        if now == p {
                            String::new()
                        } else {
                            format!(" [sent in phase {p}, found in phase {now}]")
                        }
                    };
                    c.step(&tallies[p], &late);
                }
                c.verify_all(final_tally);
            });
        }
    });
}
