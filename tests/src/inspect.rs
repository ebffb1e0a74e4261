//! `squeal-inspect` as a child process: its config built from a [`Region`] (every cluster
//! and the regional pool as targets), readiness through its Prometheus port
//! (`squeal_inspect_up 1` once its binlog stream is open), its metrics by label, and the
//! summary table of a one-shot run.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::process::{free_port, loopback, server_dir, Server};
use crate::region::Region;

/// A running squeal-inspect.
pub struct Inspector {
    pub server: Server,
    pub metrics_port: u16,
}

/// The inspector's config for `region`: its database (own server_id), `extract` (squeal's
/// `[extract]`/rules TOML), `sample` (the `[sample]` section's body), every cluster as a
/// `cache` target named like the routers' pools (`c0`, `c1`...) and the regional pool as
/// the `markers` target.
pub fn config(region: &Region, extract: &str, sample: &str) -> String {
    let mut targets = String::new();
    for (i, c) in region.clusters.iter().enumerate() {
        targets.push_str(&format!(
            "[[target]]\nname = \"c{i}\"\nservers = [{}]\n\n",
            crate::memcached::toml_list(c)
        ));
    }
    targets.push_str(&format!(
        "[[target]]\nname = \"regional\"\nservers = [{:?}]\nholds = \"markers\"\n",
        region.regional.addr()
    ));
    format!(
        "[source]\nurl = \"{}\"\nserver_id = {}\nheartbeat_ms = 500\nreconnect_min_ms = 50\n\
         reconnect_max_ms = 500\n\n{extract}\n\n[sample]\n{sample}\n\n\
         [memcache]\ntimeout_ms = 300\n\n{targets}",
        region.db.url(),
        950 + region.db.server_id,
    )
}

