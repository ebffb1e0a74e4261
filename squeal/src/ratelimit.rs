//! Rate-limited warnings that say what they held back: a burst of lines per window, then a
//! summary "N more suppressed in the last 10 s", so a flood of one problem is visible as a
//! flood (its count) without drowning the log. Counters carry the exact numbers.

use std::time::{Duration, Instant};

/// A limit of `burst` lines per `window`.
#[derive(Debug)]
pub struct Limited {
    window: Duration,
    burst: usize,
    start: Instant,
    shown: usize,
    suppressed: u64,
}

impl Limited {
    pub fn new(window: Duration, burst: usize) -> Limited {
        Limited {
            window,
            burst,
            start: Instant::now(),
            shown: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now; if not, it is counted as suppressed.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if now.duration_since(self.start) >= self.window && self.suppressed == 0 {
            self.start = now;
            self.shown = 0;
        }
        if self.shown < self.burst && now.duration_since(self.start) < self.window {
            self.shown += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// When the window is over (or `force`, at shutdown) and lines were suppressed in it:
    /// how many, and over how long; a new window starts.
    pub fn summary(&mut self, force: bool) -> Option<(u64, Duration)> {
        self.summary_at(Instant::now(), force)
    }

    fn summary_at(&mut self, now: Instant, force: bool) -> Option<(u64, Duration)> {
        let elapsed = now.duration_since(self.start);
        if self.suppressed == 0 || (!force && elapsed < self.window) {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.start = now;
        self.shown = 0;
        Some((n, elapsed))
    }
}

/// The summary line's text: "37 more suppressed in the last 10 s".
pub fn suppressed_text(n: u64, over: Duration) -> String {
    format!(
        "{n} more suppressed in the last {} s",
        over.as_secs().max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_holds_back_and_reports_it_once_per_window() {
        let t0 = Instant::now();
        let mut l = Limited::new(Duration::from_secs(10), 3);
        l.start = t0;
        let shown = (0..40).filter(|_| l.allow_at(t0)).count();
        assert_eq!(shown, 3);
        assert_eq!(l.summary_at(t0 + Duration::from_secs(1), false), None);
        let (n, over) = l.summary_at(t0 + Duration::from_secs(10), false).unwrap();
        assert_eq!((n, over.as_secs()), (37, 10));
        assert_eq!(
            suppressed_text(n, over),
            "37 more suppressed in the last 10 s"
        );
        // A new window: lines show again, nothing left to summarise.
        assert!(l.allow_at(t0 + Duration::from_secs(11)));
        assert_eq!(l.summary_at(t0 + Duration::from_secs(30), true), None);
        // Forced at shutdown, whatever the window.
        let mut l = Limited::new(Duration::from_secs(10), 0);
        assert!(!l.allow());
        assert_eq!(l.summary(true).map(|(n, _)| n), Some(1));
    }
}
