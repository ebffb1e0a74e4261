//! The invalidation wire format, version 2: what `squeal` sends to `squeal-router` (over TCP,
//! or as a Kafka message value) and what the router answers. This is the spec other
//! implementations follow.
//!
//! Everything is authenticated with HMAC-SHA256 over a secret both sides read from their
//! configs: the router deletes keys (and flushes whole clusters) on anyone's behalf, so
//! unauthenticated bytes must never cause a delete, and must not make the router hold more
//! than a few hundred bytes for them either.
//!
//! # TCP: handshake, then frames
//!
//! A TCP connection starts with a challenge-response handshake, before the router accepts
//! or buffers any frame. The router reads at most [`AUTH_LEN`] bytes from a peer that has
//! not proved it holds the secret, and closes the connection if the handshake does not
//! complete within its handshake timeout.
//!
//! ```text
//! router -> squeal   hello     magic b"SQH2" | router_nonce 16 random bytes
//! squeal -> router   auth      magic b"SQS2" | client_nonce 16 random bytes
//!                              | mac 32 = HMAC(secret, b"SQS2" | router_nonce | client_nonce)
//! router -> squeal   welcome   magic b"SQW2"
//!                              | mac 32 = HMAC(secret, b"SQW2" | router_nonce | client_nonce)
//!    or              refusal   magic b"SQX2" | reason u8 (unauthenticated, informational;
//!                              the router closes the connection after it), see [`Refusal`]
//! ```
//!
//! Both nonces together are the connection's *session context* (32 bytes,
//! `router_nonce | client_nonce`). Every frame and ack on the connection is MAC'd over it,
//! so a frame or ack captured on one connection is worthless on any other: replaying a
//! captured flush frame cannot empty the caches, and an old ack cannot make squeal
//! checkpoint past an undelivered batch. The welcome proves the router holds the secret
//! too, so a squeal with the wrong secret gets a clear refusal (or a bad welcome MAC)
//! instead of a silent hang.
//!
//! # Frames (TCP after the handshake, and Kafka message values)
//!
//! ```text
//! batch frame                              ack frame (router -> squeal, TCP only)
//!   magic    b"SQB2"                         magic    b"SQA2"
//!   body_len u32 (at most MAX_BODY_LEN)      seq      u64
//!   body     body_len bytes                  status   u8  (0 applied, 1 rejected)
//!   mac      32 bytes                        mac      32 bytes
//!
//! mac = HMAC-SHA256(secret, ctx_len u8 | ctx | every frame byte before the mac)
//!   ctx: TCP: the 32-byte session context; Kafka: the 5 bytes b"kafka" (no handshake
//!   there, so a Kafka message carries its own MAC and nothing ties it to a session).
//!
//! body
//!   version        u8 = 2
//!   kind           u8  0: deletes, 1: flush_all (entries must be empty)
//!   source_len     u8, then source bytes (UTF-8: which squeal, e.g. "db1-primary")
//!   seq            u64  per-source sequence number, increasing across restarts (squeal
//!                       starts a run at its start time in µs); a flush carries the seq
//!                       of the last batch sent before it
//!   commit_time_us u64  commit time of the newest transaction, µs since the Unix epoch
//!   count          u32  number of entries
//!   entries        count × (kind u8, key_len u8, key bytes)
//!                  kind 0: a cache key, deleted in every front-end cluster
//!                  kind 1: a remote-marker key, deleted in the regional pool
//! ```
//!
//! A *flush_all* frame asks the router to run `flush_all` on every server of every cluster
//! and marker pool; it is acked (or its Kafka offset committed) only once every server
//! applied it or it was durably spooled for a server that is down, in order with that
//! server's spooled deletes. squeal sends one when row-level invalidation is impossible
//! (a TRUNCATE / DROP / RENAME of a rule table with `on_table_reset = "flush"`).
//!
//! Integers are big-endian. Keys obey [`crate::key::validate`]. The router checks the
//! 8-byte header (magic, length bound) before it reads a body, and a frame that has started
//! must complete within its frame timeout.
//!
//! Version 1 (magics `SQB1` / `SQA1`, no handshake, frames MAC'd without a context) is
//! refused with [`WireError::OldVersion`]: a version-1 squeal sending to a version-2
//! router gets the hello where it expects an ack, so it fails with "bad magic" and the
//! router logs and counts `reason="old_version"`; a version-2 squeal talking to a
//! version-1 router times out waiting for the hello and says so.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::key::{self, KeyError};