impl Inspector {
    /// Starts squeal-inspect with `config` (without `[metrics]`: the harness adds it) and
    /// `args` (e.g. `--samples 200`), and waits until its binlog stream is open.
    pub fn start(config: &str, args: &[&str]) -> Result<Inspector> {
        let dir = server_dir("squeal-inspect")?;
        let metrics_port = free_port();
        let path = dir.path().join("squeal-inspect.toml");
        std::fs::write(
            &path,
            format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
        )?;
        let mut cmd = Command::new(crate::project::bin("squeal-inspect"));
        cmd.arg("--config").arg(&path).args(args);
        cmd.env(
            "RUST_LOG",
            std::env::var("SQUEAL_LOG").unwrap_or_else(|_| "info".into()),
        );
        let server = Server::spawn(
            "squeal-inspect",
            dir,
            cmd,
            loopback(metrics_port),
            Duration::from_secs(20),
        )?;
        let mut i = Inspector {
            server,
            metrics_port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while i.metric("squeal_inspect_up", &[]) < 1.0 {
            i.server.check_alive()?;
            if Instant::now() > deadline {
                bail!("squeal-inspect not up; log:\n{}", i.server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A few heartbeats, so commits from now on have watermarks on every server.
        std::thread::sleep(Duration::from_millis(400));
        Ok(i)
    }

    /// The sum of metric `name` over the samples whose labels include every `labels` pair;
    /// 0 when none (or when the inspector does not answer).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = crate::prometheus::scrape(self.metrics_port).unwrap_or_default();
        labelled(&text, name, labels)
    }

    /// Waits until `metric(name, labels)` reaches `at_least`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels);
            if v >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name}{labels:?} = {v}, wanted >= {at_least} within {timeout:?}; log:\n{}",
                    self.server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a one-shot run to exit successfully and returns its output (the summary
    /// table is on stdout, mixed here with the log).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(e) = self.server.check_alive() {
                let msg = format!("{e}");
                if !msg.contains("exit status: 0") {
                    bail!("squeal-inspect failed: {msg}");
                }
                return Ok(std::fs::read_to_string(&self.server.log)?);
            }
            if Instant::now() > deadline {
                bail!(
                    "squeal-inspect still running after {timeout:?}; log:\n{}",
                    self.server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the inspector measured at one horizon (over every table and target).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    pub horizon: String,
    pub copies: u64,
    pub stale: u64,
    pub undetermined: u64,
    pub unreachable: u64,
}

impl Consistency {
    /// Copies absent or refilled after the commit.
    pub fn consistent(&self) -> u64 {
        self.copies - self.stale - self.undetermined - self.unreachable
    }

    /// `-log10(stale / decided)`; with no stale copy, `>= log10(decided)` (what the sample
    /// can show), as squeal-inspect's summary prints it.
    pub fn nines(&self) -> String {
        let decided = self.consistent() + self.stale;
        if decided == 0 {
            "-".into()
        } else if self.stale == 0 {
            format!(">= {:.1}", (decided as f64).log10())
        } else {
            format!("{:.1}", -(self.stale as f64 / decided as f64).log10())
        }
    }

    /// The counts since `before` (same horizon).
    pub fn since(&self, before: &Consistency) -> Consistency {
        Consistency {
            horizon: self.horizon.clone(),
            copies: self.copies - before.copies,
            stale: self.stale - before.stale,
            undetermined: self.undetermined - before.undetermined,
            unreachable: self.unreachable - before.unreachable,
        }
    }
}

impl Inspector {
    /// The counts so far at each of `horizons` (labels such as `1s`).
    pub fn consistency(&self, horizons: &[&str]) -> Vec<Consistency> {
        let text = crate::prometheus::scrape(self.metrics_port).unwrap_or_default();
        let n = |h: &str, v: Option<&str>| {
            let mut l = vec![("horizon", h)];
            if let Some(v) = v {
                l.push(("verdict", v));
            }
            labelled(&text, "squeal_inspect_copies_total", &l) as u64
        };
        horizons
            .iter()
            .map(|h| Consistency {
                horizon: h.to_string(),
                copies: n(h, None),
                stale: n(h, Some("stale")),
                undetermined: n(h, Some("undetermined")),
                unreachable: n(h, Some("unreachable")),
            })
            .collect()
    }

    /// Waits until no sample waits for a horizon (call once the writers stopped).
    pub fn wait_idle(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.metric("squeal_inspect_pending", &[]) > 0.0 {
            if Instant::now() > deadline {
                bail!(
                    "squeal-inspect still has pending samples after {timeout:?}; log:\n{}",
                    self.server.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// See [`Inspector::metric`].
pub fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (n, rest) = key.split_once('{').unwrap_or((key, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// One line of the summary table: (table, target, horizon) -> the counts in column order
/// `checked absent refilled stale undetermined unreachable`.
pub fn summary_row(output: &str, table: &str, target: &str, horizon: &str) -> Option<Vec<u64>> {
    output.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.len() == 10 && cols[0] == table && cols[1] == target && cols[2] == horizon)
            .then(|| cols[3..9].iter().filter_map(|c| c.parse().ok()).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_samples_are_summed_by_label_subset() {
        let text = "# TYPE x counter\n\
                    x{table=\"a\",target=\"c0\",verdict=\"stale\"} 2\n\
                    x{table=\"a\",target=\"c1\",verdict=\"stale\"} 3\n\
                    x{table=\"a\",target=\"c1\",verdict=\"absent\"} 5\n\
                    x_other{verdict=\"stale\"} 7\n";
        assert_eq!(labelled(text, "x", &[("verdict", "stale")]), 5.0);
        assert_eq!(labelled(text, "x", &[("target", "c1")]), 8.0);
        assert_eq!(labelled(text, "x", &[]), 10.0);
        assert_eq!(labelled(text, "y", &[]), 0.0);
    }

    #[test]
    fn nines_of_a_horizon() {
        let c = Consistency {
            horizon: "1s".into(),
            copies: 1009,
            stale: 1,
            undetermined: 5,
            unreachable: 4,
        };
        assert_eq!(c.consistent(), 999);
        assert_eq!(c.nines(), "3.0");
        let clean = Consistency {
            copies: 100,
            ..Default::default()
        };
        assert_eq!(clean.nines(), ">= 2.0");
        assert_eq!(clean.since(&clean).nines(), "-");
    }

    #[test]
    fn summary_rows_are_found_by_their_keys() {
        let out = "log line\napp.items  c1  1s  200  0  0  200  0  0  0.0\n";
        assert_eq!(
            summary_row(out, "app.items", "c1", "1s"),
            Some(vec![200, 0, 0, 200, 0, 0])
        );
        assert_eq!(summary_row(out, "app.items", "c0", "1s"), None);
    }
}
