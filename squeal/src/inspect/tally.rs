//! The counts: every copy's verdict per table, target and horizon, as Prometheus metrics
//! (updated as checks finish) and as the summary table of a one-shot run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::classify::{nines, Verdict};

/// `1s`, `10s`, `1500ms`: a horizon as its label.
pub fn horizon_label(h: Duration) -> String {
    let ms = h.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Verdict counts by (table, target, horizon label).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    rows: BTreeMap<(String, String, usize), [u64; 5]>,
    /// Per (table, horizon): consistent and stale copies over every target, for the nines.
    per_table: BTreeMap<(String, usize), (u64, u64)>,
    pub horizons: Vec<Duration>,
}

fn slot(v: Verdict) -> usize {
    Verdict::ALL
        .iter()
        .position(|x| *x == v)
        .expect("every verdict is listed")
}

impl Tally {
    pub fn new(horizons: Vec<Duration>) -> Tally {
        Tally {
            horizons,
            ..Default::default()
        }
    }

    /// Counts one copy and publishes it (`squeal_inspect_copies_total` and
    /// `squeal_inspect_nines`).
    pub fn count(&mut self, table: &str, target: &str, horizon: usize, v: Verdict) {
        let h = horizon_label(self.horizons[horizon]);
        self.rows
            .entry((table.to_string(), target.to_string(), horizon))
            .or_default()[slot(v)] += 1;
        metrics::counter!("squeal_inspect_copies_total", "table" => table.to_string(), "target" => target.to_string(), "horizon" => h.clone(), "verdict" => v.name())
            .increment(1);
        let e = self
            .per_table
            .entry((table.to_string(), horizon))
            .or_default();
        if v.consistent() {
            e.0 += 1;
        } else if v == Verdict::Stale {
            e.1 += 1;
        }
        if let Some(n) = nines(e.0, e.1) {
            metrics::gauge!("squeal_inspect_nines", "table" => table.to_string(), "horizon" => h)
                .set(n);
        }
    }

    /// Copies with verdict `v` at horizon index `horizon` (every table and target).
    pub fn total(&self, horizon: usize, v: Verdict) -> u64 {
        self.rows
            .iter()
            .filter(|((_, _, h), _)| *h == horizon)
            .map(|(_, c)| c[slot(v)])
            .sum()
    }

    /// The summary table: one line per table, target and horizon.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:>8} {:>9} {:>8} {:>9} {:>7} {:>12} {:>11} {:>6}",
            "table",
            "target",
            "horizon",
            "checked",
            "absent",
            "refilled",
            "stale",
            "undetermined",
            "unreachable",
            "nines"
        );
        for ((table, target, h), c) in &self.rows {
            let checked: u64 = c.iter().sum();
            let n = nines(c[0] + c[1], c[2])
                .map(|n| {
                    if c[2] == 0 {
                        format!(">={n:.1}")
                    } else {
                        format!("{n:.1}")
                    }
                })
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:>8} {:>9} {:>8} {:>9} {:>7} {:>12} {:>11} {:>6}",
                table,
                target,
                horizon_label(self.horizons[*h]),
                checked,
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                n
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_table_target_and_horizon() {
        let mut t = Tally::new(vec![Duration::from_secs(1), Duration::from_millis(1500)]);
        assert_eq!(horizon_label(t.horizons[1]), "1500ms");
        for _ in 0..99 {
            t.count("app.users", "c0", 0, Verdict::Absent);
        }
        t.count("app.users", "c0", 0, Verdict::Stale);
        t.count("app.users", "c1", 1, Verdict::Unreachable);
        assert_eq!(t.total(0, Verdict::Absent), 99);
        assert_eq!(t.total(0, Verdict::Stale), 1);
        assert_eq!(t.total(1, Verdict::Stale), 0);
        let text = t.table();
        let line = text.lines().find(|l| l.contains(" c0 ")).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "app.users",
                "c0",
                "1s",
                "100",
                "99",
                "0",
                "1",
                "0",
                "0",
                "2.0"
            ]
        );
        let line = text.lines().find(|l| l.contains(" c1 ")).unwrap();
        assert!(line.ends_with(" -"), "{line}");
    }
}
