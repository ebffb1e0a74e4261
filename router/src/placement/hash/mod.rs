//! Key hash functions, bit-for-bit as twemproxy (and libmemcached) compute them, so a
//! fleet moving from twemproxy to the router keeps every key on the same server.

pub mod furc;
pub mod ketama;
pub mod spooky;
pub mod wch3;

use md5::{Digest, Md5};

/// twemproxy's `hash:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashFn {
    Md5,
    Crc32,
    Crc32a,
    Fnv1x64,
    Fnv1a64,
    Fnv1x32,
    Fnv1a32,
    OneAtATime,
}

impl HashFn {
    pub const NAMES: &'static [&'static str] = &[
        "md5",
        "crc32",
        "crc32a",
        "fnv1_64",
        "fnv1a_64",
        "fnv1_32",
        "fnv1a_32",
        "one_at_a_time",
    ];

    pub fn from_name(name: &str) -> Option<HashFn> {
        Some(match name {
            "md5" => HashFn::Md5,
            "crc32" => HashFn::Crc32,
            "crc32a" => HashFn::Crc32a,
            "fnv1_64" => HashFn::Fnv1x64,
            "fnv1a_64" => HashFn::Fnv1a64,
            "fnv1_32" => HashFn::Fnv1x32,
            "fnv1a_32" => HashFn::Fnv1a32,
            "one_at_a_time" => HashFn::OneAtATime,
            _ => return None,
        })
    }

    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashFn::Md5 => {
                let d = md5(key);
                u32::from_le_bytes([d[0], d[1], d[2], d[3]])
            }
            HashFn::Crc32 => (crc32(key) >> 16) & 0x7fff,
            HashFn::Crc32a => crc32(key),
            HashFn::Fnv1x64 => {
                let mut h: u64 = 0xcbf29ce484222325;
                for &b in key {
                    h = h.wrapping_mul(0x100000001b3);
                    h ^= signed(b) as u64;
                }
                h as u32
            }
            HashFn::Fnv1a64 => {
                // twemproxy truncates the 64-bit basis and prime to 32 bits.
                let mut h: u32 = 0xcbf29ce484222325u64 as u32;
                for &b in key {
                    h ^= signed(b);
                    h = h.wrapping_mul(0x100000001b3u64 as u32);
                }
                h
            }
            HashFn::Fnv1x32 => {
                let mut h: u32 = 2166136261;
                for &b in key {
                    h = h.wrapping_mul(16777619);
                    h ^= signed(b);
                }
                h
            }
            HashFn::Fnv1a32 => {
                let mut h: u32 = 2166136261;
                for &b in key {
                    h ^= signed(b);
                    h = h.wrapping_mul(16777619);
                }
                h
            }
            HashFn::OneAtATime => {
                let mut h: u32 = 0;
                for &b in key {
                    h = h.wrapping_add(signed(b));
                    h = h.wrapping_add(h << 10);
                    h ^= h >> 6;
                }
                h = h.wrapping_add(h << 3);
                h ^= h >> 11;
                h.wrapping_add(h << 15)
            }
        }
    }
}

/// C's `char` is signed on x86: twemproxy sign-extends bytes above 0x7f.
fn signed(b: u8) -> u32 {
    b as i8 as i32 as u32
}

pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb88320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592; first four bytes little-endian.
        assert_eq!(HashFn::Md5.hash(b"hello"), 0x2a40415d);
        assert_eq!(HashFn::Crc32a.hash(b"123456789"), 0xcbf43926);
        assert_eq!(HashFn::Fnv1a32.hash(b"a"), 0xe40c292c);
        assert_eq!(HashFn::Fnv1x32.hash(b"a"), 0x050c5d7e);
    }
}
