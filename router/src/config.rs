//! The router's TOML configuration, validated as a whole before anything starts: a bad file
//! refuses to start with `file:line:column: problem`, never half-runs.
//!
//! ```toml
//! listen = ["127.0.0.1:11311"]      # client traffic (memcached protocol)
//! admin = "127.0.0.1:9150"          # Prometheus /metrics; loopback by default
//! workers = 2                       # default: number of CPUs
//! route = "main"                    # the pool (or route, or inline route table) serving clients
//!
//! [pools.main]
//! distribution = "ketama"           # ketama | libmemcached_ketama | modula | random | ch3 | weighted_ch3
//! # weights = [1.0, 0.5]            # weighted_ch3 only: each server's share in [0, 1]
//! hash = "md5"                      # twemproxy's hash names
//! hash_tag = "{}"                   # optional: hash only the part between the two
//! connections = 1                   # per server, per worker
//! servers = ["127.0.0.1:11211:1", "127.0.0.1:11212:1 cache-b"]  # host:port[:weight] [name]
//!
//! [timeouts]                        # milliseconds
//! connect_ms = 1000
//! read_ms = 1000
//! backoff_min_ms = 100
//! backoff_max_ms = 5000
//!
//! [health]                        # optional: mark failing servers down (TKO), probe them back
//! tko_after = 3                     # consecutive failed requests
//! probe_min_ms = 100
//! probe_max_ms = 2000
//!
//! [limits]
//! max_item_size = 1048576
//! max_connections = 4096
//! max_pending_per_client = 256
//! max_client_output = 4194304         # unread reply bytes per client (x2: disconnected)
//! max_buffered_output = 1073741824     # unread reply bytes in the whole process
//! max_get_line = 16777216              # longest get/gets/gat/gats line
//!
//! [tls]                             # optional: the certificate of TLS ports
//! cert = "/etc/squeal/router.crt"   # PEM chain, leaf first (re-read on SIGHUP)
//! key = "/etc/squeal/router.key"
//! # client_ca = "/etc/squeal/clients-ca.crt"   # mutual TLS: clients need a cert from it
//! # handshake_timeout_ms = 5000
//!
//! [listeners."127.0.0.1:11312"]     # a port of its own that requires TLS
//! route = "main"
//! tls = true
//!
//! [pools.main.tls]                  # optional: TLS to this pool's servers
//! ca = "/etc/squeal/memcached-ca.crt"
//! # server_name = "cache.internal" # default: each server's host as written
//! # cert = "..."                    # a client certificate, if memcached asks for one
//! # key = "..."
//! ```
//!
//! Route trees (`[route] type = ...`, `[routes.NAME]`) are kept as written ([`RawRoutes`]):
//! the route layer parses and validates them (see [`crate::route::spec`]), so this module
//! knows no route type.

pub mod invalidation;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::placement::hash::HashFn;
use crate::placement::Placement;
use crate::protocol;

/// A configuration problem and where it is.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A problem at `at` in `file`.
    pub fn at(file: &str, at: At, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: at.line,
            column: at.column,
            message: message.into(),
        }
    }
}

/// Where something is written in the config file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub line: usize,
    pub column: usize,
}

/// The route tree as written: `route` and the `[routes.NAME]` tables, with where each
/// piece is, for the route layer to parse and validate into its specs.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRoutes {
    /// The config file, for errors.
    pub file: String,
    /// What serves client traffic: `route` (for the `listen` addresses) first if given,
    /// then each `[listeners."addr"]`'s route, in `Config::listen_routes` numbering.
    pub roots: Vec<RawValue>,
    /// `[routes.NAME]`, by name: routes that `route` and other routes may refer to.
    pub named: BTreeMap<String, RawValue>,
}

/// A TOML value of the route tree, with where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct RawValue {
    pub at: At,
    pub kind: RawKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RawKind {
    String(String),
    Integer(i64),
    Array(Vec<RawValue>),
    /// Entries in the order written, each key with where it is.
    Table(Vec<(At, String, RawValue)>),
    /// A float, boolean or date (no route key takes one), as serde names it in errors
    /// (e.g. ``boolean `true` ``).
    Other(String),
}

