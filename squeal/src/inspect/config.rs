//! `squeal-inspect`'s TOML configuration. `[source]`, `[extract]` and `[metrics]` are
//! squeal's own sections (same types, same validation), so the inspector extracts exactly
//! the keys squeal invalidates; `[sample]`, `[memcache]` and `[[target]]` say what to check,
//! where, and how much it may cost.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ExtractConfig, MetricsConfig, SourceConfig};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectConfig {
    /// The server to follow, as in squeal. `server_id` must differ from squeal's and from
    /// every other replica's: the inspector is a replica of its own.
    pub source: SourceConfig,
    /// Copy squeal's `[extract]` here: the same rules give the same keys.
    #[serde(default)]
    pub extract: ExtractConfig,
    #[serde(default)]
    pub sample: SampleConfig,
    #[serde(default)]
    pub memcache: MemcacheConfig,
    /// Where committed keys must not survive: every front-end cluster, the gutter, the
    /// regional pool (for markers).
    #[serde(rename = "target")]
    pub targets: Vec<TargetConfig>,
    #[serde(default = "default_metrics")]
    pub metrics: MetricsConfig,
}

fn default_metrics() -> MetricsConfig {
    MetricsConfig {
        listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9151))),
    }
}

/// `[sample]`: which committed keys are checked, when, and the bounds on cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleConfig {
    /// Fraction of committed keys checked (0.01 = 1 %).
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Tables (`db.table`) whose every key is checked, whatever `rate` says.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Delays after the commit at which each sampled key is read, in milliseconds.
    #[serde(default = "default_horizons")]
    pub horizons_ms: Vec<u64>,
    /// Samples waiting for a horizon, at most; a sample beyond it is dropped and counted
    /// (`squeal_inspect_dropped_total{reason="pending_full"}`). About 0.5 KB each.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// memcached reads per second, at most (one check reads every server of the key's
    /// targets); a check over the budget is dropped and counted
    /// (`squeal_inspect_dropped_total{reason="read_rate"}`).
    #[serde(default = "default_max_reads")]
    pub max_reads_per_sec: u32,
    /// How far the database's clock may run ahead of the inspector's, in milliseconds:
    /// commit times are moved this much earlier before a copy is called stale.
    #[serde(default)]
    pub clock_margin_ms: u64,
    /// Keys starting with this prefix are remote markers: checked in the `markers` targets
    /// only (squeal's router sink `marker_prefix`). Empty: no markers.
    #[serde(default = "default_marker_prefix")]
    pub marker_prefix: String,
}

fn default_rate() -> f64 {
    0.01
}
fn default_horizons() -> Vec<u64> {
    vec![1_000, 10_000, 60_000]
}
fn default_max_pending() -> usize {
    20_000
}
fn default_max_reads() -> u32 {
    2_000
}
fn default_marker_prefix() -> String {
    marker::remote::DEFAULT_PREFIX.into()
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            rate: default_rate(),
            tables: Vec::new(),
            horizons_ms: default_horizons(),
            max_pending: default_max_pending(),
            max_reads_per_sec: default_max_reads(),
            clock_margin_ms: 0,
            marker_prefix: default_marker_prefix(),
        }
    }
}

/// `[memcache]`: how the inspector talks to the cache servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemcacheConfig {
    /// A read or heartbeat slower than this counts the server unreachable for that check
    /// (`reason="timeout"`), never stale.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often the heartbeat key is stored on every server (the CAS watermark's
    /// resolution).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// The heartbeat key, in the inspector's own namespace (one per inspector).
    #[serde(default = "default_heartbeat_key")]
    pub heartbeat_key: String,
    /// A read answered slower than this is counted slow
    /// (`squeal_inspect_slow_reads_total`), still classified.
    #[serde(default = "default_slow_ms")]
    pub slow_ms: u64,
}

fn default_timeout_ms() -> u64 {
    500
}
fn default_heartbeat_ms() -> u64 {
    100
}
fn default_heartbeat_key() -> String {
    "squeal-inspect:heartbeat".into()
}
fn default_slow_ms() -> u64 {
    50
}

impl Default for MemcacheConfig {
    fn default() -> Self {
        MemcacheConfig {
            timeout_ms: default_timeout_ms(),
            heartbeat_ms: default_heartbeat_ms(),
            heartbeat_key: default_heartbeat_key(),
            slow_ms: default_slow_ms(),
        }
    }
}

/// `[[target]]`: a set of memcached servers that must not keep a committed key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Label in metrics and logs (e.g. the router's pool name `c0`, `gutter`, `regional`).
    pub name: String,
    /// Every server of the target, `host:port`; each is read (the inspector does not know
    /// the router's placement, so one check costs one read per server).
    pub servers: Vec<String>,
    /// `cache` (every key that is not a marker: front-end clusters, the gutter) or
    /// `markers` (marker keys only: the regional pool).
    #[serde(default)]
    pub holds: Holds,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Holds {
    #[default]
    Cache,
    Markers,
}

