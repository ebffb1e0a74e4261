//! The cold-cluster hold-off, shared by the router's warm-up route, its invalidation fan-out
//! and the `squeal-warmup` tool.
//!
//! While a cluster is being warmed, a value read from the warm cluster may predate an
//! invalidation the warm cluster has not seen yet; writing it back with `add` would
//! resurrect a deleted value. So a delete in a cold cluster does not remove the key: it
//! replaces it with a **tombstone**, an empty item with the client flags
//! [`TOMBSTONE_FLAGS`] and a TTL of the hold-off (two seconds by default):
//!
//! ```text
//! set <key> 1397836872 2 0\r\n\r\n
//! ```
//!
//! - the `set` removes whatever value was there (it is the delete);
//! - for two seconds the key exists, so every `add` of it fails (`NOT_STORED`), from any
//!   router instance or warm-up tool: stock memcached enforces the hold-off;
//! - readers going through the router treat a tombstone as a miss; after the TTL it is gone.
//!
//! A plain `set` from an application (a write after reading the database) replaces the
//! tombstone, as it should.

/// Client flags that mark a tombstone: "SQLH" in ASCII, unlikely to collide with an
/// application's flags.
pub const TOMBSTONE_FLAGS: u32 = u32::from_be_bytes(*b"SQLH");

/// The default hold-off, from the paper.
pub const DEFAULT_HOLDOFF_SECS: u32 = 2;

/// The text-protocol command that deletes `key` in a cold cluster and holds off `add`s.
pub fn tombstone_command(key: &[u8], holdoff_secs: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(format!(" {TOMBSTONE_FLAGS} {holdoff_secs} 0\r\n\r\n").as_bytes());
}

/// True when an item with these flags and this value length is a tombstone.
pub fn is_tombstone(flags: u32, value_len: usize) -> bool {
    flags == TOMBSTONE_FLAGS && value_len == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_a_plain_set_of_an_empty_value() {
        let mut out = Vec::new();
        tombstone_command(b"user:1", 2, &mut out);
        assert_eq!(out, b"set user:1 1397836872 2 0\r\n\r\n");
        assert!(is_tombstone(TOMBSTONE_FLAGS, 0));
        assert!(!is_tombstone(TOMBSTONE_FLAGS, 1));
        assert!(!is_tombstone(0, 0));
    }
}