/// A TOML value with byte spans, as `toml` reads it (turned into a [`RawValue`]).
#[derive(Debug)]
enum SpannedToml {
    String(String),
    Integer(i64),
    Array(Vec<Spanned<SpannedToml>>),
    Table(Vec<(Spanned<String>, Spanned<SpannedToml>)>),
    Other(String),
}

impl<'de> Deserialize<'de> for SpannedToml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpannedToml;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SpannedToml, E> {
                Ok(SpannedToml::String(s.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SpannedToml, E> {
                Ok(SpannedToml::Integer(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SpannedToml, E> {
                Ok(i64::try_from(n).map_or_else(
                    |_| SpannedToml::Other(format!("integer `{n}`")),
                    SpannedToml::Integer,
                ))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<SpannedToml, E> {
                Ok(SpannedToml::Other(format!("floating point `{n}`")))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<SpannedToml, E> {
                Ok(SpannedToml::Other(format!("boolean `{b}`")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpannedToml, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(SpannedToml::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedToml, A::Error> {
                let mut out: Vec<(Spanned<String>, Spanned<SpannedToml>)> = Vec::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                // A date or time comes as toml's private one-key table.
                if let [(k, _)] = &out[..] {
                    if k.get_ref() == "$__toml_private_datetime" {
                        return Ok(SpannedToml::Other("a date or time".into()));
                    }
                }
                Ok(SpannedToml::Table(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    admin: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    route: Option<Spanned<SpannedToml>>,
    /// Addresses with a route of their own (twemproxy's per-pool `listen`).
    #[serde(default)]
    listeners: BTreeMap<String, Spanned<RawListener>>,
    /// Named routes that `route` and other routes may refer to.
    #[serde(default)]
    routes: BTreeMap<String, Spanned<SpannedToml>>,
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    pools: BTreeMap<String, Spanned<RawPool>>,
    /// The receiving end of squeal's invalidations (see `crate::invalidation`).
    invalidation: Option<Spanned<invalidation::InvalidationConfig>>,
    /// The certificate TLS ports serve (`[listeners."addr"] tls = true`, `[invalidation]
    /// tls = true`).
    tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    handshake_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolTls {
    ca: Spanned<String>,
    server_name: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    servers: Spanned<Vec<Spanned<String>>>,
    distribution: Option<Spanned<String>>,
    hash: Option<Spanned<String>>,
    hash_tag: Option<Spanned<String>>,
    weights: Option<Spanned<Vec<f64>>>,
    read_ms: Option<Spanned<i64>>,
    eject_after: Option<Spanned<i64>>,
    eject_retry_ms: Option<Spanned<i64>>,
    connections: Option<Spanned<i64>>,
    tls: Option<Spanned<RawPoolTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    route: Spanned<SpannedToml>,
    /// The port requires TLS (with `[tls]`'s certificate).
    #[serde(default)]
    tls: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    tko_after: Option<Spanned<i64>>,
    probe_min_ms: Option<Spanned<i64>>,
    probe_max_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    connect_ms: Option<Spanned<i64>>,
    read_ms: Option<Spanned<i64>>,
    backoff_min_ms: Option<Spanned<i64>>,
    backoff_max_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_item_size: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    max_pending_per_client: Option<Spanned<i64>>,
    max_client_output: Option<Spanned<i64>>,
    max_buffered_output: Option<Spanned<i64>>,
    max_get_line: Option<Spanned<i64>>,
    max_backend_queue: Option<Spanned<i64>>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Per `listen` address, which of `routes.roots` serves it.
    pub listen_routes: Vec<usize>,
    /// Per `listen` address, whether it requires TLS.
    pub listen_tls: Vec<bool>,
    /// `[tls]`: the certificate TLS ports serve (files read by `crate::tls`).
    pub tls: Option<TlsFiles>,
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    /// The route tree serving client traffic, as written (see [`crate::route::spec`]).
    pub routes: RawRoutes,
    pub pools: Vec<Pool>,
    /// Health checking (TKO) of servers; off when the section is absent.
    pub health: Option<Health>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub invalidation: Option<invalidation::InvalidationConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub distribution: String,
    pub hash: HashFn,
    /// twemproxy's `hash_tag`: with `{}`, only the part of a key between the first `{`
    /// and the next `}` is hashed, so `user:{42}:name` and `user:{42}:mail` share a server.
    pub hash_tag: Option<[u8; 2]>,
    /// `weighted_ch3` only: each server's share in `[0, 1]`, as mcrouter's
    /// `"hash": {"hash_func": "WeightedCh3", "weights": [...]}`.
    pub weights: Vec<f64>,
    /// `[timeouts] read_ms` for this pool's servers only (twemproxy's per-pool `timeout`).
    pub read_timeout: Option<Duration>,
    /// twemproxy's `auto_eject_hosts`: after `tko_after` consecutive failures a server is
    /// taken out of the pool for `probe_min` and its keys hash over the others meanwhile.
    pub eject: Option<Health>,
    pub connections: usize,
    pub servers: Vec<Server>,
    /// `[pools.NAME.tls]`: the pool's servers speak TLS.
    pub tls: Option<PoolTls>,
}

/// `[tls]`: files and settings, as written (the files are read, and checked, by
/// `crate::tls` when a plan is built: at start, `--check` and every reload).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// Where `[tls]` is written, for errors about its files.
    pub at: At,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: only clients with a certificate issued by this CA are served.
    pub client_ca: Option<PathBuf>,
    /// Time a new connection to a TLS port has to send its first byte and finish the
    /// handshake.
    pub handshake_timeout: Duration,
}

/// `[pools.NAME.tls]`: how the router checks the pool's servers, and what it presents.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTls {
    pub at: At,
    /// CA bundle the servers' certificates must chain to.
    pub ca: PathBuf,
    /// The name every server's certificate must be valid for; `None`: each server's host.
    pub server_name: Option<String>,
    /// A client certificate and key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// As written (`host:port`), for stats.
    pub label: String,
    /// The host as written: the name a TLS server's certificate is checked against.
    pub host: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// The string ketama hashes (twemproxy's rule).
    pub ketama_name: String,
}

/// `[health]`: after `tko_after` consecutive failed requests a server is marked down (TKO)
/// and requests to it fail at once; a probe (`version`) brings it back, retried with
/// backoff from `probe_min` to `probe_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub tko_after: u32,
    pub probe_min: Duration,
    pub probe_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// What the request parser accepts: `max_item_size`, the largest value, and
    /// `max_get_line`, the longest `get`/`gets`/`gat`/`gats` line a client may send.
    pub parse: protocol::Limits,
    pub max_connections: usize,
    pub max_pending_per_client: usize,
    /// Reply bytes a client may leave unread: reading stops at this, and a client that
    /// lets twice this much pile up (requests already in flight) is disconnected.
    pub max_client_output: usize,
    /// Reply bytes the whole process holds for clients that have not read them yet; past
    /// it, a client holding more than its share is disconnected.
    pub max_buffered_output: usize,
    pub max_backend_queue: usize,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.text, span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn at(&self, span: Range<usize>) -> At {
        let (line, column) = line_col(self.text, span.start);
        At { line, column }
    }

    /// `v` with where each part is.
    fn raw(&self, v: Spanned<SpannedToml>) -> RawValue {
        let at = self.at(v.span());
        let kind = match v.into_inner() {
            SpannedToml::String(s) => RawKind::String(s),
            SpannedToml::Integer(n) => RawKind::Integer(n),
            SpannedToml::Other(s) => RawKind::Other(s),
            SpannedToml::Array(a) => RawKind::Array(a.into_iter().map(|v| self.raw(v)).collect()),
            SpannedToml::Table(t) => RawKind::Table(
                t.into_iter()
                    .map(|(k, v)| (self.at(k.span()), k.into_inner(), self.raw(v)))
                    .collect(),
            ),
        };
        RawValue { at, kind }
    }

    fn int(
        &self,
        v: &Option<Spanned<i64>>,
        name: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if (min..=max).contains(s.get_ref()) => Ok(*s.get_ref()),
            Some(s) => Err(self.err(
                s.span(),
                format!(
                    "{name} must be between {min} and {max}, not {}",
                    s.get_ref()
                ),
            )),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (text, converted) = Config::toml_text(path)?;
        Config::parse_toml(&path.display().to_string(), &text, converted)
    }

    /// The config at `path` as router TOML, and whether it was converted (from a
    /// nutcracker.yml or an mcrouter JSON file, by [`Config::converted`]).
    pub fn toml_text(path: &Path) -> Result<(String, bool), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Ok(match Config::converted(path, &text)? {
            Some(toml) => (toml, true),
            None => (text, false),
        })
    }

    /// [`Config::parse`]; for converted TOML the error points into the conversion (the
    /// operator's file has no such line).
    pub fn parse_toml(file: &str, text: &str, converted: bool) -> Result<Config, ConfigError> {
        Config::parse(file, text).map_err(|mut e| {
            if converted {
                e.message = format!(
                    "{} (line {} of the TOML converted from it; `squeal-router --print-toml` shows it)",
                    e.message, e.line
                );
                e.line = 0;
                e.column = 0;
            }
            e
        })
    }

    /// A `nutcracker.yml` (`.yml`/`.yaml`) or an mcrouter config (`.json`) as router TOML;
    /// `None` for a TOML file. The converters refuse what they cannot map.
    pub fn converted(path: &Path, text: &str) -> Result<Option<String>, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message,
        };
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => crate::convert::nutcracker::to_toml(text)
                .map(Some)
                .map_err(err),
            Some("json") => {
                let c = crate::convert::mcrouter::to_toml(text).map_err(err)?;
                for note in &c.notes {
                    tracing::warn!("{file}: {note}");
                }
                Ok(Some(c.toml))
            }
            _ => Ok(None),
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file, text };
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(span) => cx.err(span, msg),
                None => ConfigError {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    message: msg,
                },
            }
        })?;

        let (listen, listen_routes, listen_tls, roots) = listeners(&cx, &mut raw)?;
        let tls = match &raw.tls {
            None => None,
            Some(t) => {
                let r = t.get_ref();
                Some(TlsFiles {
                    at: cx.at(t.span()),
                    cert: PathBuf::from(r.cert.get_ref()),
                    key: PathBuf::from(r.key.get_ref()),
                    client_ca: r.client_ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
                    handshake_timeout: Duration::from_millis(cx.int(
                        &r.handshake_timeout_ms,
                        "handshake_timeout_ms",
                        5000,
                        1,
                        600_000,
                    )? as u64),
                })
            }
        };
        if tls.is_none() {
            if let Some(i) = listen_tls.iter().position(|&t| t) {
                return Err(ConfigError {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    message: format!(
                        "listener {} has tls = true but there is no [tls] table with cert and key",
                        listen[i]
                    ),
                });
            }
        }
        let admin = raw
            .admin
            .as_ref()
            .map(|a| socket_addr(&cx, a))
            .transpose()?;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as i64;
        let workers = cx.int(&raw.workers, "workers", cpus, 1, 256)? as usize;

        let mut pools = Vec::new();
        for (name, pool) in &raw.pools {
            pools.push(validate_pool(&cx, name, pool)?);
        }
        if pools.is_empty() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: "no [pools.NAME] table: at least one pool is needed".into(),
            });
        }
        let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        for (name, r) in &raw.routes {
            if names.contains(name) {
                return Err(cx.err(
                    r.span(),
                    format!("route {name:?} has the name of a pool: names must be unique"),
                ));
            }
        }
        let health = match &raw.health {
            None => None,
            Some(h) => {
                let h = h.get_ref();
                let ms = |v, name, d| -> Result<Duration, ConfigError> {
                    Ok(Duration::from_millis(
                        cx.int(v, name, d, 1, 3_600_000)? as u64
                    ))
                };
                let health = Health {
                    tko_after: cx.int(&h.tko_after, "tko_after", 3, 1, 1_000_000)? as u32,
                    probe_min: ms(&h.probe_min_ms, "probe_min_ms", 100)?,
                    probe_max: ms(&h.probe_max_ms, "probe_max_ms", 2000)?,
                };
                if health.probe_max < health.probe_min {
                    let span = h.probe_max_ms.as_ref().map_or(0..0, |s| s.span());
                    return Err(cx.err(span, "probe_max_ms is smaller than probe_min_ms"));
                }
                Some(health)
            }
        };

        let t = &raw.timeouts;
        let ms = |v, name, d| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(
                cx.int(v, name, d, 1, 3_600_000)? as u64
            ))
        };
        let timeouts = Timeouts {
            connect: ms(&t.connect_ms, "connect_ms", 1000)?,
            read: ms(&t.read_ms, "read_ms", 1000)?,
            backoff_min: ms(&t.backoff_min_ms, "backoff_min_ms", 100)?,
            backoff_max: ms(&t.backoff_max_ms, "backoff_max_ms", 5000)?,
        };
        if timeouts.backoff_max < timeouts.backoff_min {
            let span = t.backoff_max_ms.as_ref().map_or(0..0, |s| s.span());
            return Err(cx.err(span, "backoff_max_ms is smaller than backoff_min_ms"));
        }
        let l = &raw.limits;
        let limits = Limits {
            parse: protocol::Limits {
                max_item_size: cx.int(&l.max_item_size, "max_item_size", 1 << 20, 1, 1 << 30)?
                    as usize,
                max_get_line: cx.int(&l.max_get_line, "max_get_line", 16 << 20, 2048, 1 << 30)?
                    as usize,
            },
            max_connections: cx.int(&l.max_connections, "max_connections", 4096, 1, 1 << 20)?
                as usize,
            max_pending_per_client: cx.int(
                &l.max_pending_per_client,
                "max_pending_per_client",
                256,
                1,
                1 << 20,
            )? as usize,
            max_client_output: cx.int(
                &l.max_client_output,
                "max_client_output",
                4 << 20,
                1024,
                1 << 30,
            )? as usize,
            max_buffered_output: cx.int(
                &l.max_buffered_output,
                "max_buffered_output",
                1 << 30,
                1 << 20,
                1 << 40,
            )? as usize,
            max_backend_queue: cx.int(
                &l.max_backend_queue,
                "max_backend_queue",
                65536,
                1,
                1 << 24,
            )? as usize,
        };
        let invalidation = match &raw.invalidation {
            None => None,
            Some(inv) => {
                inv.get_ref()
                    .validate(|name| pools.iter().any(|p| p.name == name))
                    .map_err(|e| cx.err(inv.span(), format!("{e:#}")))?;
                if inv.get_ref().tls && tls.is_none() {
                    return Err(cx.err(
                        inv.span(),
                        "[invalidation] tls = true needs a [tls] table with cert and key",
                    ));
                }
                Some(inv.get_ref().clone())
            }
        };
        let routes = RawRoutes {
            file: file.to_string(),
            named: raw
                .routes
                .into_iter()
                .map(|(name, r)| (name, cx.raw(r)))
                .collect(),
            roots,
        };
        Ok(Config {
            listen,
            listen_routes,
            listen_tls,
            tls,
            admin,
            workers,
            routes,
            pools,
            health,
            timeouts,
            limits,
            invalidation,
        })
    }
}

