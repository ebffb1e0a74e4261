//! Remote markers: how a replica region avoids reading its lagging replica right after it
//! wrote to the primary ("Scaling Memcache at Facebook", §5).
//!
//! # Protocol
//!
//! Writer in a replica region, writing key `k`:
//!
//! 1. `set r_k` (the marker, see [`Markers::marker_key`]) in the **regional pool**, with a
//!    short TTL ([`Markers::ttl_secs`]) that bounds the harm if its clear is ever lost;
//! 2. write the **primary** database, with both `k` and `r_k` in the statement's annotation
//!    comment ([`Markers::annotation`]);
//! 3. `delete k` in the **local** cluster.
//!
//! Reader in that region, reading `k`:
//!
//! 1. `get k`; a hit is served as usual;
//! 2. on a miss, `get r_k` (through the router, which routes marker keys to the regional
//!    pool);
//! 3. if the marker exists, read the **primary** database (the local replica may not have
//!    the write yet) and do not fill the cache; otherwise read the local replica and fill the
//!    cache as usual ([`ReadFrom`]).
//!
//! The replica region's squeal reads the annotated transaction from its own replica's
//! binlog once replication has applied it, and deletes `k` in every cluster and `r_k` in the
//! regional pool: from then on the replica is as fresh as the primary for `k`, and readers
//! go back to it.
//!
//! # Other languages
//!
//! A marker key is the prefix followed by the key. If that would exceed 250 bytes, it is
//! the prefix, then the first `250 - prefix_len - 17` bytes of the key, then `#` and the
//! 16 lower-case hex digits of the key's 64-bit FNV-1a hash (offset basis
//! 0xcbf29ce484222325, prime 0x100000001b3), so every legal key has a legal marker.

use crate::annotation;
use crate::batch::EntryKind;
use crate::key::{self, KeyError, MAX_KEY_LEN};

/// The default marker prefix (the paper's `r_k`).
pub const DEFAULT_PREFIX: &str = "r_";
/// The default marker TTL: long enough to outlast normal replication lag, short enough that
/// a lost clear sends a key's reads to the primary for a minute at most.
pub const DEFAULT_TTL_SECS: u32 = 60;

/// The marker scheme a region uses; every party (applications, squeal, the router) must
/// use the same prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markers {
    prefix: String,
    ttl_secs: u32,
}

impl Default for Markers {
    fn default() -> Markers {
        Markers {
            prefix: DEFAULT_PREFIX.into(),
            ttl_secs: DEFAULT_TTL_SECS,
        }
    }
}

/// The one marker test: a key is a marker key of `prefix` when it starts with it.
fn has_marker_prefix(prefix: &[u8], key: &[u8]) -> bool {
    key.starts_with(prefix)
}

/// The marker prefix a source (squeal) tags batch entries with: keys starting with it are
/// remote markers, which the router deletes in the regional pool only ([`EntryKind::Marker`]);
/// `None` when the source has no markers (an empty `marker_prefix`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkerPrefix(pub Option<String>);

impl MarkerPrefix {
    /// `prefix`, or no markers when it is empty.
    pub fn new(prefix: &str) -> MarkerPrefix {
        MarkerPrefix((!prefix.is_empty()).then(|| prefix.to_string()))
    }

    /// How a batch carries `key`: as a marker or as a plain key.
    pub fn kind(&self, key: &[u8]) -> EntryKind {
        match &self.0 {
            Some(p) if has_marker_prefix(p.as_bytes(), key) => EntryKind::Marker,
            _ => EntryKind::Key,
        }
    }
}

/// Where a read that missed the cache must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// No marker: the local replica is fresh enough; fill the cache with what it returns.
    LocalReplica,
    /// A marker: a write from this region has not replicated yet; read the primary and do
    /// not fill the cache.
    Primary,
}

