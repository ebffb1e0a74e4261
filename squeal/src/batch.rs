//! Packs the keys of committed transactions into batches bounded by bytes and by a linger
//! time. Under load a batch fills up and leaves at once with many keys; when the stream is
//! idle the first key leaves after at most `linger` (sub-millisecond by default).
//!
//! A batch carries the position after the last transaction it completes: once it and every
//! batch before it are acknowledged, that position may be checkpointed.

use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::model::{Committed, Position};

/// Bytes a key costs in a packet beyond its own length (`delete ` + `\r\n`).
pub const KEY_OVERHEAD: usize = 9;

/// A packet of keys.
#[derive(Debug, Clone)]
pub struct Batch {
    pub seq: u64,
    /// Keys back to back; `ends[i]` is where key `i` ends.
    pub data: Vec<u8>,
    pub ends: Vec<u32>,
    /// Position after the last transaction this batch completes (None: it completes none).
    pub pos: Option<Position>,
    pub gtid: Option<String>,
    pub txns: u32,
    /// Server commit time of the last transaction it completes (microseconds since the
    /// epoch; the binlog has second resolution), 0 if unknown.
    pub commit_time_us: u64,
    pub born: Instant,
    /// Once this batch's keys are delivered, every target is flushed (`Sink::flush_all`),
    /// after every batch before it and before any after it (a table reset with
    /// `[extract] on_table_reset = "flush"`).
    pub flush: bool,
}

impl Batch {
    fn new(seq: u64) -> Batch {
        Batch {
            seq,
            data: Vec::new(),
            ends: Vec::new(),
            pos: None,
            gtid: None,
            txns: 0,
            commit_time_us: 0,
            born: Instant::now(),
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

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&e| {
            let k = &self.data[start..e as usize];
            start = e as usize;
            k
        })
    }
}

/// Builds batches and hands them to the sink stage through a bounded channel (which is what
/// bounds memory: a full channel stops the binlog reader).
pub struct Batcher {
    max_bytes: usize,
    linger: Duration,
    cur: Option<Batch>,
    seq: u64,
    tx: mpsc::Sender<Batch>,
    key: Vec<u8>,
    /// Set: send at once when the sink stage is idle (see [`SinkLoad`]).
    load: Option<Arc<SinkLoad>>,
    /// When the last packet left.
    last_sent: Instant,
}

/// Where this run's batch numbers start: the start time in microseconds since the epoch,
/// so numbers keep increasing across restarts (a router counts a number it has already
/// seen from this source as a re-sent duplicate; restarting at 1 made every batch of a
/// restarted squeal look like one). A run would need more than one batch per microsecond
/// of downtime to collide with its predecessor.
fn first_seq() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// How busy the sink stage is, as the batcher sees it: a transaction's keys leave at once
/// when nothing is in flight or queued and the previous packet left more than a linger time
/// ago (the idle path: no linger wait). Otherwise keys accumulate, bounded by bytes and by
/// the linger time, as before: under load packets stay as big as they were.
#[derive(Default)]
pub struct SinkLoad {
    in_flight: AtomicUsize,
}

impl SinkLoad {
    /// A batch went to the sinks.
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A batch was acknowledged.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }
}

/// The sink stage has gone away.
#[derive(Debug, thiserror::Error)]
#[error("the sink stage stopped")]
pub struct Closed;

impl Batcher {
    pub fn new(max_bytes: usize, linger: Duration, tx: mpsc::Sender<Batch>) -> Batcher {
        Batcher {
            max_bytes,
            linger,
            cur: None,
            seq: first_seq(),
            tx,
            key: Vec::new(),
            load: None,
            last_sent: Instant::now(),
        }
    }

    /// Sends a completed transaction at once when nothing is in flight or queued, instead
    /// of waiting for the linger time.
    pub fn send_when_idle(mut self, load: Arc<SinkLoad>) -> Batcher {
        self.load = Some(load);
        self
    }

