//! squeal's TOML configuration: one section per stage of the data flow, each validated
//! before anything starts (a bad config refuses to start and says where).

pub mod template;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub extract: ExtractConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    /// One or more sinks; a batch counts as delivered once every sink acknowledged it.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkConfig>,
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[source]`: the server to tail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `mysql://user:password@host:port/`.
    pub url: String,
    /// Replica server id squeal registers with; must be unique among the server's replicas.
    pub server_id: u32,
    /// Heartbeat period the server is asked for; the connection is considered dead after
    /// three missed heartbeats.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Where to start when there is no checkpoint: `current` (the server's position now) or
    /// `earliest` (the oldest binlog the server has).
    #[serde(default)]
    pub start: StartAt,
    /// MariaDB replica capability announced to the server: 1 gets ANNOTATE_ROWS events (SQL
    /// annotations work; the GTID position is looked up with BINLOG_GTID_POS), 4 gets native
    /// GTID events but no ANNOTATE_ROWS (stock mysql_common cannot ask for them).
    #[serde(default = "default_capability")]
    pub mariadb_capability: u8,
    /// Run although the server writes `binlog_row_metadata` other than FULL. Refused by
    /// default: without column names in the binlog they come from information_schema, which
    /// describes the table *now*, so an ALTER racing an UPDATE can map a row's columns
    /// wrongly (wrong keys).
    #[serde(default)]
    pub allow_minimal_metadata: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    #[default]
    Current,
    Earliest,
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_reconnect_min_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    5000
}
fn default_capability() -> u8 {
    1
}

/// `[extract]`: which keys a transaction invalidates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractConfig {
    /// Read `/* squeal:inv ... */` annotations from statement text.
    #[serde(default = "yes")]
    pub annotations: bool,
    /// Annotations count only in transactions that changed a row of one of these databases
    /// (empty: any database).
    #[serde(default)]
    pub annotation_databases: Vec<String>,
    /// Row rules: key templates over column values.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// Outbox tables: every row inserted holds one key.
    #[serde(default, rename = "outbox")]
    pub outboxes: Vec<OutboxConfig>,
    /// Keys a transaction holds in memory before the rest spills to a temporary file.
    #[serde(default = "default_txn_memory")]
    pub max_transaction_bytes: usize,
    /// A template column absent from a row image (binlog_row_image=MINIMAL/NOBLOB): `stop`
    /// (default: squeal stops with the error, nothing checkpointed past it) or `warn`
    /// (counted and logged, the keys of that template are not emitted).
    #[serde(default)]
    pub on_missing_column: OnMissingColumn,
    /// TRUNCATE / DROP / RENAME of a rule table (no row images in the binlog): `stop`
    /// (default) or `flush` (flush_all every target through the sinks, in order).
    #[serde(default)]
    pub on_table_reset: OnTableReset,
    /// Time zone TIMESTAMP columns are rendered in for keys: a name under
    /// /usr/share/zoneinfo (`Europe/Berlin`), an offset (`+02:00`) or `SYSTEM`. Default: the
    /// server's `@@time_zone`, what application sessions get unless they set their own.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// The `sql_mode` of the sessions that write annotated statements, for the quoting rules
    /// that decide where a string literal ends (only `NO_BACKSLASH_ESCAPES` and
    /// `ANSI_QUOTES`/`ANSI` matter). Used where the binlog does not record the session's
    /// mode: MariaDB transactions carry none; MySQL's `BEGIN` and every statement event do,
    /// and win. Default: the server default (backslash escapes on).
    #[serde(default)]
    pub annotation_sql_mode: String,
}

/// `[extract] on_missing_column`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnMissingColumn {
    #[default]
    Stop,
    Warn,
}

/// `[extract] on_table_reset`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnTableReset {
    #[default]
    Stop,
    Flush,
}

fn yes() -> bool {
    true
}
fn default_txn_memory() -> usize {
    64 << 20
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig {
            annotations: true,
            annotation_databases: Vec::new(),
            rules: Vec::new(),
            outboxes: Vec::new(),
            max_transaction_bytes: default_txn_memory(),
            on_missing_column: OnMissingColumn::default(),
            on_table_reset: OnTableReset::default(),
            time_zone: None,
            annotation_sql_mode: String::new(),
        }
    }
}

/// `[[extract.rule]]`: for rows of `database`.`table` (`*` matches any name), one key per
/// template, e.g. `user:{id}`. UPDATE rows yield the keys of the before and the after image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub database: String,
    pub table: String,
    pub keys: Vec<String>,
}

/// `[[extract.outbox]]`: rows inserted into this table carry one key in `column`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    pub database: String,
    pub table: String,
    #[serde(default = "default_outbox_column")]
    pub column: String,
}

