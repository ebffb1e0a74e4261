//! The invalidation batch wire format: what `squeal` sends to `squeal-router` (over TCP, or
//! as a Kafka message value) and what the router answers.
//!
//! A batch is authenticated with HMAC-SHA256 over a secret both sides read from their
//! configs: the router deletes keys on anyone's behalf, so an unauthenticated frame must
//! never cause a delete. Replaying a captured batch only repeats deletes, which are
//! idempotent, so frames carry no nonce.
//!
//! ```text
//! batch frame                              ack frame (router -> squeal)
//!   magic    b"SQB1"                         magic    b"SQA1"
//!   body_len u32 big-endian                  seq      u64
//!   body     body_len bytes                  status   u8  (0 applied, 1 rejected)
//!   mac      32 bytes HMAC-SHA256(secret,    mac      32 bytes HMAC-SHA256(secret,
//!            magic | body_len | body)                 magic | seq | status)
//!
//! body
//!   version        u8 = 1
//!   source_len     u8, then source bytes (UTF-8: which squeal, e.g. "db1-primary")
//!   seq            u64  per-source sequence number, increasing
//!   commit_time_us u64  commit time of the newest transaction, µs since the Unix epoch
//!   count          u32  number of entries
//!   entries        count × (kind u8, key_len u8, key bytes)
//!                  kind 0: a cache key, deleted in every front-end cluster
//!                  kind 1: a remote-marker key, deleted in the regional pool
//! ```
//!
//! Integers are big-endian. Keys obey [`crate::key::validate`].

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::key::{self, KeyError};

/// First four bytes of a batch frame.
pub const BATCH_MAGIC: &[u8; 4] = b"SQB1";
/// First four bytes of an ack frame.
pub const ACK_MAGIC: &[u8; 4] = b"SQA1";
/// Length of the HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Bytes before the body: magic and length.
pub const HEADER_LEN: usize = 8;
/// Length of a whole ack frame.
pub const ACK_LEN: usize = 4 + 8 + 1 + MAC_LEN;
/// Largest body a receiver accepts: a sender splits bigger batches, and a receiver must
/// not allocate what a garbage length field claims.
pub const MAX_BODY_LEN: usize = 4 << 20;

const VERSION: u8 = 1;

type HmacSha256 = Hmac<Sha256>;

/// What an entry of a batch asks the router to delete, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A cache key: deleted in every front-end cluster of the region.
    Key = 0,
    /// A remote-marker key: deleted in the regional pool.
    Marker = 1,
}

/// One batch of invalidations from one squeal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Which squeal sent it; sequence numbers are per source.
    pub source: String,
    /// Increasing per source; a retried batch keeps its number, so duplicates are visible.
    pub seq: u64,
    /// Commit time of the newest transaction in the batch (µs since the Unix epoch), so the
    /// router can measure commit-to-delete latency.
    pub commit_time_us: u64,
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

/// Why bytes are not a valid frame. Any of these closes the connection: after a bad frame
/// the stream cannot be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic {0:02x?}: not a squeal frame")]
    BadMagic([u8; 4]),
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