/// First four bytes of a batch frame.
pub const BATCH_MAGIC: &[u8; 4] = b"SQB2";
/// First four bytes of an ack frame.
pub const ACK_MAGIC: &[u8; 4] = b"SQA2";
/// The router's challenge, first on every connection.
pub const HELLO_MAGIC: &[u8; 4] = b"SQH2";
/// squeal's answer to the challenge.
pub const AUTH_MAGIC: &[u8; 4] = b"SQS2";
/// The router's proof that it holds the secret too: frames may follow.
pub const WELCOME_MAGIC: &[u8; 4] = b"SQW2";
/// The router's (unauthenticated) reason for closing a connection during the handshake.
pub const REFUSAL_MAGIC: &[u8; 4] = b"SQX2";
/// Magics of protocol version 1, recognised only to say so clearly.
const V1_MAGICS: [&[u8; 4]; 2] = [b"SQB1", b"SQA1"];
/// Length of the HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Length of each side's handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes before the body: magic and length.
pub const HEADER_LEN: usize = 8;
/// Length of a whole ack frame.
pub const ACK_LEN: usize = 4 + 8 + 1 + MAC_LEN;
/// Length of the router's hello.
pub const HELLO_LEN: usize = 4 + NONCE_LEN;
/// Length of squeal's auth: all a router ever reads from an unauthenticated peer.
pub const AUTH_LEN: usize = 4 + NONCE_LEN + MAC_LEN;
/// Length of the router's welcome.
pub const WELCOME_LEN: usize = 4 + MAC_LEN;
/// Length of a refusal.
pub const REFUSAL_LEN: usize = 5;
/// Largest body a receiver accepts: a sender splits bigger batches, and a receiver must
/// not allocate what a garbage length field claims.
pub const MAX_BODY_LEN: usize = 4 << 20;
/// The MAC context of a Kafka message (TCP frames use their session context).
pub const KAFKA_CONTEXT: &[u8] = b"kafka";

const VERSION: u8 = 2;

type HmacSha256 = Hmac<Sha256>;

/// What an entry of a batch asks the router to delete, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A cache key: deleted in every front-end cluster of the region.
    Key = 0,
    /// A remote-marker key: deleted in the regional pool.
    Marker = 1,
}

/// What a frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BatchKind {
    /// Delete the entries' keys.
    #[default]
    Deletes = 0,
    /// `flush_all` every server of every cluster and marker pool (no entries).
    FlushAll = 1,
}

/// One batch of invalidations from one squeal (or one flush request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Which squeal sent it; sequence numbers are per source.
    pub source: String,
    /// Increasing per source; a retried batch keeps its number, so duplicates are visible.
    pub seq: u64,
    /// Commit time of the newest transaction in the batch (µs since the Unix epoch), so the
    /// router can measure commit-to-delete latency.
    pub commit_time_us: u64,
    pub kind: BatchKind,
    /// Empty for a flush.
    pub entries: Vec<(EntryKind, Vec<u8>)>,
}

/// The router's answer to one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    pub status: AckStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Every delete was applied or durably spooled: squeal may checkpoint past it.
    Applied = 0,
    /// The router could not take the batch (e.g. its spool is full): retry, elsewhere.
    Rejected = 1,
}

/// Why a router closed a connection during the handshake. Sent unauthenticated (the peer
/// has not proved anything yet), so it only ever explains, never changes, what squeal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The auth MAC did not verify: the two sides' secrets differ.
    Auth = 1,
    /// The peer speaks another protocol version.
    Version = 2,
    /// Too many connections are in their handshake; retry shortly.
    Busy = 3,
    /// The handshake did not complete within the router's handshake timeout.
    Timeout = 4,
    /// Bytes that are not a squeal handshake.
    Malformed = 5,
}

impl Refusal {
    fn from_u8(b: u8) -> Option<Refusal> {
        Some(match b {
            1 => Refusal::Auth,
            2 => Refusal::Version,
            3 => Refusal::Busy,
            4 => Refusal::Timeout,
            5 => Refusal::Malformed,
            _ => return None,
        })
    }

    pub fn encode(self) -> [u8; REFUSAL_LEN] {
        let mut out = [0; REFUSAL_LEN];
        out[..4].copy_from_slice(REFUSAL_MAGIC);
        out[4] = self as u8;
        out
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Auth => "authentication failed: squeal's and the router's secrets differ",
            Refusal::Version => {
                "protocol version mismatch: upgrade squeal and squeal-router together"
            }
            Refusal::Busy => "too many unauthenticated connections on the router; retrying",
            Refusal::Timeout => "handshake not completed within the router's handshake_timeout_ms",
            Refusal::Malformed => "not a squeal handshake",
        })
    }
}

/// Why bytes are not a valid frame. Any of these closes the connection: after a bad frame
/// the stream cannot be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:02x?}: not a squeal frame")]
    BadMagic([u8; 4]),
    #[error(
        "peer speaks squeal wire protocol version 1 (magic {:?}); this side speaks version 2 \
         (handshake, session-bound MACs): upgrade squeal and squeal-router together",
        String::from_utf8_lossy(.0)
    )]
    OldVersion([u8; 4]),
    #[error("frame body of {0} bytes exceeds the {MAX_BODY_LEN}-byte limit")]
    TooLarge(usize),
    #[error("authentication failed: wrong secret or tampered frame")]
    BadMac,
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("entry {index}: invalid key: {error}")]
    BadKey { index: usize, error: KeyError },
    #[error("the router refused the connection: {0}")]
    Refused(Refusal),
}