fn socket_addr(cx: &Ctx, s: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        cx.err(
            s.span(),
            format!("{:?} is not an ip:port address", s.get_ref()),
        )
    })
}

fn validate_pool(cx: &Ctx, name: &String, pool: &Spanned<RawPool>) -> Result<Pool, ConfigError> {
    let p = pool.get_ref();
    let distribution = match &p.distribution {
        None => "ketama".to_string(),
        Some(d)
            if [
                "ketama",
                "libmemcached_ketama",
                "modula",
                "random",
                "ch3",
                "weighted_ch3",
            ]
                .contains(&d.get_ref().as_str()) =>
        {
            d.get_ref().clone()
        }
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!(
                "unknown distribution {:?} (ketama, libmemcached_ketama, modula, ch3, weighted_ch3 or random)",
                d.get_ref()
            ),
            ))
        }
    };
    let hash = match &p.hash {
        None => HashFn::Md5,
        Some(h) => HashFn::from_name(h.get_ref()).ok_or_else(|| {
            cx.err(
                h.span(),
                format!(
                    "unknown hash {:?} (one of {})",
                    h.get_ref(),
                    HashFn::NAMES.join(", ")
                ),
            )
        })?,
    };
    let hash_tag = match &p.hash_tag {
        None => None,
        Some(t) => match t.get_ref().as_bytes() {
            [a, b] => Some([*a, *b]),
            _ => {
                return Err(cx.err(
                    t.span(),
                    format!(
                        "hash_tag {:?} must be two characters, e.g. \"{{}}\" (twemproxy's rule)",
                        t.get_ref()
                    ),
                ))
            }
        },
    };
    let connections = cx.int(&p.connections, "connections", 1, 1, 64)? as usize;
    if p.servers.get_ref().is_empty() {
        return Err(cx.err(p.servers.span(), format!("pool {name:?} has no servers")));
    }
    let mut servers: Vec<Server> = Vec::new();
    for s in p.servers.get_ref() {
        let server = parse_server(s.get_ref()).map_err(|m| cx.err(s.span(), m))?;
        if servers.iter().any(|o| o.addr == server.addr) {
            return Err(cx.err(s.span(), format!("server {} is listed twice", server.label)));
        }
        servers.push(server);
    }
    let weights = pool_weights(cx, name, &distribution, p, servers.len())?;
    let read_timeout = match &p.read_ms {
        None => None,
        Some(_) => Some(Duration::from_millis(
            cx.int(&p.read_ms, "read_ms", 1000, 1, 86_400_000)? as u64,
        )),
    };
    let eject = match (&p.eject_after, &p.eject_retry_ms) {
        (None, None) => None,
        (None, Some(r)) => {
            return Err(cx.err(r.span(), "eject_retry_ms goes with eject_after"));
        }
        (Some(_), _) => {
            let retry = Duration::from_millis(cx.int(
                &p.eject_retry_ms,
                "eject_retry_ms",
                30_000,
                1,
                86_400_000,
            )? as u64);
            Some(Health {
                tko_after: cx.int(&p.eject_after, "eject_after", 2, 1, 1_000_000)? as u32,
                probe_min: retry,
                probe_max: retry,
            })
        }
    };
    let tls = match &p.tls {
        None => None,
        Some(t) => {
            let r = t.get_ref();
            let client = match (&r.cert, &r.key) {
                (None, None) => None,
                (Some(c), Some(k)) => {
                    Some((PathBuf::from(c.get_ref()), PathBuf::from(k.get_ref())))
                }
                (Some(c), None) => {
                    return Err(cx.err(
                        c.span(),
                        "cert needs key (the client certificate's private key)",
                    ))
                }
                (None, Some(k)) => {
                    return Err(cx.err(k.span(), "key needs cert (the client certificate)"))
                }
            };
            if let Some(n) = &r.server_name {
                marker::tls::server_name(n.get_ref()).map_err(|e| cx.err(n.span(), e.0))?;
            }
            Some(PoolTls {
                at: cx.at(t.span()),
                ca: PathBuf::from(r.ca.get_ref()),
                server_name: r.server_name.as_ref().map(|n| n.get_ref().clone()),
                client,
            })
        }
    };
    Ok(Pool {
        name: name.clone(),
        tls,
        distribution,
        hash,
        hash_tag,
        weights,
        read_timeout,
        eject,
        connections,
        servers,
    })
}

