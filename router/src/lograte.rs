//! Rate-limited warnings that say how many they suppressed: a flood of bad input must not
//! become a flood of log lines, but none may go unseen.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one line per `period`; the next allowed line carries how many were dropped.
pub struct Every {
    period: Duration,
    state: Mutex<Option<(Instant, u64)>>,
}

impl Every {
    pub const fn new(period: Duration) -> Every {
        Every {
            period,
            state: Mutex::new(None),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn tick(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match s.as_mut() {
            Some((last, count)) if now.duration_since(*last) < self.period => {
                *count += 1;
                None
            }
            Some((last, count)) => {
                *last = now;
                Some(std::mem::take(count))
            }
            None => {
                *s = Some((now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_then_the_count_of_the_rest() {
        let e = Every::new(Duration::from_millis(50));
        assert_eq!(e.tick(), Some(0));
        assert_eq!(e.tick(), None);
        assert_eq!(e.tick(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(e.tick(), Some(2));
    }
}