/// A shared secret for the MAC. Kept as a prepared HMAC state so each frame does not
/// re-derive the key pads.
#[derive(Clone)]
pub struct Secret(HmacSha256);

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret(HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length"))
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> Result<(), WireError> {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        // Constant-time comparison: a timing oracle would let an attacker forge tags.
        mac.verify_slice(tag).map_err(|_| WireError::BadMac)
    }
}

impl Secret {
    /// The secret as squeal's and the router's configs give it: exactly one of an inline
    /// `secret` or a `secret_file` (trailing whitespace, e.g. a newline, ignored), never
    /// empty. Both sides load it here so they cannot disagree on what the key bytes are.
    pub fn from_config(
        secret: Option<&str>,
        secret_file: Option<&std::path::Path>,
    ) -> Result<Secret, String> {
        let bytes = match (secret, secret_file) {
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| format!("reading secret_file {}: {e}", path.display()))?
                .trim_ascii_end()
                .to_vec(),
            _ => return Err("exactly one of `secret` or `secret_file` is needed".into()),
        };
        if bytes.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret::new(&bytes))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The two nonces of one TCP connection's handshake; [`Session::context`] is the MAC
/// context of every frame and ack on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub router_nonce: [u8; NONCE_LEN],
    pub client_nonce: [u8; NONCE_LEN],
}

impl Session {
    pub fn context(&self) -> [u8; 2 * NONCE_LEN] {
        let mut ctx = [0; 2 * NONCE_LEN];
        ctx[..NONCE_LEN].copy_from_slice(&self.router_nonce);
        ctx[NONCE_LEN..].copy_from_slice(&self.client_nonce);
        ctx
    }
}

/// A fresh random nonce from the operating system's generator: a predictable router nonce
/// would let a recorded session be replayed.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS random generator is available");
    nonce
}

/// The router's hello for `router_nonce`.
pub fn encode_hello(router_nonce: &[u8; NONCE_LEN]) -> [u8; HELLO_LEN] {
    let mut out = [0; HELLO_LEN];
    out[..4].copy_from_slice(HELLO_MAGIC);
    out[4..].copy_from_slice(router_nonce);
    out
}

/// squeal's auth answering `router_nonce` with its own `client_nonce`.
pub fn encode_auth(secret: &Secret, session: &Session) -> [u8; AUTH_LEN] {
    let mut out = [0; AUTH_LEN];
    out[..4].copy_from_slice(AUTH_MAGIC);
    out[4..4 + NONCE_LEN].copy_from_slice(&session.client_nonce);
    let tag = secret.tag(&[AUTH_MAGIC, &session.router_nonce, &session.client_nonce]);
    out[4 + NONCE_LEN..].copy_from_slice(&tag);
    out
}

/// The router's welcome for an authenticated `session`.
pub fn encode_welcome(secret: &Secret, session: &Session) -> [u8; WELCOME_LEN] {
    let mut out = [0; WELCOME_LEN];
    out[..4].copy_from_slice(WELCOME_MAGIC);
    let tag = secret.tag(&[WELCOME_MAGIC, &session.router_nonce, &session.client_nonce]);
    out[4..].copy_from_slice(&tag);
    out
}

/// Checks the magic visible at the front of `buf` against `expected`, as soon as any of it
/// has arrived: garbage is refused after its first wrong byte, not after a buffer fills.
fn check_magic(buf: &[u8], expected: &[u8; 4]) -> Result<(), WireError> {
    let seen = buf.len().min(4);
    if buf[..seen] == expected[..seen] {
        return Ok(());
    }
    let magic = magic_of(buf);
    if seen == 4 && V1_MAGICS.contains(&&magic) {
        return Err(WireError::OldVersion(magic));
    }
    Err(WireError::BadMagic(magic))
}

/// Router side: decodes squeal's auth from the front of `buf` (`Ok(None)`: need more; never
/// more than [`AUTH_LEN`] bytes are needed) and verifies it against the hello's nonce.
pub fn decode_auth(
    buf: &[u8],
    secret: &Secret,
    router_nonce: &[u8; NONCE_LEN],
) -> Result<Option<Session>, WireError> {
    check_magic(buf, AUTH_MAGIC)?;
    if buf.len() < AUTH_LEN {
        return Ok(None);
    }
    let client_nonce: [u8; NONCE_LEN] = buf[4..4 + NONCE_LEN].try_into().unwrap();
    secret.verify(
        &[AUTH_MAGIC, router_nonce, &client_nonce],
        &buf[4 + NONCE_LEN..AUTH_LEN],
    )?;
    Ok(Some(Session {
        router_nonce: *router_nonce,
        client_nonce,
    }))
}