/// `listen` + `route`, and `[listeners."addr"] route = ...`: every address to bind, which
/// root route serves each, whether it requires TLS, and the roots as written. Each address
/// once; at least one.
#[allow(clippy::type_complexity)]
fn listeners(
    cx: &Ctx,
    raw: &mut RawConfig,
) -> Result<(Vec<SocketAddr>, Vec<usize>, Vec<bool>, Vec<RawValue>), ConfigError> {
    let (mut listen, mut which, mut tls, mut roots) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    match (raw.listen.take(), raw.route.take()) {
        (Some(l), Some(r)) => {
            if l.get_ref().is_empty() {
                return Err(cx.err(l.span(), "listen needs at least one address"));
            }
            for a in l.get_ref() {
                listen.push(socket_addr(cx, a)?);
                which.push(0);
                tls.push(false);
            }
            roots.push(cx.raw(r));
        }
        (Some(l), None) => {
            return Err(cx.err(l.span(), "listen needs a route (a pool or route name, or a table)"))
        }
        (None, Some(r)) => {
            return Err(cx.err(r.span(), "route serves the listen addresses: listen = [...] is missing"))
        }
        (None, None) if raw.listeners.is_empty() => {
            return Err(ConfigError {
                file: cx.file.to_string(),
                line: 0,
                column: 0,
                message: "nothing to listen on: give listen = [...] with route, or [listeners.\"addr\"] tables".into(),
            })
        }
        (None, None) => {}
    }
    for (addr, l) in std::mem::take(&mut raw.listeners) {
        let a = addr.parse::<SocketAddr>().map_err(|_| {
            cx.err(
                l.span(),
                format!("listener {addr:?} is not an ip:port address"),
            )
        })?;
        if listen.contains(&a) {
            return Err(cx.err(l.span(), format!("{addr} is listened on twice")));
        }
        listen.push(a);
        which.push(roots.len());
        let l = l.into_inner();
        tls.push(l.tls);
        roots.push(cx.raw(l.route));
    }
    Ok((listen, which, tls, roots))
}

