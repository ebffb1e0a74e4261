//! The memcache text lines Squeal's parties write and read themselves (the invalidation
//! deletes of `squeal` and of the router's fan-out, the warm-up tool's copy, the router's
//! routes reading a value back), and the one rule for what an `mg` reply holds:
//!
//! **a lease placeholder or a stale item is a miss, never a value.** memcached marks an
//! item that a reader won the lease to fill with `W`, one another reader is filling with
//! `Z`, and one marked stale (invalidated, kept for lease holders) with `X`. Such an item is
//! not a settled value: serving it, or copying it into another layer, could resurrect what
//! an invalidation removed.

/// `delete <key>\r\n`.
pub fn delete(key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"delete ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// `add <key> <flags> <exptime> <len>\r\n<value>\r\n`.
pub fn add(key: &[u8], flags: u32, exptime: i64, value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"add ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" {flags} {exptime} {}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `mg <key> <flags>\r\n` (flags as memcached reads them, e.g. `v t f`).
pub fn meta_get(key: &[u8], flags: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.push(b' ');
    out.extend_from_slice(flags.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What a `delete` was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReply {
    Deleted,
    NotFound,
    /// `CLIENT_ERROR ...`: the key itself was refused; sending it again cannot help.
    ClientError,
    Other,
}

impl DeleteReply {
    /// The reply to one `delete`, its line without `\r\n`.
    pub fn parse(line: &[u8]) -> DeleteReply {
        match line {
            b"DELETED" => DeleteReply::Deleted,
            b"NOT_FOUND" => DeleteReply::NotFound,
            _ if line.starts_with(b"CLIENT_ERROR") => DeleteReply::ClientError,
            _ => DeleteReply::Other,
        }
    }

    /// `DELETED` or `NOT_FOUND`: either way the key is no longer cached.
    pub fn is_gone(self) -> bool {
        matches!(self, DeleteReply::Deleted | DeleteReply::NotFound)
    }
}

/// What a storage command (`set`, `add`) was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreReply {
    Stored,
    NotStored,
    Exists,
    Other,
}

impl StoreReply {
    /// The reply to one storage command, its line without `\r\n`.
    pub fn parse(line: &[u8]) -> StoreReply {
        match line {
            b"STORED" => StoreReply::Stored,
            b"NOT_STORED" => StoreReply::NotStored,
            b"EXISTS" => StoreReply::Exists,
            _ => StoreReply::Other,
        }
    }
}

/// The header of an `mg` reply that found an item: `VA <len> <flags...>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaValue {
    /// Length of the value that follows the line (then `\r\n`).
    pub len: usize,
    /// Client flags (`f`), if asked.
    pub flags: Option<u32>,
    /// Remaining TTL in seconds (`t`; -1: never expires), if asked.
    pub ttl: Option<i64>,
    /// CAS token (`c`), if asked.
    pub cas: Option<u64>,
    /// A lease placeholder or a stale item (`W`, `Z`, `X`): see the module doc.
    pub unsettled: bool,
}

impl MetaValue {
    /// The lease rule: only a settled item is a value; anything else reads as a miss.
    pub fn is_value(&self) -> bool {
        !self.unsettled
    }
}

/// An `mg` reply line, without `\r\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaGet {
    /// `EN`.
    Miss,
    /// `VA ...`; its value follows (read it even when it is no value, [`MetaValue::is_value`]).
    Found(MetaValue),
}

/// True for the flags that mark an item as unsettled (a lease placeholder or stale).
pub fn is_unsettled_flag(token: &[u8]) -> bool {
    matches!(token, b"W" | b"Z" | b"X")
}

impl MetaGet {
    /// Reads an `mg` reply line; `None` for anything else (an error, a malformed line).
    pub fn parse(line: &[u8]) -> Option<MetaGet> {
        let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
        match toks.next()? {
            b"EN" => return Some(MetaGet::Miss),
            b"VA" => {}
            _ => return None,
        }
        let mut v = MetaValue {
            len: number(toks.next()?)?,
            flags: None,
            ttl: None,
            cas: None,
            unsettled: false,
        };
        for t in toks {
            if is_unsettled_flag(t) {
                v.unsettled = true;
                continue;
            }
            match t[0] {
                b'f' => v.flags = number(&t[1..]),
                b't' => v.ttl = number(&t[1..]),
                b'c' => v.cas = number(&t[1..]),
                _ => {}
            }
        }
        Some(MetaGet::Found(v))
    }
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_memcached_text_commands() {
        let mut out = Vec::new();
        delete(b"user:1", &mut out);
        add(b"k", 5, 60, b"abc", &mut out);
        meta_get(b"k", "v t f", &mut out);
        assert_eq!(
            out,
            b"delete user:1\r\nadd k 5 60 3\r\nabc\r\nmg k v t f\r\n".to_vec()
        );
    }

    #[test]
    fn replies_are_classified() {
        assert!(DeleteReply::parse(b"DELETED").is_gone());
        assert!(DeleteReply::parse(b"NOT_FOUND").is_gone());
        assert_eq!(
            DeleteReply::parse(b"CLIENT_ERROR bad command line format"),
            DeleteReply::ClientError
        );
        assert!(!DeleteReply::parse(b"SERVER_ERROR out of memory").is_gone());
        assert_eq!(StoreReply::parse(b"STORED"), StoreReply::Stored);
        assert_eq!(StoreReply::parse(b"NOT_STORED"), StoreReply::NotStored);
        assert_eq!(StoreReply::parse(b"EXISTS"), StoreReply::Exists);
        assert_eq!(StoreReply::parse(b"SERVER_ERROR x"), StoreReply::Other);
    }

    #[test]
    fn lease_placeholders_and_stale_items_are_no_values() {
        assert_eq!(MetaGet::parse(b"EN"), Some(MetaGet::Miss));
        let Some(MetaGet::Found(v)) = MetaGet::parse(b"VA 3 f7 t-1 c9") else {
            panic!("a value");
        };
        assert_eq!(
            (v.len, v.flags, v.ttl, v.cas),
            (3, Some(7), Some(-1), Some(9))
        );
        assert!(v.is_value());
        for flag in ["W", "Z", "X"] {
            let line = format!("VA 3 f7 {flag} t10");
            let Some(MetaGet::Found(v)) = MetaGet::parse(line.as_bytes()) else {
                panic!("a header");
            };
            assert!(!v.is_value(), "{flag}");
            assert_eq!(v.len, 3, "the value still follows and must be read");
        }
        assert_eq!(MetaGet::parse(b"VA x"), None);
        assert_eq!(MetaGet::parse(b"SERVER_ERROR busy"), None);
    }
}