/// squeal side: the total length of the router's handshake message that starts with
/// `magic` (`expected` is [`HELLO_MAGIC`] or [`WELCOME_MAGIC`]; a refusal may come instead).
pub fn router_message_len(magic: &[u8; 4], expected: &[u8; 4]) -> Result<usize, WireError> {
    if magic == REFUSAL_MAGIC {
        return Ok(REFUSAL_LEN);
    }
    check_magic(magic, expected)?;
    Ok(if expected == HELLO_MAGIC {
        HELLO_LEN
    } else {
        WELCOME_LEN
    })
}

fn refusal_of(buf: &[u8]) -> Result<(), WireError> {
    if buf.len() >= REFUSAL_LEN && &buf[..4] == REFUSAL_MAGIC {
        return Err(match Refusal::from_u8(buf[4]) {
            Some(r) => WireError::Refused(r),
            None => WireError::Malformed("unknown refusal reason"),
        });
    }
    Ok(())
}

/// squeal side: the router nonce of a whole hello (or the refusal it got instead).
pub fn decode_hello(buf: &[u8]) -> Result<[u8; NONCE_LEN], WireError> {
    refusal_of(buf)?;
    check_magic(buf, HELLO_MAGIC)?;
    if buf.len() != HELLO_LEN {
        return Err(WireError::Malformed("hello of the wrong length"));
    }
    Ok(buf[4..].try_into().unwrap())
}

/// squeal side: checks a whole welcome (or reports the refusal it got instead).
pub fn verify_welcome(buf: &[u8], secret: &Secret, session: &Session) -> Result<(), WireError> {
    refusal_of(buf)?;
    check_magic(buf, WELCOME_MAGIC)?;
    if buf.len() != WELCOME_LEN {
        return Err(WireError::Malformed("welcome of the wrong length"));
    }
    secret.verify(
        &[WELCOME_MAGIC, &session.router_nonce, &session.client_nonce],
        &buf[4..],
    )
}

/// The client half of the handshake over a blocking stream, for tools and tests written
/// against `std::net` (squeal's async sink does the same steps on tokio). Returns the
/// session whose context the frames must be MAC'd with.
pub fn client_handshake<S: std::io::Read + std::io::Write>(
    stream: &mut S,
    secret: &Secret,
) -> Result<Session, HandshakeError> {
    let read_message = |stream: &mut S, expected: &[u8; 4]| -> Result<Vec<u8>, HandshakeError> {
        let mut msg = vec![0u8; 4];
        stream.read_exact(&mut msg)?;
        let len = router_message_len(msg[..4].try_into().unwrap(), expected)?;
        msg.resize(len, 0);
        stream.read_exact(&mut msg[4..])?;
        Ok(msg)
    };
    let router_nonce = decode_hello(&read_message(stream, HELLO_MAGIC)?)?;
    let session = Session {
        router_nonce,
        client_nonce: random_nonce(),
    };
    stream.write_all(&encode_auth(secret, &session))?;
    verify_welcome(&read_message(stream, WELCOME_MAGIC)?, secret, &session)?;
    Ok(session)
}

/// Why [`client_handshake`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// The MAC of a frame's bytes under `context`: the context's length first, so that no two
/// (context, frame) pairs feed HMAC the same bytes.
fn frame_tag(secret: &Secret, context: &[u8], framed: &[u8]) -> [u8; MAC_LEN] {
    secret.tag(&[&[context.len() as u8], context, framed])
}

fn frame_verify(
    secret: &Secret,
    context: &[u8],
    framed: &[u8],
    tag: &[u8],
) -> Result<(), WireError> {
    secret.verify(&[&[context.len() as u8], context, framed], tag)
}

impl Batch {
    /// A flush request from `source`, following its batch `seq`.
    pub fn flush_all(source: &str, seq: u64, commit_time_us: u64) -> Batch {
        Batch {
            source: source.to_string(),
            seq,
            commit_time_us,
            kind: BatchKind::FlushAll,
            entries: Vec::new(),
        }
    }