/// `weights` goes with `distribution = "weighted_ch3"` and only with it: one fraction in
/// `[0, 1]` per server (mcrouter logs and pads a short list with 0.5; a config here must
/// say what it means).
fn pool_weights(
    cx: &Ctx,
    name: &str,
    distribution: &str,
    p: &RawPool,
    servers: usize,
) -> Result<Vec<f64>, ConfigError> {
    let Some(w) = &p.weights else {
        if distribution == "weighted_ch3" {
            return Err(cx.err(
                p.servers.span(),
                format!("pool {name:?}: distribution \"weighted_ch3\" needs weights = [...], one per server in [0, 1]"),
            ));
        }
        return Ok(Vec::new());
    };
    if distribution != "weighted_ch3" {
        return Err(cx.err(
            w.span(),
            format!("pool {name:?}: weights go with distribution = \"weighted_ch3\" (server weights are written host:port:weight)"),
        ));
    }
    if w.get_ref().len() != servers {
        return Err(cx.err(
            w.span(),
            format!(
                "pool {name:?} has {servers} servers but {} weights",
                w.get_ref().len()
            ),
        ));
    }
    if let Some(bad) = w.get_ref().iter().find(|x| !(0.0..=1.0).contains(*x)) {
        return Err(cx.err(w.span(), format!("weight {bad} is not in [0, 1]")));
    }
    Ok(w.get_ref().clone())
}

