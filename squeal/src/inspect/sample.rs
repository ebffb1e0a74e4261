//! Which committed keys are checked ([`Sampler`]), and the samples waiting for their
//! horizons ([`Pending`], bounded: memory stays at about `max_pending` × 0.5 KB).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use super::classify::Micros;

/// A committed key being followed through its horizons.
#[derive(Debug)]
pub struct Sample {
    pub key: String,
    /// `db.table` of a row-rule or outbox key, `annotation` for an annotation's.
    pub table: Arc<str>,
    /// A remote marker (checked in the `markers` targets), else a cache key.
    pub marker: bool,
    /// Binlog position after the commit (and its GTID when known), for tracing a stale copy.
    pub position: String,
    /// The earliest the commit can have happened (MySQL 8's microsecond commit timestamp,
    /// else the binlog's whole-second one, minus the clock margin).
    pub commit_lo: Micros,
    /// When the inspector received the commit (it happened before).
    pub received: Micros,
}

/// Decides which keys become samples: every key of the chosen tables, a `rate` fraction of
/// the rest (a small xorshift generator; no need for cryptographic randomness).
pub struct Sampler {
    rate: f64,
    tables: HashSet<String>,
    state: u64,
}

impl Sampler {
    pub fn new(rate: f64, tables: &[String], seed: u64) -> Sampler {
        Sampler {
            rate,
            tables: tables.iter().cloned().collect(),
            state: seed | 1,
        }
    }

    pub fn wants(&mut self, table: &str) -> bool {
        if self.tables.contains(table) {
            return true;
        }
        if self.rate >= 1.0 {
            return true;
        }
        if self.rate <= 0.0 {
            return false;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        ((self.state >> 11) as f64 / (1u64 << 53) as f64) < self.rate
    }
}

/// Samples waiting for their horizons: one FIFO per horizon (samples arrive in receive
/// order, so each queue is sorted by due time).
pub struct Pending {
    horizons: Vec<Micros>,
    queues: Vec<VecDeque<(Micros, Arc<Sample>)>>,
    /// Samples with a horizon still ahead.
    live: usize,
    max: usize,
}

impl Pending {
    /// `horizons` shortest first.
    pub fn new(horizons: &[std::time::Duration], max: usize) -> Pending {
        Pending {
            horizons: horizons.iter().map(|h| h.as_micros() as u64).collect(),
            queues: horizons.iter().map(|_| VecDeque::new()).collect(),
            live: 0,
            max,
        }
    }

    /// Adds a sample; false (nothing added) when `max` samples are pending.
    pub fn push(&mut self, s: Sample) -> bool {
        if self.live >= self.max {
            return false;
        }
        let s = Arc::new(s);
        for (q, h) in self.queues.iter_mut().zip(&self.horizons) {
            q.push_back((s.received + h, s.clone()));
        }
        self.live += 1;
        true
    }

    /// The earliest due time, if anything is pending.
    pub fn next_due(&self) -> Option<Micros> {
        self.queues
            .iter()
            .filter_map(|q| q.front().map(|(d, _)| *d))
            .min()
    }

    /// A check due at or before `now`: (horizon index, its due time, the sample).
    pub fn pop_due(&mut self, now: Micros) -> Option<(usize, Micros, Arc<Sample>)> {
        let (i, due) = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|(d, _)| (i, *d)))
            .filter(|(_, d)| *d <= now)
            .min_by_key(|(_, d)| *d)?;
        let (_, s) = self.queues[i].pop_front().expect("front exists");
        if i + 1 == self.queues.len() {
            // Its longest horizon: the sample is done.
            self.live -= 1;
        }
        Some((i, due, s))
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(received: Micros) -> Sample {
        Sample {
            key: format!("k{received}"),
            table: "app.users".into(),
            marker: false,
            position: String::new(),
            commit_lo: received,
            received,
        }
    }

    #[test]
    fn chosen_tables_always_the_rest_at_the_rate() {
        let mut s = Sampler::new(0.1, &["app.orders".into()], 12345);
        assert!((0..1000).all(|_| s.wants("app.orders")));
        let n = (0..100_000).filter(|_| s.wants("app.users")).count();
        assert!((9_000..11_000).contains(&n), "{n}");
        let mut none = Sampler::new(0.0, &[], 1);
        assert!(!(0..1000).any(|_| none.wants("app.users")));
    }

    #[test]
    fn checks_come_due_in_order_and_a_sample_ends_at_its_last_horizon() {
        let h = [Duration::from_millis(1), Duration::from_millis(10)];
        let mut p = Pending::new(&h, 2);
        assert!(p.push(sample(0)));
        assert!(p.push(sample(500)));
        assert!(!p.push(sample(600)), "bounded");
        assert_eq!(p.next_due(), Some(1_000));
        assert!(p.pop_due(999).is_none());
        let (i, due, s) = p.pop_due(1_000).unwrap();
        assert_eq!((i, due, s.received), (0, 1_000, 0));
        let (i, _, s) = p.pop_due(20_000).unwrap();
        assert_eq!((i, s.received), (0, 500));
        assert_eq!(p.len(), 2, "the long horizon is still ahead");
        let (i, due, _) = p.pop_due(20_000).unwrap();
        assert_eq!((i, due), (1, 10_000));
        assert_eq!(p.len(), 1);
        assert!(p.push(sample(700)), "room again");
        p.pop_due(20_000).unwrap();
        p.pop_due(20_000).unwrap();
        p.pop_due(20_000).unwrap();
        assert!(p.is_empty());
        assert_eq!(p.next_due(), None);
    }
}
