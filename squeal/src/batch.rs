//! Turns committed transactions into pieces for the dispatcher: a transaction's keys, split
//! where they would overflow `max_bytes`. Nothing waits here: every transaction leaves as
//! soon as its commit is read, and the dispatcher ([`crate::delivery`]) packs what arrives
//! while a packet is in flight into the next one (send at once when idle, accumulate while
//! busy), so packets grow with load without a timer on the idle path.
//!
//! A piece carries the position after the transaction it completes: once it and everything
//! before it are acknowledged, that position may be checkpointed.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::model::{Committed, Position};

/// Bytes a key costs in a packet beyond its own length (`delete ` + `\r\n`).
pub const KEY_OVERHEAD: usize = 9;

/// A packet of keys (or, between the batcher and the dispatcher, a piece of one).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Set by the dispatcher when the packet leaves (a router counts a number it has
    /// already seen from this source as a re-sent duplicate, so only sent packets have one).
    pub seq: u64,
    /// Keys back to back; `ends[i]` is where key `i` ends.
    pub data: Vec<u8>,
    pub ends: Vec<u32>,
    /// Position after the last transaction this batch completes (None: it completes none).
    pub pos: Option<Position>,
    pub gtid: Option<String>,
    pub txns: u32,
    /// Server commit time of the last transaction it completes (microseconds since the
    /// epoch: MySQL 8's `immediate_commit_timestamp`, else the event's whole second), 0 if
    /// unknown.
    pub commit_time_us: u64,
    /// When squeal read the commit of its first transaction (the batcher-wait stage starts).
    pub born: Instant,
    /// Once this batch's keys are delivered, every target is flushed (`Sink::flush_all`),
    /// after every batch before it and before any after it (a table reset with
    /// `[extract] on_table_reset = "flush"`).
    pub flush: bool,
}

impl Batch {
    fn new(born: Instant) -> Batch {
        Batch {
            seq: 0,
            data: Vec::new(),
            ends: Vec::new(),
            pos: None,
            gtid: None,
            txns: 0,
            commit_time_us: 0,
            born,
            flush: false,
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Wire size as plain memcache deletes.
    pub fn bytes(&self) -> usize {
        self.data.len() + KEY_OVERHEAD * self.ends.len()
    }

    /// A batch with this one's identity (sequence, position, commit time) and no keys: a
    /// sink that splits a batch (Kafka, by partition) fills one per part.
    pub fn empty_like(&self) -> Batch {
        Batch {
            data: Vec::new(),
            ends: Vec::new(),
            gtid: self.gtid.clone(),
            pos: self.pos.clone(),
            ..*self
        }
    }

    pub fn push_key(&mut self, key: &[u8]) {
        self.data.extend_from_slice(key);
        self.ends.push(self.data.len() as u32);
    }

    /// Appends `later` (the next piece in stream order): its keys follow these, and what it
    /// completes is what the packet completes. The packet's wait started with its oldest key.
    pub fn append(&mut self, later: Batch) {
        let base = self.data.len() as u32;
        self.data.extend_from_slice(&later.data);
        self.ends.extend(later.ends.iter().map(|e| e + base));
        if later.pos.is_some() {
            self.pos = later.pos;
            self.gtid = later.gtid;
            self.commit_time_us = later.commit_time_us;
        }
        self.txns += later.txns;
        self.born = self.born.min(later.born);
        self.flush |= later.flush;
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&e| {
            let k = &self.data[start..e as usize];
            start = e as usize;
            k
        })
    }
}

/// Cuts committed transactions into pieces of at most `max_bytes` and hands them to the
/// dispatcher through a bounded channel (which is what bounds memory: a full channel stops
/// the binlog reader).
pub struct Batcher {
    max_bytes: usize,
    cur: Option<Batch>,
    tx: mpsc::Sender<Batch>,
    key: Vec<u8>,
}

/// The sink stage has gone away.
#[derive(Debug, thiserror::Error)]
#[error("the sink stage stopped")]
pub struct Closed;

impl Batcher {
    pub fn new(max_bytes: usize, tx: mpsc::Sender<Batch>) -> Batcher {
        Batcher {
            max_bytes,
            cur: None,
            tx,
            key: Vec::new(),
        }
    }