impl Pool {
    /// The placement a configured pool describes (client traffic and the invalidation
    /// fan-out must agree on it). libmemcached's non-weighted ketama names points by
    /// `host:port` as written; twemproxy's ketama by its own rule (`ketama_name`).
    pub fn placement(&self) -> Placement {
        let names: Vec<(String, u32)> = self
            .servers
            .iter()
            .map(|s| {
                let name = if self.distribution == "libmemcached_ketama" {
                    s.label.clone()
                } else {
                    s.ketama_name.clone()
                };
                (name, s.weight)
            })
            .collect();
        let mut placement = Placement::new(self.hash, &self.distribution, &names);
        if self.distribution == "weighted_ch3" {
            placement.dist = crate::placement::Distribution::WeightedCh3(self.weights.clone());
        }
        if self.eject.is_some() {
            placement = placement.ejecting(&self.distribution, names);
        }
        placement.with_hash_tag(self.hash_tag)
    }
}

/// `host:port[:weight] [name]`, twemproxy's server syntax.
fn parse_server(s: &str) -> Result<Server, String> {
    let usage = "expected \"host:port[:weight] [name]\"";
    let (addr_part, name) = match s.trim().split_once(' ') {
        Some((a, n)) if !n.trim().is_empty() => (a, Some(n.trim().to_string())),
        _ => (s.trim(), None),
    };
    let parts: Vec<&str> = addr_part.split(':').collect();
    let (host, port, weight) = match parts.as_slice() {
        [h, p] => (*h, *p, "1"),
        [h, p, w] => (*h, *p, *w),
        _ => return Err(format!("server {s:?}: {usage}")),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("server {s:?}: bad port {port:?}"))?;
    let weight: u32 = weight
        .parse()
        .ok()
        .filter(|&w| (1..=10_000).contains(&w))
        .ok_or_else(|| format!("server {s:?}: weight must be 1..=10000, not {weight:?}"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("server {s:?}: cannot resolve {host:?}"))?;
    // twemproxy: the name if given; else host alone for 11211 (libmemcached), else host:port.
    let ketama_name = name.unwrap_or_else(|| {
        if port == 11211 {
            host.to_string()
        } else {
            format!("{host}:{port}")
        }
    });
    Ok(Server {
        label: format!("{host}:{port}"),
        host: host.to_string(),
        addr,
        weight,
        ketama_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = ["127.0.0.1:11311"]
route = "main"

[pools.main]
servers = ["127.0.0.1:11211", "127.0.0.1:11212:2 b"]
"#;

    #[test]
    fn weighted_ch3_weights_are_checked() {
        let ok = format!("{GOOD}distribution = \"weighted_ch3\"\nweights = [1.0, 0.5]\n");
        let c = Config::parse("r.toml", &ok).unwrap();
        assert_eq!(c.pools[0].weights, vec![1.0, 0.5]);
        for (bad, says) in [
            ("distribution = \"weighted_ch3\"\n", "needs weights"),
            (
                "distribution = \"weighted_ch3\"\nweights = [1.0]\n",
                "2 servers but 1 weights",
            ),
            (
                "distribution = \"weighted_ch3\"\nweights = [1.0, 1.5]\n",
                "not in [0, 1]",
            ),
            ("weights = [1.0, 1.0]\n", "go with distribution"),
        ] {
            let e = Config::parse("r.toml", &format!("{GOOD}{bad}")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_settings_parse_and_are_checked() {
        let text = format!(
            "{GOOD}[pools.main.tls]\nca = \"/ca.pem\"\n\
             [tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n\
             [listeners.\"127.0.0.1:11312\"]\nroute = \"main\"\ntls = true\n"
        );
        let c = Config::parse("r.toml", &text).unwrap();
        assert_eq!(c.listen_tls, vec![false, true]);
        let t = c.tls.unwrap();
        assert_eq!(t.cert, PathBuf::from("/c.pem"));
        assert_eq!(t.client_ca, None);
        assert_eq!(t.handshake_timeout, Duration::from_secs(5));
        let p = c.pools[0].tls.as_ref().unwrap();
        assert_eq!((p.server_name.as_deref(), p.client.is_none()), (None, true));
        assert_eq!(c.pools[0].servers[0].host, "127.0.0.1");
        for (bad, says) in [
            (
                "[listeners.\"127.0.0.1:11312\"]\nroute = \"main\"\ntls = true\n",
                "no [tls] table",
            ),
            (
                "[pools.main.tls]\nca = \"/ca\"\ncert = \"/c\"\n",
                "cert needs key",
            ),
            (
                "[pools.main.tls]\nca = \"/ca\"\nserver_name = \"bad name!\"\n",
                "neither a DNS name nor an IP address",
            ),
            (
                "[pools.main.tls]\nca = \"/ca\"\nverify = false\n",
                "unknown field",
            ),
        ] {
            let e = Config::parse("r.toml", &format!("{GOOD}{bad}")).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn good_config() {
        let c = Config::parse("r.toml", GOOD).unwrap();
        assert_eq!(c.pools[0].servers[0].ketama_name, "127.0.0.1");
        assert_eq!(c.pools[0].servers[1].ketama_name, "b");
        assert_eq!(c.pools[0].servers[1].weight, 2);
        assert_eq!(c.limits.parse.max_item_size, 1 << 20);
    }

    #[test]
    fn errors_name_the_line() {
        // The route tree is kept as written, with where (the route layer validates it).
        let c = Config::parse("r.toml", GOOD).unwrap();
        assert_eq!(c.routes.roots[0].at, At { line: 3, column: 9 });
        assert_eq!(c.routes.roots[0].kind, RawKind::String("main".into()));

        let bad = GOOD.replace("127.0.0.1:11212:2 b", "127.0.0.1:x");
        let e = Config::parse("r.toml", &bad).unwrap_err();
        assert_eq!(e.line, 6, "{e}");

        let bad = format!("{GOOD}distribution = \"weird\"\n");
        let e = Config::parse("r.toml", &bad).unwrap_err();
        assert_eq!(e.line, 7, "{e}");

        let e = Config::parse("r.toml", "listen = [\n").unwrap_err();
        assert!(e.line >= 1, "{e}");

        let bad = format!("{GOOD}bogus = 1\n");
        let e = Config::parse("r.toml", &bad).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
