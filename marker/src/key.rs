//! Memcache key rules, as memcached's text protocol enforces them.
//!
//! Every component validates keys with this one function so that a key squeal accepts is a
//! key the router and memcached accept too: a disagreement would silently lose invalidations.

/// Longest key memcached accepts (`KEY_MAX_LENGTH`).
pub const MAX_KEY_LEN: usize = 250;

/// Why a key is not a legal memcache text-protocol key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {0} bytes, longer than {MAX_KEY_LEN}")]
    TooLong(usize),
    #[error("key contains a control character or space at byte {0}")]
    BadByte(usize),
}

/// Checks that `key` can travel in memcached's text protocol: 1..=250 bytes, no control
/// characters and no spaces (they would split the command line).
pub fn validate(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    match key.iter().position(|&b| b <= b' ' || b == 0x7f) {
        Some(i) => Err(KeyError::BadByte(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        assert_eq!(validate(b"user:42"), Ok(()));
        assert_eq!(validate(&[b'k'; 250]), Ok(()));
    }

    #[test]
    fn refuses_what_memcached_refuses() {
        assert_eq!(validate(b""), Err(KeyError::Empty));
        assert_eq!(validate(&[b'k'; 251]), Err(KeyError::TooLong(251)));
        assert_eq!(validate(b"a b"), Err(KeyError::BadByte(1)));
        assert_eq!(validate(b"a\r\n"), Err(KeyError::BadByte(1)));
        assert_eq!(validate(b"\x7f"), Err(KeyError::BadByte(0)));
    }
}