impl Batch {
    /// Appends the encoded, authenticated frame to `out`. Keys must already be valid; an
    /// invalid one is an error here rather than a rejected frame at the router.
    pub fn encode(&self, secret: &Secret, out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(BATCH_MAGIC);
        out.extend_from_slice(&[0; 4]);
        out.push(VERSION);
        let source = self.source.as_bytes();
        let source_len = u8::try_from(source.len())
            .map_err(|_| WireError::Malformed("source over 255 bytes"))?;
        out.push(source_len);
        out.extend_from_slice(source);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.commit_time_us.to_be_bytes());
        let count = u32::try_from(self.entries.len())
            .map_err(|_| WireError::Malformed("too many entries"))?;
        out.extend_from_slice(&count.to_be_bytes());
        for (index, (kind, key)) in self.entries.iter().enumerate() {
            key::validate(key).map_err(|error| WireError::BadKey { index, error })?;
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
        let tag = secret.tag(&[&out[start..]]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Bytes one entry adds to a frame, so a sender can bound frames before encoding.
    pub fn entry_len(key: &[u8]) -> usize {
        2 + key.len()
    }

    /// Bytes a frame takes beyond its entries.
    pub fn overhead(source: &str) -> usize {
        HEADER_LEN + 1 + 1 + source.len() + 8 + 8 + 4 + MAC_LEN
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
    /// otherwise the batch and how many bytes it took. The MAC is checked before the body
    /// is parsed, so unauthenticated bytes never reach the parser.
    pub fn decode(buf: &[u8], secret: &Secret) -> Result<Option<(Batch, usize)>, WireError> {
        if buf.len() < HEADER_LEN {
            // Reject a wrong magic as soon as it is visible, not after 4 MB of garbage.
            let seen = buf.len().min(4);
            if buf[..seen] != BATCH_MAGIC[..seen] {
                return Err(WireError::BadMagic(magic_of(buf)));
            }
            return Ok(None);
        }
        if &buf[..4] != BATCH_MAGIC {
            return Err(WireError::BadMagic(magic_of(buf)));
        }
        let body_len = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
        if body_len > MAX_BODY_LEN {
            return Err(WireError::TooLarge(body_len));
        }
        let total = HEADER_LEN + body_len + MAC_LEN;
        if buf.len() < total {
            return Ok(None);
        }
        let (framed, tag) = buf[..total].split_at(HEADER_LEN + body_len);
        secret.verify(&[framed], tag)?;
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
    let source_len = r.u8("truncated before source")? as usize;
    let source = std::str::from_utf8(r.take(source_len, "truncated source")?)
        .map_err(|_| WireError::Malformed("source is not UTF-8"))?
        .to_string();
    let seq = r.u64("truncated before seq")?;
    let commit_time_us = r.u64("truncated before commit time")?;
    let count = r.u32("truncated before count")? as usize;
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
        entries,
    })
}

impl Ack {
    pub fn encode(&self, secret: &Secret) -> [u8; ACK_LEN] {
        let mut out = [0; ACK_LEN];
        out[..4].copy_from_slice(ACK_MAGIC);
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12] = self.status as u8;
        let tag = secret.tag(&[&out[..13]]);
        out[13..].copy_from_slice(&tag);
        out
    }

    /// Decodes one ack from the front of `buf` (`Ok(None)`: need more bytes). Acks are
    /// authenticated too: a forged ack would make squeal checkpoint past undelivered keys.
    pub fn decode(buf: &[u8], secret: &Secret) -> Result<Option<(Ack, usize)>, WireError> {
        if buf.len() < ACK_LEN {
            let seen = buf.len().min(4);
            if buf[..seen] != ACK_MAGIC[..seen] {
                return Err(WireError::BadMagic(magic_of(buf)));
            }
            return Ok(None);
        }
        if &buf[..4] != ACK_MAGIC {
            return Err(WireError::BadMagic(magic_of(buf)));
        }
        secret.verify(&[&buf[..13]], &buf[13..ACK_LEN])?;
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

    fn batch() -> Batch {
        Batch {
            source: "db1".into(),
            seq: 42,
            commit_time_us: 1_700_000_000_000_000,
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
        batch().encode(&secret, &mut buf).unwrap();
        let expected =
            Batch::overhead("db1") + Batch::entry_len(b"user:1") + Batch::entry_len(b"r_user:1");
        assert_eq!(buf.len(), expected);
        buf.extend_from_slice(b"SQB1"); // the start of the next frame stays unread
        let (decoded, used) = Batch::decode(&buf, &secret).unwrap().unwrap();
        assert_eq!(decoded, batch());
        assert_eq!(used, expected);
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let secret = Secret::new(b"k");
        let mut buf = Vec::new();
        batch().encode(&secret, &mut buf).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(
                Batch::decode(&buf[..cut], &secret),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn wrong_secret_or_tampering_is_rejected() {
        let mut buf = Vec::new();
        batch().encode(&Secret::new(b"right"), &mut buf).unwrap();
        assert_eq!(
            Batch::decode(&buf, &Secret::new(b"wrong")),
            Err(WireError::BadMac)
        );
        let secret = Secret::new(b"right");
        for i in HEADER_LEN..buf.len() {
            let mut tampered = buf.clone();
            tampered[i] ^= 0x01;
            assert_eq!(
                Batch::decode(&tampered, &secret),
                Err(WireError::BadMac),
                "byte {i}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_early() {
        let secret = Secret::new(b"k");
        assert!(matches!(
            Batch::decode(b"get foo\r\n", &secret),
            Err(WireError::BadMagic(_))
        ));
        assert!(matches!(
            Batch::decode(b"G", &secret),
            Err(WireError::BadMagic(_))
        ));
        let mut huge = BATCH_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Batch::decode(&huge, &secret),
            Err(WireError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn an_authenticated_but_invalid_key_is_refused() {
        // A sender with the secret but a bug: the router must still not send a broken
        // command line to memcached.
        let secret = Secret::new(b"k");
        let mut good = Vec::new();
        let mut b = batch();
        b.entries = vec![(EntryKind::Key, b"abc".to_vec())];
        b.encode(&secret, &mut good).unwrap();
        // Turn "abc" into "a c" and re-authenticate.
        let body_end = good.len() - MAC_LEN;
        good[body_end - 2] = b' ';
        good.truncate(body_end);
        let tag = secret.tag(&[&good]);
        good.extend_from_slice(&tag);
        assert!(matches!(
            Batch::decode(&good, &secret),
            Err(WireError::BadKey { index: 0, .. })
        ));
        b.entries = vec![(EntryKind::Key, b"bad key".to_vec())];
        assert!(b.encode(&secret, &mut Vec::new()).is_err());
    }

    #[test]
    fn secrets_load_from_exactly_one_source() {
        let dir = std::env::temp_dir().join(format!("squeal-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        batch()
            .encode(&Secret::from_config(Some("s3cret"), None).unwrap(), &mut a)
            .unwrap();
        batch()
            .encode(&Secret::from_config(None, Some(&dir)).unwrap(), &mut b)
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
        let bytes = ack.encode(&secret);
        assert_eq!(Ack::decode(&bytes, &secret), Ok(Some((ack, ACK_LEN))));
        assert_eq!(Ack::decode(&bytes[..10], &secret), Ok(None));
        assert_eq!(
            Ack::decode(&bytes, &Secret::new(b"x")),
            Err(WireError::BadMac)
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
            keys in proptest::collection::vec((any::<bool>(), arb_key()), 0..50),
        ) {
            let secret = Secret::new(b"prop");
            let batch = Batch {
                source,
                seq,
                commit_time_us: time,
                entries: keys
                    .into_iter()
                    .map(|(m, k)| (if m { EntryKind::Marker } else { EntryKind::Key }, k))
                    .collect(),
            };
            let mut buf = Vec::new();
            batch.encode(&secret, &mut buf).unwrap();
            let (decoded, used) = Batch::decode(&buf, &secret).unwrap().unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(decoded, batch);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let secret = Secret::new(b"prop");
            let _ = Batch::decode(&bytes, &secret);
            let _ = Ack::decode(&bytes, &secret);
            // Also past the MAC: the body parser sees arbitrary authenticated bytes.
            let _ = parse_body(&bytes);
        }
    }
}