    /// Appends the encoded frame, authenticated under `context` (a session's context, or
    /// [`KAFKA_CONTEXT`]), to `out`. Keys must already be valid; an invalid one is an
    /// error here rather than a rejected frame at the router.
    pub fn encode(
        &self,
        secret: &Secret,
        context: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        if self.kind == BatchKind::FlushAll && !self.entries.is_empty() {
            return Err(WireError::Malformed("a flush carries no entries"));
        }
        let start = out.len();
        out.extend_from_slice(BATCH_MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        out.push(self.kind as u8);
        let source = self.source.as_bytes();
        let source_len = u8::try_from(source.len()).map_err(|_| {
            out.truncate(start);
            WireError::Malformed("source over 255 bytes")
        })?;
        out.push(source_len);
        out.extend_from_slice(source);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.commit_time_us.to_be_bytes());
        let count = u32::try_from(self.entries.len())
            .map_err(|_| WireError::Malformed("too many entries"))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (index, (kind, key)) in self.entries.iter().enumerate() {
            if let Err(error) = key::validate(key) {
                out.truncate(start);
                return Err(WireError::BadKey { index, error });
            }
            out.push(*kind as u8);
            out.push(key.len() as u8); // validate() bounds it to 250
            out.extend_from_slice(key);
        }
        let body_len = out.len() - start - HEADER_LEN;
        if body_len > MAX_BODY_LEN {
            out.truncate(start);
            return Err(WireError::TooLarge(body_len));
        }
        out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_be_bytes());
        let tag = frame_tag(secret, context, &out[start..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Bytes one entry adds to a frame, so a sender can bound frames before encoding.
    pub fn entry_len(key: &[u8]) -> usize {
        2 + key.len()
    }

    /// Bytes a frame takes beyond its entries.
    pub fn overhead(source: &str) -> usize {
        HEADER_LEN + 1 + 1 + 1 + source.len() + 8 + 8 + 4 + MAC_LEN
    }

    /// The whole frame's length from its 8-byte header, checked (magic, version, length
    /// bound) before a receiver reads or allocates the body.
    pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, WireError> {
        check_magic(header, BATCH_MAGIC)?;
        let body_len = u32::from_be_bytes(header[4..8].try_into().unwrap()) as usize;
        if body_len > MAX_BODY_LEN {
            return Err(WireError::TooLarge(body_len));
        }
        Ok(HEADER_LEN + body_len + MAC_LEN)
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
    /// otherwise the batch and how many bytes it took. The MAC (under `context`) is checked
    /// before the body is parsed, so unauthenticated bytes never reach the parser.
    pub fn decode(
        buf: &[u8],
        secret: &Secret,
        context: &[u8],
    ) -> Result<Option<(Batch, usize)>, WireError> {
        check_magic(buf, BATCH_MAGIC)?;
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let total = Batch::frame_len(buf[..HEADER_LEN].try_into().unwrap())?;
        if buf.len() < total {
            return Ok(None);
        }
        let (framed, tag) = buf[..total].split_at(total - MAC_LEN);
        frame_verify(secret, context, framed, tag)?;
        let batch = parse_body(&framed[HEADER_LEN..])?;
        Ok(Some((batch, total)))
    }
}

fn magic_of(buf: &[u8]) -> [u8; 4] {
    let mut magic = [0; 4];
    let n = buf.len().min(4);
    magic[..n].copy_from_slice(&buf[..n]);
    magic
}

/// A cursor over an authenticated body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8, what)?.try_into().unwrap()))
    }
}

fn parse_body(body: &[u8]) -> Result<Batch, WireError> {
    let mut r = Reader(body);
    let version = r.u8("truncated before version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = match r.u8("truncated before kind")? {
        0 => BatchKind::Deletes,
        1 => BatchKind::FlushAll,
        _ => return Err(WireError::Malformed("unknown frame kind")),
    };
    let source_len = r.u8("truncated before source")? as usize;
    let source = std::str::from_utf8(r.take(source_len, "truncated source")?)
        .map_err(|_| WireError::Malformed("source is not UTF-8"))?
        .to_string();
    let seq = r.u64("truncated before seq")?;
    let commit_time_us = r.u64("truncated before commit time")?;
    let count = r.u32("truncated before count")? as usize;
    if kind == BatchKind::FlushAll && count != 0 {
        return Err(WireError::Malformed("a flush carries no entries"));
    }
    // Each entry takes at least 3 bytes: a count the body cannot hold is a lie.
    if count > r.0.len() / 3 {
        return Err(WireError::Malformed("entry count exceeds body"));
    }
    let mut entries = Vec::with_capacity(count);
    for index in 0..count {
        let kind = match r.u8("truncated entry")? {
            0 => EntryKind::Key,
            1 => EntryKind::Marker,
            _ => return Err(WireError::Malformed("unknown entry kind")),
        };
        let len = r.u8("truncated entry")? as usize;
        let key = r.take(len, "truncated key")?;
        key::validate(key).map_err(|error| WireError::BadKey { index, error })?;
        entries.push((kind, key.to_vec()));
    }
    if !r.0.is_empty() {
        return Err(WireError::Malformed("trailing bytes after entries"));
    }
    Ok(Batch {
        source,
        seq,
        commit_time_us,
        kind,
        entries,
    })
}

impl Ack {
    /// The ack frame, MAC'd under the connection's session `context`.
    pub fn encode(&self, secret: &Secret, context: &[u8]) -> [u8; ACK_LEN] {
        let mut out = [0; ACK_LEN];
        out[..4].copy_from_slice(ACK_MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12] = self.status as u8;
        let tag = frame_tag(secret, context, &out[..13]);
        out[13..].copy_from_slice(&tag);
        out
    }

