//! Numbers as memcached 1.6 reads them (`safe_strtol`, `safe_strtoul`, `safe_strtoull` in
//! its `util.c`), so the router accepts exactly the numbers memcached accepts and means the
//! same value by them: C's `strtol` family skips leading whitespace, takes a sign, stops at
//! the first non-digit, and memcached then accepts the token only if that is its end or a
//! whitespace byte. memcached stores the `long` result in 32 bits without a range check,
//! so `4294967297` as an exptime means 1 there, and here.
//!
//! The router always rebuilds the numbers it sends to a backend from these values, so a
//! backend never has to agree with the client's spelling (`+5`, `05`, `5\t`).

/// C's `isspace` in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `strtoull`/`strtoll` core: `(negative, magnitude)` and whether the token ends legally
/// after the digits. `None`: no digits, or the magnitude does not fit in 64 bits (ERANGE).
fn scan(tok: &[u8]) -> Option<(bool, u64)> {
    let mut i = 0;
    while i < tok.len() && is_space(tok[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < tok.len() && (tok[i] == b'+' || tok[i] == b'-') {
        neg = tok[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < tok.len() && tok[i].is_ascii_digit() {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(tok[i] - b'0')))
        {
            Some(n) => v = n,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start || overflow {
        return None;
    }
    // memcached: `isspace(*endptr) || (*endptr == '\0' && endptr != str)`.
    if i < tok.len() && !is_space(tok[i]) {
        return None;
    }
    Some((neg, v))
}

/// `safe_strtol`: a signed 64-bit `strtol`, kept in 32 bits as memcached keeps it.
pub fn strtol(tok: &[u8]) -> Option<i32> {
    let (neg, mag) = scan(tok)?;
    let v: i64 = if neg {
        if mag > i64::MAX as u64 + 1 {
            return None; // ERANGE
        }
        (mag as i64).wrapping_neg()
    } else {
        i64::try_from(mag).ok()?
    };
    Some(v as i32)
}

/// `safe_strtoull`: unsigned, a negative spelling wraps unless it then looks negative.
pub fn strtoull(tok: &[u8]) -> Option<u64> {
    let (neg, mag) = scan(tok)?;
    let v = if neg { mag.wrapping_neg() } else { mag };
    if (v as i64) < 0 && tok.contains(&b'-') {
        return None;
    }
    Some(v)
}

/// `safe_strtoul` into a `uint32_t`: as `strtoull`, then cut to 32 bits.
pub fn strtoul(tok: &[u8]) -> Option<u32> {
    strtoull(tok).map(|v| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_memcached_reads_them() {
        assert_eq!(strtol(b"5"), Some(5));
        assert_eq!(strtol(b"+5"), Some(5));
        assert_eq!(strtol(b"-1"), Some(-1));
        assert_eq!(strtol(b"\t7"), Some(7));
        assert_eq!(strtol(b"7\tjunk"), Some(7));
        assert_eq!(strtol(b"7x"), None);
        assert_eq!(strtol(b""), None);
        assert_eq!(strtol(b"+"), None);
        assert_eq!(strtol(b"4294967297"), Some(1));
        assert_eq!(strtol(b"99999999999999999999"), None);
        assert_eq!(strtoul(b"+1"), Some(1));
        assert_eq!(strtoul(b"4294967296"), Some(0));
        assert_eq!(strtoul(b"-1"), None);
        assert_eq!(strtoull(b"-0"), Some(0));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
    }
}
