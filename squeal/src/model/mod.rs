//! Model: the data that flows between the stages, which every stage may name and none
//! owns: where the stream stands ([`Position`]) and what a committed transaction hands on
//! ([`Committed`], its keys in a [`transaction::TxnKeys`]).

pub mod transaction;

use transaction::TxnKeys;

/// Microseconds since the Unix epoch: the clock of the binlog's commit times, of batch
/// numbers and of the inspector's samples.
pub type Micros = u64;

/// The wall clock now, in [`Micros`].
pub fn now_micros() -> Micros {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A binlog position: file and byte offset of the next event.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub file: String,
    pub pos: u64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)
    }
}

/// A committed transaction: its keys and where the stream stands after its commit.
pub struct Committed {
    pub keys: TxnKeys,
    pub pos: Position,
    /// GTID of the transaction when the stream carries it (MySQL `uuid:n`, MariaDB `d-s-n`).
    pub gtid: Option<String>,
    /// Server timestamp of the commit event (seconds since the epoch).
    pub commit_ts: u32,
    /// MySQL 8's `immediate_commit_timestamp` (microseconds since the epoch), when the
    /// server writes one: the receive stage is timed from it.
    pub commit_us: Option<u64>,
    /// When squeal read the commit (the batcher-wait stage starts here).
    pub received: std::time::Instant,
    /// Every target must be flushed once this transaction's keys (and everything before
    /// them) are delivered, before anything after it (a table reset, on_table_reset=flush).
    pub flush: bool,
}