fn default_outbox_column() -> String {
    "cache_key".into()
}

/// `[batch]`: packets bounded by bytes and by the batches in flight (no timer on an idle
/// path: a packet leaves at once when nothing is in flight; under sustained load it waits
/// for `busy_keys`, at most `busy_wait_us`; see `delivery`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Largest packet, counting each key plus its command overhead.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Accepted from older configs and ignored (packets no longer wait on a timer);
    /// `--check` and start-up say so.
    #[serde(default)]
    pub linger_us: Option<u64>,
    /// Batches handed to the sinks and not yet acknowledged.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Under sustained load (keys arriving fast enough to fill a packet of this many keys
    /// within `busy_wait_us`), a packet waits for that many keys even with nothing in
    /// flight: fewer, fuller packets exactly when their per-packet cost adds up. 0 turns it
    /// off. It never applies on an idle path, where the expected wait would be longer.
    #[serde(default = "default_busy_keys")]
    pub busy_keys: usize,
    /// The longest a packet waits for `busy_keys` under load.
    #[serde(default = "default_busy_wait_us")]
    pub busy_wait_us: u64,
}

fn default_max_bytes() -> usize {
    16 * 1024
}
fn default_in_flight() -> usize {
    8
}
fn default_busy_keys() -> usize {
    64
}
fn default_busy_wait_us() -> u64 {
    2000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: default_max_bytes(),
            linger_us: None,
            max_in_flight: default_in_flight(),
            busy_keys: default_busy_keys(),
            busy_wait_us: default_busy_wait_us(),
        }
    }
}

/// `[[sink]]`: where batches go.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// Pipelined `delete`s to every endpoint (memcached, squeal-router, mcrouter, twemproxy).
    Memcache {
        endpoints: Vec<String>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// Connections per endpoint (batches in flight to one endpoint).
        #[serde(default = "default_conns")]
        connections: usize,
    },
    /// Prints every key (or only counts them, with `quiet`), for debugging and benchmarks.
    Debug {
        #[serde(default)]
        quiet: bool,
    },
    /// The native protocol to `squeal-router` instances: authenticated batches, acked once
    /// every delete was applied or durably spooled by the router.
    Router {
        /// Router invalidation ports (`host:port`); batches spread over the healthy ones.
        endpoints: Vec<String>,
        #[serde(flatten)]
        auth: AuthConfig,
        /// How long a router may take to ack before the batch is retried on another.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// Batches in flight per router connection.
        #[serde(default = "default_window")]
        window: usize,
        /// `[sink.tls]`: speak TLS to the routers (whose `[invalidation]` has `tls = true`).
        #[serde(default)]
        tls: Option<SinkTls>,
    },
    /// Kafka (idempotent producer, acks=all), consumed by routers in consumer groups.
    Kafka {
        /// librdkafka `bootstrap.servers`.
        brokers: String,
        topic: String,
        #[serde(flatten)]
        auth: AuthConfig,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        /// Passed through to librdkafka (security.protocol, sasl.*, ...).
        #[serde(default)]
        librdkafka: std::collections::BTreeMap<String, String>,
    },
}

/// `[sink.tls]` of a router sink: how squeal checks the routers' certificate, and what it
/// presents if they ask for one. The files are read at every (re)connect, so a renewed
/// certificate needs no restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkTls {
    /// CA bundle the routers' certificates must chain to.
    pub ca: std::path::PathBuf,
    /// The name the routers' certificates must be valid for; default: each endpoint's host.
    pub server_name: Option<String>,
    /// A client certificate and its key, for routers with `[tls] client_ca` (mutual TLS).
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl SinkTls {
    /// The TLS client these files describe (read now); an error names the file and the fix.
    pub fn client_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let client = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => return Err(
                "[sink.tls]: cert and key go together (the client certificate and its private key)"
                    .into(),
            ),
        };
        marker::tls::client_config(&self.ca, client).map_err(|e| format!("[sink.tls]: {e}"))
    }

    /// Reads the files and checks every endpoint's name now (at start and by `--check`;
    /// connections read the files again at each connect): the first problem, if any.
    pub fn check(&self, endpoints: &[String]) -> Result<(), String> {
        self.client_config()?;
        endpoints
            .iter()
            .try_for_each(|e| self.server_name(e).map(|_| ()))
    }

    /// The name `endpoint`'s certificate is checked against.
    pub fn server_name(
        &self,
        endpoint: &str,
    ) -> Result<rustls::pki_types::ServerName<'static>, String> {
        let name = self
            .server_name
            .as_deref()
            .unwrap_or_else(|| marker::tls::host_of(endpoint));
        marker::tls::server_name(name).map_err(|e| format!("[sink.tls]: {e}; set server_name"))
    }
}

