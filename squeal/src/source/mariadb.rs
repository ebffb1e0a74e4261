//! MariaDB's own binlog events, decoded from their raw bodies (mysql_common hands them over
//! as unknown events): ANNOTATE_ROWS (160), BINLOG_CHECKPOINT (161), GTID (162) and
//! GTID_LIST (163).

use std::fmt;

pub const ANNOTATE_ROWS: u8 = 160;
pub const BINLOG_CHECKPOINT: u8 = 161;
pub const GTID: u8 = 162;
pub const GTID_LIST: u8 = 163;
pub const START_ENCRYPTION: u8 = 164;
/// Compressed query / rows events (`log_bin_compress`), 165..=171.
pub const COMPRESSED_FIRST: u8 = 165;
pub const COMPRESSED_LAST: u8 = 171;

/// A malformed MariaDB event body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MariaDB {event} event: {what}")]
pub struct BadEvent {
    pub event: &'static str,
    pub what: &'static str,
}

fn bad(event: &'static str, what: &'static str) -> BadEvent {
    BadEvent { event, what }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

/// One MariaDB GTID: domain-server-sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

/// A GTID event: starts an event group (transaction), or a standalone statement (DDL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GtidEvent {
    pub gtid: Gtid,
    pub flags: u8,
}

impl GtidEvent {
    pub const FL_STANDALONE: u8 = 1;

    /// `body` is the event data after the common header; `server` comes from the header.
    pub fn parse(body: &[u8], server: u32) -> Result<GtidEvent, BadEvent> {
        let seq = u64_at(body, 0).ok_or(bad("GTID", "shorter than 13 bytes"))?;
        let domain = u32_at(body, 8).ok_or(bad("GTID", "shorter than 13 bytes"))?;
        let flags = *body.get(12).ok_or(bad("GTID", "shorter than 13 bytes"))?;
        Ok(GtidEvent {
            gtid: Gtid {
                domain,
                server,
                seq,
            },
            flags,
        })
    }

    pub fn standalone(&self) -> bool {
        self.flags & Self::FL_STANDALONE != 0
    }
}

/// GTID_LIST: the binlog state at the start of a file.
pub fn parse_gtid_list(body: &[u8]) -> Result<Vec<Gtid>, BadEvent> {
    let count = u32_at(body, 0).ok_or(bad("GTID_LIST", "no count"))? & 0x0fff_ffff;
    let count = count as usize;
    if body.len() < 4 + count.saturating_mul(16) {
        return Err(bad("GTID_LIST", "shorter than its count"));
    }
    Ok((0..count)
        .map(|i| {
            let at = 4 + i * 16;
            Gtid {
                domain: u32_at(body, at).expect("length checked"),
                server: u32_at(body, at + 4).expect("length checked"),
                seq: u64_at(body, at + 8).expect("length checked"),
            }
        })
        .collect())
}

/// BINLOG_CHECKPOINT: the oldest binlog file still needed for crash recovery.
pub fn parse_binlog_checkpoint(body: &[u8]) -> Result<&[u8], BadEvent> {
    let len = u32_at(body, 0).ok_or(bad("BINLOG_CHECKPOINT", "no length"))? as usize;
    body.get(4..4 + len)
        .ok_or(bad("BINLOG_CHECKPOINT", "file name longer than the event"))
}

/// ANNOTATE_ROWS: the whole body is the statement text.
pub fn annotate_rows_text(body: &[u8]) -> &[u8] {
    body
}

/// Formats a GTID list as MariaDB's `gtid_binlog_pos` does: `0-1-5,1-1-9`.
pub fn format_gtid_list(list: &[Gtid]) -> String {
    list.iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_event() {
        let mut b = 7u64.to_le_bytes().to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.push(1);
        let e = GtidEvent::parse(&b, 9).unwrap();
        assert_eq!(e.gtid.to_string(), "3-9-7");
        assert!(e.standalone());
        assert!(GtidEvent::parse(&b[..12], 9).is_err());
    }

    #[test]
    fn gtid_list() {
        let mut b = 2u32.to_le_bytes().to_vec();
        for (d, s, q) in [(0u32, 1u32, 5u64), (1, 1, 9)] {
            b.extend_from_slice(&d.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&q.to_le_bytes());
        }
        assert_eq!(
            format_gtid_list(&parse_gtid_list(&b).unwrap()),
            "0-1-5,1-1-9"
        );
        assert!(parse_gtid_list(&b[..30]).is_err());
        assert!(parse_gtid_list(&u32::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn checkpoint() {
        let mut b = 3u32.to_le_bytes().to_vec();
        b.extend_from_slice(b"bin");
        assert_eq!(parse_binlog_checkpoint(&b).unwrap(), b"bin");
        assert!(parse_binlog_checkpoint(&b[..5]).is_err());
    }
}
