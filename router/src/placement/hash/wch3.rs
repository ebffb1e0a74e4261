//! mcrouter's `WeightedCh3` placement (mcrouter/lib/WeightedCh3HashFunc.cpp): `furc_hash`
//! picks a server; the key keeps it if a 32-bit SpookyHash of the key falls below the
//! server's weight (a fraction in `[0, 1]`), otherwise the key is salted with a retry number
//! and tried again, up to 32 times. With every weight 1.0 it is `Ch3`; lowering one weight
//! moves only that server's share of keys, and only onto the others.

use super::{furc::furc_hash, spooky};

/// mcrouter's `kHashSeed` for the weight test.
const SEED: u32 = 0xface_2014;
/// mcrouter's `WeightedChHashFuncBase::kNumTries`.
const TRIES: usize = 32;
/// Longest salt: the decimal digits of a retry number.
const MAX_SALT: usize = 20;

/// The server index (`0..weights.len()`) of `key`; `weights` must be non-empty, each
/// in `[0, 1]` (the config checks both).
pub fn weighted_ch3(key: &[u8], weights: &[f64]) -> usize {
    let n = weights.len() as u32;
    let mut salted: Vec<u8> = Vec::new();
    let mut probe: &[u8] = key;
    let mut index = 0usize;
    for salt in 0..TRIES {
        index = furc_hash(probe, n) as usize;
        let p = spooky::hash32(probe, SEED) as u64;
        let w = (weights[index] * u32::MAX as f64) as u64;
        if p < w {
            return index;
        }
        // As mcrouter: the original key followed by the retry number's decimal digits,
        // least significant first.
        if salted.is_empty() {
            salted.reserve(key.len() + MAX_SALT);
        }
        salted.clear();
        salted.extend_from_slice(key);
        let mut s = salt;
        loop {
            salted.push(b'0' + (s % 10) as u8);
            s /= 10;
            if s == 0 {
                break;
            }
        }
        probe = &salted;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize, keys: usize, place: impl Fn(&[u8]) -> usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in 0..keys {
            c[place(i.to_string().as_bytes())] += 1;
        }
        c
    }

    /// mcrouter/lib/test/WeightedCh3HashFuncTest.cpp, `basic`: unit weights are Ch3.
    #[test]
    fn unit_weights_are_ch3() {
        assert_eq!(weighted_ch3(b"sample", &[1.0; 100]), 97);
        assert_eq!(weighted_ch3(b"sample", &[1.0]), 0);
        assert_eq!(weighted_ch3(b"", &[1.0; 100]), 72);
        let key: Vec<u8> = (0..256i32).map(|i| (i - 128) as u8).collect();
        assert_eq!(weighted_ch3(&key, &vec![1.0; 99_999]), 31015);
        let rev: Vec<u8> = key.iter().rev().copied().collect();
        assert_eq!(weighted_ch3(&rev, &vec![1.0; 99_999]), 67101);
    }

    /// `zeroWeight`: every try fails and the last try's index stands.
    #[test]
    fn zero_weights_give_up_on_a_valid_index() {
        assert_eq!(weighted_ch3(b"sample", &[0.0]), 0);
        assert_eq!(weighted_ch3(b"sample", &[0.0; 100]), 59);
        assert_eq!(weighted_ch3(b"", &[0.0; 100]), 45);
    }

    /// `reducedWeight` and `randomWeights`: the per-server counts mcrouter's test expects.
    #[test]
    fn weighted_counts_match_mcrouter() {
        assert_eq!(
            counts(3, 1000, |k| weighted_ch3(k, &[1.0, 1.0, 0.7])),
            vec![341, 371, 288]
        );
        assert_eq!(
            counts(3, 1000, |k| furc_hash(k, 3) as usize),
            vec![307, 342, 351]
        );
        let w = [
            0.429, 0.541, 0.117, 0.998, 0.283, 0.065, 0.109, 0.042, 0.676, 0.943,
        ];
        assert_eq!(
            counts(10, 10_000, |k| weighted_ch3(k, &w)),
            vec![1016, 1252, 288, 2354, 661, 195, 247, 122, 1668, 2197]
        );
    }

    /// Keys of servers whose weight stays 1.0 never move when another's weight drops.
    #[test]
    fn lowering_one_weight_moves_only_its_keys() {
        for i in 0..2000 {
            let k = format!("key:{i}");
            let ch3 = furc_hash(k.as_bytes(), 3) as usize;
            if ch3 != 2 {
                assert_eq!(weighted_ch3(k.as_bytes(), &[1.0, 1.0, 0.5]), ch3);
            }
        }
    }
}