    /// Decodes one ack from the front of `buf` (`Ok(None)`: need more bytes). Acks are
    /// authenticated too: a forged ack would make squeal checkpoint past undelivered keys.
    pub fn decode(
        buf: &[u8],
        secret: &Secret,
        context: &[u8],
    ) -> Result<Option<(Ack, usize)>, WireError> {
        check_magic(buf, ACK_MAGIC)?;
        if buf.len() < ACK_LEN {
            return Ok(None);
        }
        frame_verify(secret, context, &buf[..13], &buf[13..ACK_LEN])?;
        let status = match buf[12] {
            0 => AckStatus::Applied,
            1 => AckStatus::Rejected,
            _ => return Err(WireError::Malformed("unknown ack status")),
        };
        let seq = u64::from_be_bytes(buf[4..12].try_into().unwrap());
        Ok(Some((Ack { seq, status }, ACK_LEN)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CTX: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn batch() -> Batch {
        Batch {
            source: "db1".into(),
            seq: 42,
            commit_time_us: 1_700_000_000_000_000,
            kind: BatchKind::Deletes,
            entries: vec![
                (EntryKind::Key, b"user:1".to_vec()),
                (EntryKind::Marker, b"r_user:1".to_vec()),
            ],
        }
    }

    #[test]
    fn round_trips_and_reports_its_length() {
        let secret = Secret::new(b"s3cret");
        let mut buf = Vec::new();
        batch().encode(&secret, CTX, &mut buf).unwrap();
        let expected =
            Batch::overhead("db1") + Batch::entry_len(b"user:1") + Batch::entry_len(b"r_user:1");
        assert_eq!(buf.len(), expected);
        assert_eq!(
            Batch::frame_len(buf[..HEADER_LEN].try_into().unwrap()),
            Ok(expected)
        );
        buf.extend_from_slice(b"SQB2"); // the start of the next frame stays unread
        let (decoded, used) = Batch::decode(&buf, &secret, CTX).unwrap().unwrap();
        assert_eq!(decoded, batch());
        assert_eq!(used, expected);
    }

    #[test]
    fn a_flush_round_trips_and_carries_no_entries() {
        let secret = Secret::new(b"k");
        let flush = Batch::flush_all("db1", 9, 5);
        let mut buf = Vec::new();
        flush.encode(&secret, KAFKA_CONTEXT, &mut buf).unwrap();
        assert_eq!(buf.len(), Batch::overhead("db1"));
        let (decoded, used) = Batch::decode(&buf, &secret, KAFKA_CONTEXT)
            .unwrap()
            .unwrap();
        assert_eq!((decoded, used), (flush.clone(), buf.len()));
        let mut with_keys = flush;
        with_keys.entries.push((EntryKind::Key, b"k".to_vec()));
        let mut out = Vec::new();
        assert!(with_keys.encode(&secret, CTX, &mut out).is_err());
        assert!(out.is_empty(), "a refused encode leaves nothing behind");
        // An authenticated flush that claims entries is refused by the parser too.
        let mut body = vec![VERSION, 1, 0];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&1u32.to_be_bytes());
        body.extend_from_slice(&[0, 1, b'k']);
        assert!(matches!(parse_body(&body), Err(WireError::Malformed(_))));
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let secret = Secret::new(b"k");
        let mut buf = Vec::new();
        batch().encode(&secret, CTX, &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(
                Batch::decode(&buf[..cut], &secret, CTX),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn wrong_secret_tampering_or_another_context_is_rejected() {
        let mut buf = Vec::new();
        batch()
            .encode(&Secret::new(b"right"), CTX, &mut buf)
            .unwrap();
        assert_eq!(
            Batch::decode(&buf, &Secret::new(b"wrong"), CTX),
            Err(WireError::BadMac)
        );
        let secret = Secret::new(b"right");
        // A frame captured on one session (or from Kafka) is worthless on another.
        let other = [7u8; 32];
        assert_eq!(Batch::decode(&buf, &secret, &other), Err(WireError::BadMac));
        assert_eq!(
            Batch::decode(&buf, &secret, KAFKA_CONTEXT),
            Err(WireError::BadMac)
        );
        for i in HEADER_LEN..buf.len() {
            let mut tampered = buf.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                Batch::decode(&tampered, &secret, CTX),
                Err(WireError::BadMac),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_early() {
        let secret = Secret::new(b"k");
        assert!(matches!(
            Batch::decode(b"get foo\r\n", &secret, CTX),
            Err(WireError::BadMagic(_))
        ));
        assert!(matches!(
            Batch::decode(b"G", &secret, CTX),
            Err(WireError::BadMagic(_))
        ));
        let mut huge = BATCH_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Batch::decode(&huge, &secret, CTX),
            Err(WireError::TooLarge(u32::MAX as usize))
        );
        assert_eq!(
            Batch::frame_len(huge[..8].try_into().unwrap()),
            Err(WireError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn version_one_frames_get_a_clear_error() {
        let secret = Secret::new(b"k");
        let mut v1 = b"SQB1".to_vec();
        v1.extend_from_slice(&100u32.to_be_bytes());
        let err = Batch::decode(&v1, &secret, CTX).unwrap_err();
        assert_eq!(err, WireError::OldVersion(*b"SQB1"));
        assert!(err.to_string().contains("version 1"), "{err}");
        assert_eq!(
            decode_auth(&v1, &secret, &[0; NONCE_LEN]),
            Err(WireError::OldVersion(*b"SQB1"))
        );
        // What a version-1 squeal sees when a version-2 router greets it.
        assert!(matches!(
            Ack::decode(&encode_hello(&[0; NONCE_LEN]), &secret, CTX),
            Err(WireError::BadMagic(_))
        ));
    }

    #[test]
    fn the_handshake_authenticates_both_sides() {
        let secret = Secret::new(b"k");
        let router_nonce = random_nonce();
        assert_ne!(router_nonce, random_nonce(), "nonces are fresh");
        let hello = encode_hello(&router_nonce);
        assert_eq!(
            router_message_len(hello[..4].try_into().unwrap(), HELLO_MAGIC),
            Ok(HELLO_LEN)
        );
        assert_eq!(decode_hello(&hello), Ok(router_nonce));
        let session = Session {
            router_nonce,
            client_nonce: random_nonce(),
        };
        let auth = encode_auth(&secret, &session);
        for cut in 0..AUTH_LEN {
            assert_eq!(decode_auth(&auth[..cut], &secret, &router_nonce), Ok(None));
        }
        assert_eq!(
            decode_auth(&auth, &secret, &router_nonce),
            Ok(Some(session))
        );
        // The wrong secret, or an auth recorded for another hello, fails.
        assert_eq!(
            decode_auth(&auth, &Secret::new(b"x"), &router_nonce),
            Err(WireError::BadMac)
        );
        assert_eq!(
            decode_auth(&auth, &secret, &random_nonce()),
            Err(WireError::BadMac)
        );
        let welcome = encode_welcome(&secret, &session);
        assert_eq!(verify_welcome(&welcome, &secret, &session), Ok(()));
        assert_eq!(
            verify_welcome(&welcome, &Secret::new(b"x"), &session),
            Err(WireError::BadMac)
        );
        // An auth cannot be reflected back as a welcome: the magic is in the MAC.
        let mut reflected = WELCOME_MAGIC.to_vec();
        reflected.extend_from_slice(&auth[4 + NONCE_LEN..]);
        assert_eq!(
            verify_welcome(&reflected, &secret, &session),
            Err(WireError::BadMac)
        );
        let refusal = Refusal::Busy.encode();
        assert_eq!(
            router_message_len(refusal[..4].try_into().unwrap(), WELCOME_MAGIC),
            Ok(REFUSAL_LEN)
        );
        assert_eq!(
            verify_welcome(&refusal, &secret, &session),
            Err(WireError::Refused(Refusal::Busy))
        );
        assert_eq!(
            decode_hello(&Refusal::Auth.encode()),
            Err(WireError::Refused(Refusal::Auth))
        );
    }

    #[test]
    fn client_handshake_over_a_blocking_stream() {
        // A scripted router: hello, then whatever answer the test puts after it.
        struct Script {
            input: std::io::Cursor<Vec<u8>>,
            written: Vec<u8>,
        }
        impl std::io::Read for Script {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(buf)
            }
        }
        impl std::io::Write for Script {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.written.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let secret = Secret::new(b"k");
        let mut input = encode_hello(&[1; NONCE_LEN]).to_vec();
        input.extend_from_slice(&Refusal::Auth.encode());
        let mut s = Script {
            input: std::io::Cursor::new(input),
            written: Vec::new(),
        };
        let err = client_handshake(&mut s, &secret).unwrap_err();
        assert!(err.to_string().contains("secrets differ"), "{err}");
        let session = decode_auth(&s.written, &secret, &[1; NONCE_LEN])
            .unwrap()
            .unwrap();
        // With a real welcome, the session comes back.
        let mut input = encode_hello(&[1; NONCE_LEN]).to_vec();
        input.extend_from_slice(&[0; WELCOME_LEN]);
        let mut s = Script {
            input: std::io::Cursor::new(input),
            written: Vec::new(),
        };
        assert!(
            client_handshake(&mut s, &secret).is_err(),
            "bad welcome MAC"
        );
        assert_eq!(session.router_nonce, [1; NONCE_LEN]);
    }

    #[test]
    fn an_authenticated_but_invalid_key_is_refused() {
        // A sender with the secret but a bug: the router must still not send a broken
        // command line to memcached.
        let secret = Secret::new(b"k");
        let mut good = Vec::new();
        let mut b = batch();
        b.entries = vec![(EntryKind::Key, b"abc".to_vec())];
        b.encode(&secret, CTX, &mut good).unwrap();
        // Turn "abc" into "a c" and re-authenticate.
        let body_end = good.len() - MAC_LEN;
        good[body_end - 2] = b' ';
        good.truncate(body_end);
        let tag = frame_tag(&secret, CTX, &good);
        good.extend_from_slice(&tag);
        assert!(matches!(
            Batch::decode(&good, &secret, CTX),
            Err(WireError::BadKey { index: 0, .. })
        ));
        b.entries = vec![(EntryKind::Key, b"bad key".to_vec())];
        assert!(b.encode(&secret, CTX, &mut Vec::new()).is_err());
    }

    #[test]
    fn secrets_load_from_exactly_one_source() {
        let dir = std::env::temp_dir().join(format!("squeal-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        batch()
            .encode(
                &Secret::from_config(Some("s3cret"), None).unwrap(),
                CTX,
                &mut a,
            )
            .unwrap();
        batch()
            .encode(&Secret::from_config(None, Some(&dir)).unwrap(), CTX, &mut b)
            .unwrap();
        assert_eq!(
            a, b,
            "the file's trailing newline is not part of the secret"
        );
        assert!(Secret::from_config(None, None).is_err());
        assert!(Secret::from_config(Some("x"), Some(&dir)).is_err());
        assert!(Secret::from_config(Some(""), None).is_err());
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn acks_round_trip_and_are_authenticated() {
        let secret = Secret::new(b"k");
        let ack = Ack {
            seq: 7,
            status: AckStatus::Applied,
        };
        let bytes = ack.encode(&secret, CTX);
        assert_eq!(Ack::decode(&bytes, &secret, CTX), Ok(Some((ack, ACK_LEN))));
        assert_eq!(Ack::decode(&bytes[..10], &secret, CTX), Ok(None));
        assert_eq!(
            Ack::decode(&bytes, &Secret::new(b"x"), CTX),
            Err(WireError::BadMac)
        );
        assert_eq!(
            Ack::decode(&bytes, &secret, &[0; 32]),
            Err(WireError::BadMac),
            "an ack from another session"
        );
    }

    fn arb_key() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0x21u8..=0xff, 1..=250)
            .prop_filter("no DEL", |k| !k.contains(&0x7f))
    }

    proptest! {
        #[test]
        fn any_valid_batch_round_trips(
            source in "[a-z0-9-]{0,40}",
            seq: u64,
            time: u64,
            flush: bool,
            keys in proptest::collection::vec((any::<bool>(), arb_key()), 0..50),
        ) {
            let secret = Secret::new(b"prop");
            let batch = if flush {
                Batch::flush_all(&source, seq, time)
            } else {
                Batch {
                    source,
                    seq,
                    commit_time_us: time,
                    kind: BatchKind::Deletes,
                    entries: keys
                        .into_iter()
                        .map(|(m, k)| (if m { EntryKind::Marker } else { EntryKind::Key }, k))
                        .collect(),
                }
            };
            let mut buf = Vec::new();
            batch.encode(&secret, CTX, &mut buf).unwrap();
            let (decoded, used) = Batch::decode(&buf, &secret, CTX).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(decoded, batch);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let secret = Secret::new(b"prop");
            let _ = Batch::decode(&bytes, &secret, CTX);
            let _ = Batch::decode(&bytes, &secret, KAFKA_CONTEXT);
            let _ = Ack::decode(&bytes, &secret, CTX);
            let _ = decode_auth(&bytes, &secret, &[0; NONCE_LEN]);
            let _ = decode_hello(&bytes);
            let session = Session { router_nonce: [0; NONCE_LEN], client_nonce: [1; NONCE_LEN] };
            let _ = verify_welcome(&bytes, &secret, &session);
            if bytes.len() >= HEADER_LEN {
                let _ = Batch::frame_len(bytes[..HEADER_LEN].try_into().unwrap());
            }
            if bytes.len() >= 4 {
                let _ = router_message_len(bytes[..4].try_into().unwrap(), HELLO_MAGIC);
            }
            // Also past the MAC: the body parser sees arbitrary authenticated bytes.
            let _ = parse_body(&bytes);
        }

        #[test]
        fn garbage_behind_valid_magics_never_panics(
            magic in 0usize..6,
            rest in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Random bytes rarely start with a magic; these do, so the paths past the
            // magic check see garbage too.
            let magics = [BATCH_MAGIC, ACK_MAGIC, HELLO_MAGIC, AUTH_MAGIC, WELCOME_MAGIC, REFUSAL_MAGIC];
            let mut bytes = magics[magic].to_vec();
            bytes.extend_from_slice(&rest);
            let secret = Secret::new(b"prop");
            let session = Session { router_nonce: [0; NONCE_LEN], client_nonce: [1; NONCE_LEN] };
            prop_assert!(!matches!(Batch::decode(&bytes, &secret, CTX), Ok(Some(_))));
            let _ = Ack::decode(&bytes, &secret, CTX);
            prop_assert!(!matches!(decode_auth(&bytes, &secret, &[0; NONCE_LEN]), Ok(Some(_))));
            let _ = decode_hello(&bytes);
            prop_assert!(verify_welcome(&bytes, &secret, &session).is_err());
        }
    }
}