/// What the router needs to trust a batch and tell apart its sources.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// Shared secret for the batch MAC (the router's `[invalidation] secret`).
    pub secret: Option<String>,
    /// File holding the secret (preferred in production).
    pub secret_file: Option<std::path::PathBuf>,
    /// This squeal's name in batches (sequence numbers are per source). Default: `squeal`.
    #[serde(default = "default_source")]
    pub source: String,
    /// Keys starting with this prefix are remote markers, deleted in the regional pool only
    /// (see `marker::remote`). Empty: no markers.
    #[serde(default = "default_marker_prefix")]
    pub marker_prefix: String,
}

impl AuthConfig {
    pub fn secret(&self) -> anyhow::Result<marker::batch::Secret> {
        marker::batch::Secret::from_config(self.secret.as_deref(), self.secret_file.as_deref())
            .map_err(|e| anyhow::anyhow!("router or kafka sink: {e}"))
    }

    pub fn markers(&self) -> marker::remote::MarkerPrefix {
        marker::remote::MarkerPrefix::new(&self.marker_prefix)
    }
}

fn default_window() -> usize {
    8
}
fn default_source() -> String {
    "squeal".into()
}
fn default_marker_prefix() -> String {
    marker::remote::DEFAULT_PREFIX.into()
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_conns() -> usize {
    4
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    pub path: PathBuf,
    /// How often the acknowledged position is written.
    #[serde(default = "default_cp_interval")]
    pub interval_ms: u64,
    /// What to do when the binlog at the checkpoint is gone: `fail` (stop with an error) or
    /// `flush` (flush_all every target, then resume from the server's current position).
    #[serde(default)]
    pub on_missing_binlog: OnMissing,
}

fn default_cp_interval() -> u64 {
    200
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnMissing {
    #[default]
    Fail,
    Flush,
}

/// `[metrics]`: Prometheus exporter (loopback by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: Option<SocketAddr>,
}

fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9150)))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

impl Config {
    /// Reads and validates a config file; errors name the file and the line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Every section's own rules (what serde cannot say), in file order.
    fn validate(&self) -> anyhow::Result<()> {
        self.source.validate()?;
        if self.sinks.is_empty() {
            anyhow::bail!("at least one [[sink]] is required");
        }
        for (i, s) in self.sinks.iter().enumerate() {
            s.validate(i + 1)?;
        }
        self.batch.validate()?;
        for (i, r) in self.extract.rules.iter().enumerate() {
            r.validate(i + 1)?;
        }
        Ok(())
    }

    /// `[batch]` settings that parse but no longer do anything: each key, with what to
    /// change.
    pub fn ignored_settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(us) = self.batch.linger_us {
            out.push((
                "linger_us",
                format!(
                    "[batch] linger_us = {us} is ignored: packets no longer wait on a timer (one \
                 leaves at once when nothing is in flight; keys accumulate only while a packet \
                 is in flight, or under sustained load for busy_keys at most busy_wait_us); \
                 remove the line"
                ),
            ));
        }
        out
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.source.heartbeat_ms)
    }
}

impl SourceConfig {
    fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.server_id == 0 {
            bail!("[source] server_id must not be 0");
        }
        if ![1, 4].contains(&self.mariadb_capability) {
            bail!("[source] mariadb_capability must be 1 or 4");
        }
        if self.heartbeat_ms == 0 || self.reconnect_min_ms == 0 {
            bail!("[source] heartbeat_ms and reconnect_min_ms must be positive");
        }
        Ok(())
    }
}

impl SinkConfig {
    /// Checks the `n`th `[[sink]]` (from 1).
    fn validate(&self, n: usize) -> anyhow::Result<()> {
        if let SinkConfig::Memcache {
            endpoints,
            connections,
            ..
        } = self
        {
            if endpoints.is_empty() {
                anyhow::bail!("[[sink]] #{n}: memcache sink needs endpoints");
            }
            if *connections == 0 {
                anyhow::bail!("[[sink]] #{n}: connections must be positive");
            }
        }
        Ok(())
    }
}

impl BatchConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.max_bytes < 300 {
            anyhow::bail!("[batch] max_bytes must be at least 300 (one key of 250 bytes fits)");
        }
        if self.max_in_flight == 0 {
            anyhow::bail!("[batch] max_in_flight must be positive");
        }
        if self.busy_keys > 0 && !(1..=100_000).contains(&self.busy_wait_us) {
            anyhow::bail!(
                "[batch] busy_wait_us must be 1 to 100000 (it bounds how long a key may wait \
                 under load); set busy_keys = 0 to never wait"
            );
        }
        Ok(())
    }
}