impl InspectConfig {
    pub fn load(path: &Path) -> anyhow::Result<InspectConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        InspectConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<InspectConfig> {
        let c: InspectConfig = toml::from_str(text)?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.source.server_id == 0 {
            bail!("[source] server_id must not be 0");
        }
        if ![1, 4].contains(&self.source.mariadb_capability) {
            bail!("[source] mariadb_capability must be 1 or 4");
        }
        if self.source.heartbeat_ms == 0 || self.source.reconnect_min_ms == 0 {
            bail!("[source] heartbeat_ms and reconnect_min_ms must be positive");
        }
        for (i, r) in self.extract.rules.iter().enumerate() {
            crate::extract::rules::Rule::new(r)
                .map_err(|e| anyhow::anyhow!("[[extract.rule]] #{}: {e}", i + 1))?;
        }
        let s = &self.sample;
        if !(0.0..=1.0).contains(&s.rate) {
            bail!("[sample] rate must be between 0 and 1 (0.01 = 1 %)");
        }
        if s.horizons_ms.is_empty() || s.horizons_ms.contains(&0) {
            bail!("[sample] horizons_ms must list positive delays");
        }
        if s.max_pending == 0 || s.max_reads_per_sec == 0 {
            bail!("[sample] max_pending and max_reads_per_sec must be positive");
        }
        for t in &s.tables {
            if t.split('.').count() != 2 {
                bail!("[sample] tables: {t:?} is not `database.table`");
            }
        }
        let m = &self.memcache;
        if m.timeout_ms == 0 || m.heartbeat_ms == 0 {
            bail!("[memcache] timeout_ms and heartbeat_ms must be positive");
        }
        marker::key::validate(m.heartbeat_key.as_bytes())
            .map_err(|e| anyhow::anyhow!("[memcache] heartbeat_key: {e}"))?;
        if self.targets.is_empty() {
            bail!("at least one [[target]] is required");
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            if t.servers.is_empty() {
                bail!("[[target]] {:?}: servers is empty", t.name);
            }
            if !names.insert(&t.name) {
                bail!("[[target]] {:?} is listed twice", t.name);
            }
        }
        Ok(())
    }

    /// The horizons, shortest first.
    pub fn horizons(&self) -> Vec<Duration> {
        let mut h: Vec<Duration> = self
            .sample
            .horizons_ms
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        h.sort();
        h.dedup();
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[source]\nurl = \"mysql://root@127.0.0.1:3306/\"\nserver_id = 951\n\
                       [[target]]\nname = \"c0\"\nservers = [\"127.0.0.1:11211\"]\n";

    #[test]
    fn the_example_config_parses() {
        let c = InspectConfig::parse(include_str!("../../../deploy/squeal-inspect.toml")).unwrap();
        assert_eq!(c.targets.len(), 4);
        assert_eq!(c.targets[3].holds, Holds::Markers);
        assert_eq!(c.sample.tables, ["app.users"]);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = InspectConfig::parse(MIN).unwrap();
        assert_eq!(c.sample.rate, 0.01);
        assert_eq!(c.horizons(), [1, 10, 60].map(Duration::from_secs).to_vec());
        assert_eq!(c.memcache.heartbeat_ms, 100);
        assert_eq!(c.targets[0].holds, Holds::Cache);
        assert_eq!(c.sample.marker_prefix, "r_");
        assert_eq!(c.metrics.listen.unwrap().port(), 9151);
    }

    #[test]
    fn mistakes_are_refused_and_say_where() {
        let bad = format!("{MIN}[sample]\nrate = 2\n");
        assert!(format!("{:#}", InspectConfig::parse(&bad).unwrap_err()).contains("rate"));
        let bad = format!("{MIN}[sample]\nhorizons_ms = [0]\n");
        assert!(InspectConfig::parse(&bad).is_err());
        let bad = format!("{MIN}[sample]\ntables = [\"users\"]\n");
        assert!(InspectConfig::parse(&bad).is_err());
        let bad = format!("{MIN}[[target]]\nname = \"c0\"\nservers = [\"x:1\"]\n");
        assert!(format!("{:#}", InspectConfig::parse(&bad).unwrap_err()).contains("twice"));
        let bad = MIN.replace("servers", "server");
        assert!(format!("{:#}", InspectConfig::parse(&bad).unwrap_err()).contains("line"));
        let bad = format!(
            "{MIN}[[extract.rule]]\ndatabase = \"a\"\ntable = \"b\"\nkeys = [\"u:{{id\"]\n"
        );
        assert!(InspectConfig::parse(&bad).is_err());
    }

    #[test]
    fn squeal_sections_keep_their_meaning() {
        let text = format!(
            "{MIN}[extract]\nannotations = false\n[[extract.rule]]\ndatabase = \"app\"\n\
             table = \"users\"\nkeys = [\"user:{{id}}\"]\n[[target]]\nname = \"regional\"\n\
             servers = [\"127.0.0.1:11300\"]\nholds = \"markers\"\n"
        );
        let c = InspectConfig::parse(&text).unwrap();
        assert!(!c.extract.annotations);
        assert_eq!(c.extract.rules.len(), 1);
        assert_eq!(c.targets[1].holds, Holds::Markers);
    }
}
