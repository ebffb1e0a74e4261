//! mcrouter's `Ch3` placement: `furc_hash` (mcrouter/lib/fbi/hash.c), a stateless
//! consistent hash over `n` servers built on MurmurHash64A. The same key lands on the same
//! server index as in an mcrouter `PoolRoute` with `"hash": "Ch3"`, so a fleet can leave
//! mcrouter without a cold cache. Growing a pool from `n` to `n + k` servers moves a key
//! only onto one of the new servers.

const SEED: u64 = 4_193_360_111;
const MAX_TRIES: u32 = 32;
const FURC_SHIFT: u32 = 23;
const M: u64 = 0xc6a4a7935bd1e995;
const R: u32 = 47;

/// MurmurHash64A (little-endian reads, as on the x86/ARM hosts mcrouter runs on).
fn murmur64a(key: &[u8], seed: u64) -> u64 {
    let mut h = seed ^ (key.len() as u64).wrapping_mul(M);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut k = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// MurmurHash64A of one `u64` with the furc seed: the bitstream's next word.
fn rehash(k: u64) -> u64 {
    let mut h = SEED ^ 8u64.wrapping_mul(M);
    let mut k = k.wrapping_mul(M);
    k ^= k >> R;
    k = k.wrapping_mul(M);
    h ^= k;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The key's pseudorandom bitstream, words computed as they are needed.
struct Bits<'k> {
    key: &'k [u8],
    words: Vec<u64>,
}

impl Bits<'_> {
    fn get(&mut self, idx: u32) -> u32 {
        let ord = (idx >> 6) as usize;
        while self.words.len() <= ord {
            let next = match self.words.last() {
                None => murmur64a(self.key, SEED),
                Some(&w) => rehash(w),
            };
            self.words.push(next);
        }
        ((self.words[ord] >> (idx & 0x3f)) & 1) as u32
    }
}

/// The server index (`0..m`) of `key` in a pool of `m` servers.
pub fn furc_hash(key: &[u8], m: u32) -> u32 {
    if m <= 1 {
        return 0;
    }
    let mut bits = Bits {
        key,
        words: Vec::with_capacity(8),
    };
    let mut d = 32 - (m - 1).leading_zeros();
    let mut a = d;
    for _ in 0..MAX_TRIES {
        while bits.get(a) == 0 {
            d -= 1;
            if d == 0 {
                return 0;
            }
            a = d;
        }
        a += FURC_SHIFT;
        let mut num: u32 = 1;
        for _ in 0..d - 1 {
            num = (num << 1) | bits.get(a);
            a += FURC_SHIFT;
        }
        if num < m {
            return num;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values from mcrouter's own test (mcrouter/lib/fbi/test/hash_test.cpp).
    #[test]
    fn matches_mcrouters_golden_values() {
        let golden: &[(&str, u32, u32)] = &[
            ("abc", 1, 0),
            ("abc", 7, 5),
            ("abc", 16, 15),
            ("abc", 50, 47),
            ("abc", 100, 69),
            ("abc", 1000, 985),
            ("abc", 1000000, 391441),
            ("ab", 50, 35),
            ("ab", 1000000, 103282),
            ("user:12345:profile", 2, 1),
            ("user:12345:profile", 5, 4),
            ("user:12345:profile", 16, 10),
            ("user:12345:profile", 1000, 712),
            ("user:12345:profile", 1000000, 368844),
            ("user:67890:timeline", 7, 5),
            ("user:67890:timeline", 100000, 86163),
            ("cache:item:999999", 3, 2),
            ("cache:item:999999", 500, 184),
            ("cache:item:999999", 1000000, 180793),
            ("mcrouter:pool:regional:0002", 1000000, 589635),
            ("", 2, 1),
            ("", 7, 6),
            ("", 1000000, 407687),
        ];
        for &(key, m, want) in golden {
            assert_eq!(
                furc_hash(key.as_bytes(), m),
                want,
                "furc_hash({key:?}, {m})"
            );
        }
        for (m, want) in [
            (4, 0),
            (8, 7),
            (32, 22),
            (128, 115),
            (1024, 950),
            (4096, 3375),
        ] {
            assert_eq!(furc_hash(b"key0", m), want, "furc_hash(\"key0\", {m})");
        }
    }

    #[test]
    fn growing_a_pool_only_moves_keys_to_new_servers() {
        for i in 0..2000 {
            let key = format!("k{i}");
            let small = furc_hash(key.as_bytes(), 5);
            let big = furc_hash(key.as_bytes(), 8);
            assert!(big == small || big >= 5, "{key}: {small} -> {big}");
        }
    }
}