impl RuleConfig {
    /// Checks the `n`th `[[extract.rule]]` (from 1): it has keys, and each parses.
    fn validate(&self, n: usize) -> anyhow::Result<()> {
        if self.keys.is_empty() {
            anyhow::bail!("[[extract.rule]] #{n}: keys is empty");
        }
        for k in &self.keys {
            template::Template::parse(k)
                .map_err(|e| anyhow::anyhow!("[[extract.rule]] #{n} key {k:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../deploy/squeal.toml");

    #[test]
    fn example_config_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert!(!c.sinks.is_empty());
        assert!(!c.extract.rules.is_empty());
    }

    #[test]
    fn batch_waits_are_bounded() {
        let with = |batch: &str| EXAMPLE.replace("busy_wait_us = 2000", batch);
        assert!(Config::parse(&with("busy_wait_us = 500")).is_ok());
        let err = format!(
            "{:#}",
            Config::parse(&with("busy_wait_us = 0")).unwrap_err()
        );
        assert!(err.contains("busy_wait_us must be 1 to 100000"), "{err}");
        assert!(Config::parse(&with("busy_wait_us = 1000000")).is_err());
        // busy_keys = 0 turns waiting off, so any wait bound goes.
        let off = EXAMPLE
            .replace("busy_keys = 64", "busy_keys = 0")
            .replace("busy_wait_us = 2000", "busy_wait_us = 0");
        assert_eq!(Config::parse(&off).unwrap().batch.busy_keys, 0);
    }

    #[test]
    fn errors_say_where() {
        let bad = EXAMPLE.replace("server_id", "server_idd");
        let err = format!("{:#}", Config::parse(&bad).unwrap_err());
        assert!(err.contains("server_idd"), "{err}");
        assert!(err.contains("line"), "{err}");
        let bad = EXAMPLE.replace("user:{id}", "user:{id");
        let err = format!("{:#}", Config::parse(&bad).unwrap_err());
        assert!(err.contains("user:{id"), "{err}");
    }
}

#[cfg(test)]
mod delivery_sink_tests {
    use super::*;

    fn parse_sink(sink: &str) -> anyhow::Result<SinkConfig> {
        let text = format!(
            "[source]\nurl = \"mysql://root@127.0.0.1:3306/\"\nserver_id = 7\n\
             [checkpoint]\npath = \"/tmp/x\"\n[[sink]]\n{sink}\n"
        );
        Ok(Config::parse(&text)?.sinks.remove(0))
    }

    #[test]
    fn router_and_kafka_sinks_parse_with_their_auth() {
        let router = parse_sink(
            "type = \"router\"\nendpoints = [\"127.0.0.1:7000\"]\nsecret = \"s\"\nsource = \"db1\"",
        )
        .unwrap();
        match router {
            SinkConfig::Router {
                endpoints,
                auth,
                window,
                ..
            } => {
                assert_eq!(endpoints, ["127.0.0.1:7000"]);
                assert_eq!(auth.source, "db1");
                assert_eq!(auth.marker_prefix, "r_");
                assert_eq!(window, 8);
                assert!(auth.secret().is_ok());
            }
            other => panic!("{other:?}"),
        }
        let kafka = parse_sink(
            "type = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"t\"\nsecret_file = \"/s\"\n\
             librdkafka = { \"security.protocol\" = \"ssl\" }",
        )
        .unwrap();
        assert!(matches!(kafka, SinkConfig::Kafka { ref librdkafka, .. } if librdkafka.len() == 1));
    }

    #[test]
    fn router_sink_tls_files_are_checked() {
        let sink = parse_sink(
            "type = \"router\"\nendpoints = [\"cache-a:7000\"]\nsecret = \"s\"\n\
             [sink.tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/c.pem\"\n",
        )
        .unwrap();
        let SinkConfig::Router { tls: Some(t), .. } = sink else {
            panic!("{sink:?}");
        };
        let e = t.client_config().unwrap_err();
        assert!(e.contains("cert and key go together"), "{e}");
        let t = SinkTls {
            key: Some("/k.pem".into()),
            ..t
        };
        let e = t.client_config().unwrap_err();
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
        assert!(t.server_name("cache-a:7000").is_ok());
        let t = SinkTls {
            server_name: Some("no such name!".into()),
            ..t
        };
        assert!(t.server_name("cache-a:7000").is_err());
    }

    #[test]
    fn sink_typos_are_refused() {
        let err = parse_sink("type = \"router\"\nendpoints = []\nsecret = \"s\"\nwindwo = 3");
        assert!(err.is_err(), "an unknown key must not be ignored");
    }
}