    /// When the open batch must leave, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.cur.as_ref().map(|b| b.born + self.linger)
    }

    fn open(&mut self) -> &mut Batch {
        if self.cur.is_none() {
            self.seq += 1;
            self.cur = Some(Batch::new(self.seq));
        }
        self.cur.as_mut().expect("just opened")
    }

    async fn add_key(&mut self, key: &[u8]) -> Result<(), Closed> {
        let full = self
            .cur
            .as_ref()
            .is_some_and(|b| b.bytes() + key.len() + KEY_OVERHEAD > self.max_bytes);
        if full {
            self.flush().await?;
        }
        let b = self.open();
        b.data.extend_from_slice(key);
        b.ends.push(b.data.len() as u32);
        Ok(())
    }

    /// Adds a committed transaction's keys; the open batch then completes it.
    pub async fn push(&mut self, c: Committed) -> Result<(), Closed> {
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
                Ok(true) => self.add_key(&key).await?,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!(error = %e, "reading spilled transaction keys");
                    return Err(Closed);
                }
            }
        }
        self.key = key;
        let b = self.open();
        b.pos = Some(c.pos);
        b.gtid = c.gtid;
        b.commit_time_us = c.commit_ts as u64 * 1_000_000;
        b.txns += 1;
        if c.flush {
            b.flush = true;
            return self.flush().await;
        }
        if b.bytes() + KEY_OVERHEAD + 250 > self.max_bytes {
            return self.flush().await;
        }
        let idle = self.load.as_ref().is_some_and(|l| l.is_idle())
            && self.tx.capacity() == self.tx.max_capacity()
            && self.last_sent.elapsed() >= self.linger;
        if idle {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the open batch now.
    pub async fn flush(&mut self) -> Result<(), Closed> {
        if let Some(b) = self.cur.take() {
            metrics::histogram!("squeal_keys_per_packet").record(b.len() as f64);
            metrics::histogram!("squeal_packet_bytes").record(b.bytes() as f64);
            // Time the first key of the packet waited in the batcher.
            metrics::histogram!("squeal_batch_wait_seconds").record(b.born.elapsed().as_secs_f64());
            self.tx.send(b).await.map_err(|_| Closed)?;
            self.last_sent = Instant::now();
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
            commit_ts: 0,
            flush: false,
        }
    }

    #[tokio::test]
    async fn packs_by_bytes_and_keeps_positions_in_order() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut b = Batcher::new(300, Duration::from_millis(1), tx);
        let keys: Vec<String> = (0..100).map(|i| format!("key:{i:04}")).collect();
        for (i, chunk) in keys.chunks(7).enumerate() {
            let refs: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
            b.push(txn(&refs, i as u64 + 10)).await.unwrap();
        }
        b.flush().await.unwrap();
        drop(b);
        let mut all = Vec::new();
        let mut last_pos = 0;
        while let Some(batch) = rx.recv().await {
            assert!(batch.bytes() <= 300, "{}", batch.bytes());
            all.extend(batch.keys().map(|k| String::from_utf8(k.to_vec()).unwrap()));
            if let Some(p) = batch.pos {
                assert!(p.pos > last_pos);
                last_pos = p.pos;
            }
        }
        assert_eq!(all, keys);
        assert_eq!(last_pos, 10 + 14);
    }

    #[tokio::test]
    async fn an_idle_sink_gets_a_transaction_at_once_a_busy_one_gets_them_packed() {
        let (tx, mut rx) = mpsc::channel(100);
        let load = Arc::new(SinkLoad::default());
        let linger = Duration::from_millis(20);
        let mut b = Batcher::new(16 * 1024, linger, tx).send_when_idle(load.clone());
        tokio::time::sleep(linger).await;
        b.push(txn(&["a"], 1)).await.unwrap();
        let first = rx
            .try_recv()
            .expect("sent without waiting for the linger time");
        assert_eq!(first.len(), 1);
        // Right after a packet left, or with a batch in flight: keys accumulate.
        b.push(txn(&["b"], 2)).await.unwrap();
        assert!(rx.try_recv().is_err(), "held: the last packet just left");
        tokio::time::sleep(linger).await;
        load.started();
        b.push(txn(&["c"], 3)).await.unwrap();
        assert!(rx.try_recv().is_err(), "held while a batch is in flight");
        load.finished();
        b.flush().await.unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), 2);
    }
}
