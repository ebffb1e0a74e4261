//! How old is a cached copy? memcached gives every stored item the next value of one
//! counter per server (its CAS), so a copy's CAS orders it against every other store on
//! that server. The inspector stores a heartbeat key on each server every ~100 ms and keeps
//! `(sent, answered, cas)` for each: a copy whose CAS is below a heartbeat's was stored
//! before that heartbeat was answered; above it, after the heartbeat was sent. That turns a
//! commit time into a CAS watermark, and each copy found at a horizon into a [`Verdict`].

use std::collections::VecDeque;

pub use crate::model::{now_micros, Micros};

/// One heartbeat store: sent at `sent`, its answer (with the CAS it got) read at
/// `answered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    pub sent: Micros,
    pub answered: Micros,
    pub cas: u64,
}

/// One server's heartbeats of the last `keep` microseconds, oldest first.
#[derive(Debug, Clone)]
pub struct Watermarks {
    beats: VecDeque<Beat>,
    keep: Micros,
}

impl Watermarks {
    /// Keeps heartbeats for `keep` microseconds: at least the longest horizon plus the
    /// inspector's lag, or old commits cannot be placed (their copies are undetermined).
    pub fn new(keep: Micros) -> Watermarks {
        Watermarks {
            beats: VecDeque::new(),
            keep,
        }
    }

    /// Records a heartbeat. A CAS that does not grow means the server restarted (its
    /// counter starts again at 1) or CAS is off (`-C`): what was recorded no longer orders
    /// anything, so it is forgotten. Returns false in that case.
    pub fn record(&mut self, beat: Beat) -> bool {
        let grew = self.beats.back().is_none_or(|b| beat.cas > b.cas);
        if !grew {
            self.beats.clear();
        }
        if beat.cas > 0 {
            self.beats.push_back(beat);
        }
        while self
            .beats
            .front()
            .is_some_and(|b| b.answered + self.keep < beat.answered)
        {
            self.beats.pop_front();
        }
        grew
    }

    /// Forgets everything (the server restarted: its counter started again).
    pub fn clear(&mut self) {
        self.beats.clear();
    }

    /// The CAS of the last heartbeat answered at or before `t`: a copy with a lower CAS was
    /// certainly stored before `t`.
    pub fn stored_before(&self, t: Micros) -> Option<u64> {
        let i = self.beats.partition_point(|b| b.answered <= t);
        i.checked_sub(1).map(|i| self.beats[i].cas)
    }

    /// The CAS of the first heartbeat sent at or after `t`: a copy with a higher CAS was
    /// certainly stored after `t`.
    pub fn stored_after(&self, t: Micros) -> Option<u64> {
        let i = self.beats.partition_point(|b| b.sent < t);
        self.beats.get(i).map(|b| b.cas)
    }

    pub fn len(&self) -> usize {
        self.beats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.beats.is_empty()
    }
}

/// What one server answered for a key at a horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    Absent,
    Present {
        cas: u64,
    },
    /// No answer in time, or no connection: says nothing about the key.
    Unreachable(&'static str),
}

/// What one copy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Not cached: consistent.
    Absent,
    /// Stored after the inspector received the commit: consistent.
    Refilled,
    /// Stored before the commit and still there: the invalidation did not reach it.
    Stale,
    /// Stored inside the uncertainty window (between the earliest the commit can have
    /// happened and the moment the inspector received it), or no heartbeat covers the
    /// time: never counted consistent.
    Undetermined,
    /// The server did not answer: neither consistent nor stale.
    Unreachable,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Absent,
        Verdict::Refilled,
        Verdict::Stale,
        Verdict::Undetermined,
        Verdict::Unreachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Absent => "absent",
            Verdict::Refilled => "refilled",
            Verdict::Stale => "stale",
            Verdict::Undetermined => "undetermined",
            Verdict::Unreachable => "unreachable",
        }
    }

    pub fn consistent(self) -> bool {
        matches!(self, Verdict::Absent | Verdict::Refilled)
    }
}

/// Classifies `copy`, for a commit that happened no earlier than `commit_lo` and that the
/// inspector received at `received` (so it happened before that), against the server's
/// heartbeats.
pub fn classify(copy: Copy, commit_lo: Micros, received: Micros, marks: &Watermarks) -> Verdict {
    let cas = match copy {
        Copy::Absent => return Verdict::Absent,
        Copy::Unreachable(_) => return Verdict::Unreachable,
        Copy::Present { cas } => cas,
    };
    if cas == 0 {
        // CAS disabled (memcached -C): a copy cannot be placed in time.
        return Verdict::Undetermined;
    }
    if marks.stored_before(commit_lo).is_some_and(|lo| cas < lo) {
        return Verdict::Stale;
    }
    if marks.stored_after(received).is_some_and(|hi| cas > hi) {
        return Verdict::Refilled;
    }
    Verdict::Undetermined
}