impl Markers {
    /// A scheme with `prefix` (1..=64 bytes, legal in a key) and `ttl_secs` (> 0).
    pub fn new(prefix: &str, ttl_secs: u32) -> Result<Markers, String> {
        if prefix.is_empty() || prefix.len() > 64 {
            return Err(format!("marker prefix {prefix:?} must be 1..=64 bytes"));
        }
        key::validate(prefix.as_bytes())
            .map_err(|e| format!("marker prefix {prefix:?} is not legal in a key: {e}"))?;
        if ttl_secs == 0 {
            return Err(
                "marker TTL must be positive: a marker without TTL could stick forever".into(),
            );
        }
        Ok(Markers {
            prefix: prefix.into(),
            ttl_secs,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn ttl_secs(&self) -> u32 {
        self.ttl_secs
    }

    /// True when `key` is a marker key of this scheme.
    pub fn is_marker(&self, key: &[u8]) -> bool {
        has_marker_prefix(self.prefix.as_bytes(), key)
    }

    /// The marker key for `key`.
    pub fn marker_key(&self, key: &[u8]) -> Result<Vec<u8>, KeyError> {
        key::validate(key)?;
        let mut out = Vec::with_capacity(MAX_KEY_LEN);
        out.extend_from_slice(self.prefix.as_bytes());
        if self.prefix.len() + key.len() <= MAX_KEY_LEN {
            out.extend_from_slice(key);
        } else {
            let keep = MAX_KEY_LEN - self.prefix.len() - 17;
            out.extend_from_slice(&key[..keep]);
            out.push(b'#');
            out.extend_from_slice(format!("{:016x}", fnv1a64(key)).as_bytes());
        }
        Ok(out)
    }

    /// The annotation comment for a write from a replica region: each key and its marker,
    /// so the replica region's squeal clears both.
    pub fn annotation(&self, keys: &[&[u8]]) -> Result<String, KeyError> {
        let mut all: Vec<Vec<u8>> = Vec::with_capacity(keys.len() * 2);
        for key in keys {
            all.push(key.to_vec());
            all.push(self.marker_key(key)?);
        }
        annotation::comment(all.iter().map(|k| k.as_slice()))
    }

    /// Step 3 of a read: where to read after a cache miss, given whether the marker exists.
    pub fn read_from(marker_present: bool) -> ReadFrom {
        if marker_present {
            ReadFrom::Primary
        } else {
            ReadFrom::LocalReplica
        }
    }
}

/// The cache operations the protocol needs, implemented over whatever memcache client the
/// application uses (through the router: marker keys route to the regional pool, cache keys
/// to the local cluster).
pub trait MarkerCache {
    type Error;
    /// `set <marker> 0 <ttl> 1` (any one-byte value).
    fn set_marker(&mut self, marker: &[u8], ttl_secs: u32) -> Result<(), Self::Error>;
    /// True when the marker key exists.
    fn marker_exists(&mut self, marker: &[u8]) -> Result<bool, Self::Error>;
    /// `delete <key>` in the local cluster.
    fn delete_local(&mut self, key: &[u8]) -> Result<(), Self::Error>;
}

/// Why a marker-protected write failed, and at which step.
#[derive(Debug)]
pub enum WriteError<E> {
    /// A key was not a legal memcache key: nothing was done.
    Key(KeyError),
    /// Setting a marker failed: the database was not written.
    Marker(E),
    /// The database write failed (markers may be left; their TTL bounds the harm).
    Write(E),
    /// The write committed but the local delete failed: the caller should retry the delete
    /// (squeal will delete the key anyway once replication applies the write).
    LocalDelete(E),
}

impl Markers {
    /// The write protocol for a replica region: set every key's marker, run `write` (which
    /// must put `annotation` in the statement it sends to the PRIMARY database and commit),
    /// then delete the keys locally.
    pub fn write<C: MarkerCache, T>(
        &self,
        cache: &mut C,
        keys: &[&[u8]],
        write: impl FnOnce(&str) -> Result<T, C::Error>,
    ) -> Result<T, WriteError<C::Error>> {
        let annotation = self.annotation(keys).map_err(WriteError::Key)?;
        for key in keys {
            let marker = self.marker_key(key).map_err(WriteError::Key)?;
            cache
                .set_marker(&marker, self.ttl_secs)
                .map_err(WriteError::Marker)?;
        }
        let written = write(&annotation).map_err(WriteError::Write)?;
        for key in keys {
            cache.delete_local(key).map_err(WriteError::LocalDelete)?;
        }
        Ok(written)
    }

    /// [`Markers::write`] for applications whose database client is async: the same three
    /// steps in the same order, awaiting the primary write between them.
    pub async fn write_async<C, T, F, Fut>(
        &self,
        cache: &mut C,
        keys: &[&[u8]],
        write: F,
    ) -> Result<T, WriteError<C::Error>>
    where
        C: MarkerCache,
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, C::Error>>,
    {
        let annotation = self.annotation(keys).map_err(WriteError::Key)?;
        for key in keys {
            let marker = self.marker_key(key).map_err(WriteError::Key)?;
            cache
                .set_marker(&marker, self.ttl_secs)
                .map_err(WriteError::Marker)?;
        }
        let written = write(annotation).await.map_err(WriteError::Write)?;
        for key in keys {
            cache.delete_local(key).map_err(WriteError::LocalDelete)?;
        }
        Ok(written)
    }

    /// The read protocol after a cache miss on `key`: where to read.
    pub fn after_miss<C: MarkerCache>(
        &self,
        cache: &mut C,
        key: &[u8],
    ) -> Result<ReadFrom, WriteError<C::Error>> {
        let marker = self.marker_key(key).map_err(WriteError::Key)?;
        let present = cache.marker_exists(&marker).map_err(WriteError::Marker)?;
        Ok(Markers::read_from(present))
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn marker_keys_follow_the_paper() {
        let m = Markers::default();
        assert_eq!(m.marker_key(b"user:42").unwrap(), b"r_user:42");
        assert!(m.is_marker(b"r_user:42"));
        assert!(!m.is_marker(b"user:42"));
    }

    #[test]
    fn long_keys_get_a_hashed_marker_that_is_still_legal() {
        let m = Markers::default();
        let long = vec![b'k'; 250];
        let marker = m.marker_key(&long).unwrap();
        assert_eq!(marker.len(), 250);
        assert!(key::validate(&marker).is_ok());
        let mut other = long.clone();
        other[249] = b'j';
        assert_ne!(
            marker,
            m.marker_key(&other).unwrap(),
            "the tail still counts"
        );
    }

    #[test]
    fn a_source_prefix_tags_markers_and_an_empty_one_tags_none() {
        let p = MarkerPrefix::new("r_");
        assert_eq!(p.kind(b"r_user:42"), EntryKind::Marker);
        assert_eq!(p.kind(b"user:42"), EntryKind::Key);
        assert_eq!(p.kind(b"r"), EntryKind::Key);
        let none = MarkerPrefix::new("");
        assert_eq!(none, MarkerPrefix(None));
        assert_eq!(none.kind(b"r_user:42"), EntryKind::Key);
        // The same test as the scheme's.
        let m = Markers::default();
        let marker = m.marker_key(b"user:42").unwrap();
        assert_eq!(
            MarkerPrefix::new(m.prefix()).kind(&marker),
            EntryKind::Marker
        );
    }

    #[test]
    fn bad_schemes_are_refused() {
        assert!(Markers::new("", 60).is_err());
        assert!(Markers::new("r ", 60).is_err());
        assert!(Markers::new("r_", 0).is_err());
        assert!(Markers::new("mk:", 30).is_ok());
    }

    #[test]
    fn the_annotation_carries_key_and_marker() {
        let m = Markers::default();
        let comment = m.annotation(&[b"user:1"]).unwrap();
        let keys: Vec<Vec<u8>> = annotation::parse(comment.as_bytes())
            .map(|k| k.unwrap().into_owned())
            .collect();
        assert_eq!(keys, vec![b"user:1".to_vec(), b"r_user:1".to_vec()]);
    }

    /// An in-memory cache that records the order of operations.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        markers: std::collections::HashSet<Vec<u8>>,
    }

    impl MarkerCache for Recorder {
        type Error = String;
        fn set_marker(&mut self, marker: &[u8], ttl: u32) -> Result<(), String> {
            self.log
                .push(format!("set {} ttl {ttl}", String::from_utf8_lossy(marker)));
            self.markers.insert(marker.to_vec());
            Ok(())
        }
        fn marker_exists(&mut self, marker: &[u8]) -> Result<bool, String> {
            Ok(self.markers.contains(marker))
        }
        fn delete_local(&mut self, key: &[u8]) -> Result<(), String> {
            self.log
                .push(format!("delete {}", String::from_utf8_lossy(key)));
            Ok(())
        }
    }

    #[test]
    fn the_write_protocol_runs_in_the_paper_order() {
        let m = Markers::default();
        let mut cache = Recorder::default();
        let mut seen = String::new();
        m.write(&mut cache, &[b"user:1"], |annotation| {
            seen = annotation.to_string();
            Ok::<_, String>(())
        })
        .unwrap();
        assert_eq!(cache.log, ["set r_user:1 ttl 60", "delete user:1"]);
        assert_eq!(seen, "/* squeal:inv user:1 r_user:1 */");
        assert_eq!(
            m.after_miss(&mut cache, b"user:1").unwrap(),
            ReadFrom::Primary
        );
        assert_eq!(
            m.after_miss(&mut cache, b"user:2").unwrap(),
            ReadFrom::LocalReplica
        );
    }

    #[test]
    fn a_failed_write_leaves_the_local_key_alone() {
        let m = Markers::default();
        let mut cache = Recorder::default();
        let r = m.write(&mut cache, &[b"user:1"], |_| {
            Err::<(), _>("db down".to_string())
        });
        assert!(matches!(r, Err(WriteError::Write(_))));
        assert_eq!(
            cache.log,
            ["set r_user:1 ttl 60"],
            "no local delete after a failed write"
        );
    }

    proptest! {
        #[test]
        fn every_legal_key_has_a_legal_distinct_marker(
            key in proptest::collection::vec(0x21u8..=0x7e, 1..=250),
        ) {
            let m = Markers::default();
            let marker = m.marker_key(&key).unwrap();
            prop_assert!(key::validate(&marker).is_ok());
            prop_assert!(m.is_marker(&marker));
        }
    }
}
