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
//! distribution = "ketama"           # ketama | modula | random
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
//! ```
//!
//! Route trees (`[route] type = ...`, `[routes.NAME]`) are parsed and validated in
//! [`crate::route::spec`].

pub mod invalidation;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::placement::hash::HashFn;
use crate::placement::Placement;
use crate::protocol;
use crate::route::spec::{RawRouteRef, Resolver, RouteSpec};

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<Vec<Spanned<String>>>,
    admin: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    route: Spanned<RawRouteRef>,
    /// Named routes that `route` and other routes may refer to.
    #[serde(default)]
    routes: BTreeMap<String, Spanned<RawRouteRef>>,
    health: Option<Spanned<RawHealth>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    pools: BTreeMap<String, Spanned<RawPool>>,
    /// The receiving end of squeal's invalidations (see `crate::invalidation`).
    invalidation: Option<Spanned<invalidation::InvalidationConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    servers: Spanned<Vec<Spanned<String>>>,
    distribution: Option<Spanned<String>>,
    hash: Option<Spanned<String>>,
    hash_tag: Option<Spanned<String>>,
    connections: Option<Spanned<i64>>,
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
    pub admin: Option<SocketAddr>,
    pub workers: usize,
    /// The route tree serving client traffic.
    pub route: RouteSpec,
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
    pub connections: usize,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// As written (`host:port`), for stats.
    pub label: String,
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
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
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

        if raw.listen.get_ref().is_empty() {
            return Err(cx.err(raw.listen.span(), "listen needs at least one address"));
        }
        let mut listen = Vec::new();
        for l in raw.listen.get_ref() {
            listen.push(socket_addr(&cx, l)?);
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
            return Err(cx.err(
                raw.route.span(),
                "no [pools.NAME] table: at least one pool is needed",
            ));
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
        let err = |span: Range<usize>, msg: String| cx.err(span, msg);
        let route = Resolver::new(&err, &names, &raw.routes).resolve(&raw.route)?;
        // Named routes nobody uses are still checked.
        for r in raw.routes.values() {
            Resolver::new(&err, &names, &raw.routes).resolve(r)?;
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
                Some(inv.get_ref().clone())
            }
        };
        Ok(Config {
            listen,
            admin,
            workers,
            route,
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
            if ["ketama", "libmemcached_ketama", "modula", "random", "ch3"]
                .contains(&d.get_ref().as_str()) =>
        {
            d.get_ref().clone()
        }
        Some(d) => {
            return Err(cx.err(
                d.span(),
                format!(
                "unknown distribution {:?} (ketama, libmemcached_ketama, modula, ch3 or random)",
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
    Ok(Pool {
        name: name.clone(),
        distribution,
        hash,
        hash_tag,
        connections,
        servers,
    })
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
        Placement::new(self.hash, &self.distribution, &names).with_hash_tag(self.hash_tag)
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
    fn good_config() {
        let c = Config::parse("r.toml", GOOD).unwrap();
        assert_eq!(c.pools[0].servers[0].ketama_name, "127.0.0.1");
        assert_eq!(c.pools[0].servers[1].ketama_name, "b");
        assert_eq!(c.pools[0].servers[1].weight, 2);
        assert_eq!(c.limits.parse.max_item_size, 1 << 20);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("route = \"main\"", "route = \"nope\"");
        let e = Config::parse("r.toml", &bad).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("not defined"), "{e}");

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