/// "Nines" of a count: `-log10(stale / decided)`, where decided copies are the consistent
/// plus the stale ones. With no stale copy the sample can only show `log10(decided)` nines
/// (one stale in the next check would give that), which is what is returned then; `None`
/// with nothing decided.
pub fn nines(consistent: u64, stale: u64) -> Option<f64> {
    let decided = consistent + stale;
    if decided == 0 {
        return None;
    }
    if stale == 0 {
        return Some((decided as f64).log10());
    }
    Some(-(stale as f64 / decided as f64).log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeats every 100 µs·1000 (100 ms) from t=1 s, CAS 10, 20, 30...: other stores
    /// happen between them.
    fn marks() -> Watermarks {
        let mut m = Watermarks::new(60_000_000);
        for i in 1..=30u64 {
            let sent = 1_000_000 + i * 100_000;
            assert!(m.record(Beat {
                sent,
                answered: sent + 200,
                cas: i * 10,
            }));
        }
        m
    }

    #[test]
    fn watermarks_bracket_a_time() {
        let m = marks();
        // t = 1.35 s: the last beat answered before it is #3 (1.3002 s), the first sent
        // after it is #4 (1.4 s).
        assert_eq!(m.stored_before(1_350_000), Some(30));
        assert_eq!(m.stored_after(1_350_000), Some(40));
        // Before the first beat: nothing is certainly older.
        assert_eq!(m.stored_before(1_000_000), None);
        // After the last: nothing is certainly newer (yet).
        assert_eq!(m.stored_after(5_000_000), None);
        // A beat sent at exactly t counts as after t.
        assert_eq!(m.stored_after(1_400_000), Some(40));
    }

    #[test]
    fn copies_are_stale_refilled_or_undetermined_by_their_cas() {
        let m = marks();
        // Commit no earlier than 1.35 s, received at 1.65 s.
        let (lo, rx) = (1_350_000, 1_650_000);
        let v = |cas| classify(Copy::Present { cas }, lo, rx, &m);
        assert_eq!(
            v(5),
            Verdict::Stale,
            "stored before heartbeat #3, so before the commit"
        );
        assert_eq!(v(29), Verdict::Stale);
        assert_eq!(
            v(30),
            Verdict::Undetermined,
            "the heartbeat itself is not older"
        );
        assert_eq!(
            v(45),
            Verdict::Undetermined,
            "inside the uncertainty window"
        );
        assert_eq!(
            v(70),
            Verdict::Undetermined,
            "the heartbeat sent at 1.7 s is not newer"
        );
        assert_eq!(
            v(71),
            Verdict::Refilled,
            "stored after a heartbeat sent after receipt"
        );
        assert_eq!(classify(Copy::Absent, lo, rx, &m), Verdict::Absent);
        assert_eq!(
            classify(Copy::Unreachable("timeout"), lo, rx, &m),
            Verdict::Unreachable
        );
        assert_eq!(v(0), Verdict::Undetermined, "CAS off");
    }

    #[test]
    fn without_heartbeats_nothing_is_decided() {
        let m = Watermarks::new(1_000_000);
        let v = classify(Copy::Present { cas: 1 }, 10, 20, &m);
        assert_eq!(v, Verdict::Undetermined);
        assert!(!v.consistent());
    }

    #[test]
    fn a_restart_forgets_the_old_counter() {
        let mut m = marks();
        // The server restarted: its CAS starts again.
        assert!(!m.record(Beat {
            sent: 5_000_000,
            answered: 5_000_100,
            cas: 3,
        }));
        assert_eq!(m.len(), 1);
        // A copy stored after the restart (CAS 2) with a commit before it is not stale.
        let v = classify(Copy::Present { cas: 2 }, 1_350_000, 1_650_000, &m);
        assert_eq!(v, Verdict::Undetermined);
    }

    #[test]
    fn old_heartbeats_are_dropped() {
        let mut m = Watermarks::new(1_000_000);
        for i in 1..=50u64 {
            m.record(Beat {
                sent: i * 100_000,
                answered: i * 100_000 + 10,
                cas: i,
            });
        }
        assert!(m.len() <= 11, "{}", m.len());
        assert_eq!(m.stored_before(100_010), None, "forgotten");
    }

    #[test]
    fn nines_of_counts() {
        assert_eq!(nines(0, 0), None);
        assert_eq!(nines(999, 1), Some(3.0));
        assert_eq!(nines(1000, 0), Some(3.0));
        assert_eq!(nines(0, 5), Some(0.0));
    }
}