    fn open(&mut self, born: Instant) -> &mut Batch {
        self.cur.get_or_insert_with(|| Batch::new(born))
    }

    async fn add_key(&mut self, key: &[u8], born: Instant) -> Result<(), Closed> {
        let full = self
            .cur
            .as_ref()
            .is_some_and(|b| b.bytes() + key.len() + KEY_OVERHEAD > self.max_bytes);
        if full {
            self.flush().await?;
        }
        self.open(born).push_key(key);
        Ok(())
    }

    /// Hands a committed transaction's keys on (a large one in several pieces, the last
    /// completing it).
    pub async fn push(&mut self, c: Committed) -> Result<(), Closed> {
        let born = c.received;
        let mut reader = match c.keys.into_reader() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading spilled transaction keys");
                return Err(Closed);
            }
        };
        let mut key = std::mem::take(&mut self.key);
        loop {
            match reader.next_key(&mut key) {
                Ok(true) => self.add_key(&key, born).await?,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "reading spilled transaction keys");
                    return Err(Closed);
                }
            }
        }
        self.key = key;
        let b = self.open(born);
        b.pos = Some(c.pos);
        b.gtid = c.gtid;
        b.commit_time_us = c.commit_us.unwrap_or(c.commit_ts as u64 * 1_000_000);
        b.txns += 1;
        b.flush = c.flush;
        self.flush().await
    }

    /// Hands the open piece on now.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if let Some(b) = self.cur.take() {
            self.tx.send(b).await.map_err(|_| Closed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::transaction::TxnKeys;

    fn txn(keys: &[&str], pos: u64) -> Committed {
        let mut t = TxnKeys::new(1 << 20);
        for k in keys {
            t.insert(k.as_bytes()).unwrap();
        }
        Committed {
            keys: t,
            pos: Position {
                file: "f".into(),
                pos,
            },
            gtid: None,
            commit_ts: 7,
            commit_us: None,
            received: Instant::now(),
            flush: false,
        }
    }

    #[tokio::test]
    async fn each_transaction_leaves_at_once_and_a_large_one_in_pieces() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut b = Batcher::new(300, tx);
        b.push(txn(&["a", "b"], 5)).await.unwrap();
        let one = rx.try_recv().expect("sent at its commit, no timer");
        assert_eq!((one.len(), one.txns), (2, 1));
        assert_eq!(one.pos.unwrap().pos, 5);
        assert_eq!(one.commit_time_us, 7_000_000);

        let keys: Vec<String> = (0..100).map(|i| format!("key:{i:04}")).collect();
        let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
        b.push(txn(&refs, 9)).await.unwrap();
        drop(b);
        let mut all = Vec::new();
        let mut pieces = Vec::new();
        while let Some(p) = rx.recv().await {
            assert!(p.bytes() <= 300, "{}", p.bytes());
            all.extend(p.keys().map(|k| String::from_utf8(k.to_vec()).unwrap()));
            pieces.push(p);
        }
        assert!(pieces.len() > 1);
        let (last, rest) = pieces.split_last().unwrap();
        assert!(
            rest.iter().all(|p| p.pos.is_none() && p.txns == 0),
            "only the last completes it"
        );
        assert_eq!((last.pos.as_ref().unwrap().pos, last.txns), (9, 1));
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
    }

    #[test]
    fn append_keeps_key_order_and_takes_the_later_position() {
        let mut a = Batch::new(Instant::now());
        a.push_key(b"one");
        a.pos = Some(Position {
            file: "f".into(),
            pos: 1,
        });
        a.txns = 1;
        let mut b = Batch::new(Instant::now());
        b.push_key(b"two");
        b.push_key(b"three");
        a.append(b.clone());
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            [&b"one"[..], b"two", b"three"]
        );
        assert_eq!(
            a.pos.as_ref().unwrap().pos,
            1,
            "a piece that completes nothing"
        );
        b.pos = Some(Position {
            file: "f".into(),
            pos: 2,
        });
        b.txns = 1;
        b.commit_time_us = 42;
        a.append(b);
        assert_eq!(
            (
                a.pos.as_ref().unwrap().pos,
                a.txns,
                a.commit_time_us,
                a.len()
            ),
            (2, 2, 42, 5)
        );
    }
}
