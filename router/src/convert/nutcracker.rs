//! twemproxy's `nutcracker.yml`, read as it is and turned into the router's TOML, so a
//! fleet can swap nutcracker for the router without rewriting its config (and without a
//! cold cache: placement is twemproxy's, see `route/hash`).
//!
//! Every pool key twemproxy documents is either mapped or refused with a message saying
//! why; nothing is dropped silently. The mapping:
//!
//! | nutcracker | router |
//! |---|---|
//! | `listen` | `[listeners."addr"] route = "<pool>"` (`listen` + `route` for a single pool) |
//! | `hash`, `hash_tag`, `distribution` | the pool's `hash`, `hash_tag`, `distribution` |
//! | `timeout` | the pool's `read_ms` (nutcracker's default, no timeout, becomes 1 hour) |
//! | `server_connections` | the pool's `connections` |
//! | `auto_eject_hosts`, `server_failure_limit`, `server_retry_timeout` | the pool's `eject_after` and `eject_retry_ms` (ejected servers' keys move to the rest, as in twemproxy) |
//! | `servers` | the pool's `servers` (same `host:port:weight name` syntax) |
//! | `client_connections` | `[limits] max_connections` (their sum; 0 = unlimited) |
//! | `backlog`, `preconnect`, `tcpkeepalive` | accepted; the router always uses a 1024 backlog, connects at start and leaves keepalive to the OS |
//! | `redis`, `redis_auth`, `redis_db` | refused: the router speaks memcached only |

use std::fmt::Write as _;

use yaml_rust2::{Yaml, YamlLoader};

/// nutcracker's `timeout` default is "wait forever"; the router needs a bound.
const NO_TIMEOUT_MS: i64 = 3_600_000;
/// twemproxy's defaults for the ejection settings.
const DEFAULT_FAILURE_LIMIT: i64 = 2;
const DEFAULT_RETRY_MS: i64 = 30_000;

/// Hashes twemproxy has that the router does not compute (yet): refused by name.
const UNSUPPORTED_HASHES: &[&str] = &["crc16", "hsieh", "murmur", "jenkins"];

/// One nutcracker pool, as read.
#[derive(Debug, Clone, PartialEq)]
struct Pool {
    name: String,
    listen: String,
    hash: Option<String>,
    hash_tag: Option<String>,
    distribution: Option<String>,
    timeout_ms: Option<i64>,
    connections: Option<i64>,
    eject: Option<(i64, i64)>,
    client_connections: i64,
    servers: Vec<String>,
}

/// Converts the text of a `nutcracker.yml` into router TOML. `Err` says which pool and key
/// cannot be mapped, and why.
pub fn to_toml(yaml: &str) -> Result<String, String> {
    let docs = YamlLoader::load_from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let [doc] = docs.as_slice() else {
        return Err(format!(
            "expected one YAML document (pools by name), found {}",
            docs.len()
        ));
    };
    let Yaml::Hash(pools) = doc else {
        return Err("expected a map of pools by name at the top level".into());
    };
    let mut read = Vec::new();
    for (name, body) in pools {
        let name = name
            .as_str()
            .ok_or_else(|| format!("pool name {name:?} is not a string"))?;
        read.push(pool(name, body).map_err(|e| format!("pool {name:?}: {e}"))?);
    }
    if read.is_empty() {
        return Err("no pools".into());
    }
    Ok(render(&read))
}

fn pool(name: &str, body: &Yaml) -> Result<Pool, String> {
    let Yaml::Hash(h) = body else {
        return Err("expected a map of settings".into());
    };
    let mut p = Pool {
        name: name.to_string(),
        listen: String::new(),
        hash: None,
        hash_tag: None,
        distribution: None,
        timeout_ms: None,
        connections: None,
        eject: None,
        client_connections: 0,
        servers: Vec::new(),
    };
    let (mut auto_eject, mut failure_limit, mut retry_ms) = (false, None, None);
    for (k, v) in h {
        let key = k
            .as_str()
            .ok_or_else(|| format!("key {k:?} is not a string"))?;
        match key {
            "listen" => p.listen = listen(string(key, v)?)?,
            "hash" => {
                let h = string(key, v)?;
                if UNSUPPORTED_HASHES.contains(&h.as_str()) {
                    return Err(format!(
                        "hash {h:?} is not supported by the router (md5, crc32, crc32a, \
                         fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, one_at_a_time are)"
                    ));
                }
                p.hash = Some(h);
            }
            "hash_tag" => p.hash_tag = Some(string(key, v)?),
            "distribution" => p.distribution = Some(string(key, v)?),
            "timeout" => p.timeout_ms = Some(int(key, v)?),
            "server_connections" => p.connections = Some(int(key, v)?),
            "auto_eject_hosts" => auto_eject = boolean(key, v)?,
            "server_failure_limit" => failure_limit = Some(int(key, v)?),
            "server_retry_timeout" => retry_ms = Some(int(key, v)?),
            "client_connections" => p.client_connections = int(key, v)?,
            "servers" => {
                let Yaml::Array(list) = v else {
                    return Err("servers: expected a list".into());
                };
                for s in list {
                    p.servers.push(string("servers", s)?);
                }
            }
            "backlog" | "tcpkeepalive" | "preconnect" => {}
            "redis" => {
                if boolean(key, v)? {
                    return Err("redis: true: the router speaks memcached only".into());
                }
            }
            "redis_auth" | "redis_db" => {
                return Err(format!("{key}: the router speaks memcached only"));
            }
            other => return Err(format!("unknown key {other:?}")),
        }
    }
    if p.listen.is_empty() {
        return Err("no listen address".into());
    }
    if p.servers.is_empty() {
        return Err("no servers".into());
    }
    if auto_eject {
        p.eject = Some((
            failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT),
            retry_ms.unwrap_or(DEFAULT_RETRY_MS),
        ));
    }
    Ok(p)
}

/// `host:port`; nutcracker also takes a unix socket path (`/path[:perm]`), which the
/// router does not listen on.
fn listen(s: String) -> Result<String, String> {
    if s.starts_with('/') {
        return Err(format!(
            "listen {s:?}: unix sockets are not supported, use host:port"
        ));
    }
    Ok(s)
}

fn string(key: &str, v: &Yaml) -> Result<String, String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        _ => Err(format!("{key}: expected a string, got {v:?}")),
    }
}

fn int(key: &str, v: &Yaml) -> Result<i64, String> {
    match v {
        Yaml::Integer(i) if *i >= 0 => Ok(*i),
        _ => Err(format!("{key}: expected a non-negative integer, got {v:?}")),
    }
}

fn boolean(key: &str, v: &Yaml) -> Result<bool, String> {
    match v {
        Yaml::Boolean(b) => Ok(*b),
        _ => Err(format!("{key}: expected true or false, got {v:?}")),
    }
}

/// A TOML string literal (basic string, escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn render(pools: &[Pool]) -> String {
    let mut out = String::from("# converted from nutcracker.yml by squeal-router\n");
    if let [only] = pools {
        let _ = writeln!(out, "listen = [{}]", quoted(&only.listen));
        let _ = writeln!(out, "route = {}", quoted(&only.name));
    }
    let clients: i64 = pools.iter().map(|p| p.client_connections).sum();
    if pools.iter().all(|p| p.client_connections > 0) {
        let _ = writeln!(out, "\n[limits]\nmax_connections = {clients}");
    }
    if pools.len() > 1 {
        for p in pools {
            let _ = writeln!(
                out,
                "\n[listeners.{}]\nroute = {}",
                quoted(&p.listen),
                quoted(&p.name)
            );
        }
    }
    for p in pools {
        let _ = writeln!(out, "\n[pools.{}]", quoted(&p.name));
        if let Some(h) = &p.hash {
            let _ = writeln!(out, "hash = {}", quoted(h));
        }
        if let Some(d) = &p.distribution {
            let _ = writeln!(out, "distribution = {}", quoted(d));
        }
        if let Some(t) = &p.hash_tag {
            let _ = writeln!(out, "hash_tag = {}", quoted(t));
        }
        let _ = writeln!(out, "read_ms = {}", p.timeout_ms.unwrap_or(NO_TIMEOUT_MS));
        if let Some(c) = p.connections {
            let _ = writeln!(out, "connections = {c}");
        }
        if let Some((after, retry)) = p.eject {
            let _ = writeln!(out, "eject_after = {after}\neject_retry_ms = {retry}");
        }
        let servers: Vec<String> = p.servers.iter().map(|s| quoted(s)).collect();
        let _ = writeln!(out, "servers = [{}]", servers.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_POOLS: &str = "
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  hash_tag: \"{}\"
  distribution: ketama
  auto_eject_hosts: true
  redis: false
  timeout: 400
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:11212:1 a
   - 127.0.0.1:11213:2
beta:
  listen: 127.0.0.1:22122
  distribution: modula
  backlog: 1024
  preconnect: true
  server_connections: 2
  servers:
   - 127.0.0.1:11214:1
";

    #[test]
    fn every_pool_key_is_mapped() {
        let t = to_toml(TWO_POOLS).unwrap();
        let v: toml::Table = t.parse().unwrap();
        assert_eq!(
            v["listeners"]["127.0.0.1:22121"]["route"].as_str(),
            Some("alpha")
        );
        assert_eq!(
            v["listeners"]["127.0.0.1:22122"]["route"].as_str(),
            Some("beta")
        );
        let a = &v["pools"]["alpha"];
        assert_eq!(a["hash"].as_str(), Some("fnv1a_64"));
        assert_eq!(a["hash_tag"].as_str(), Some("{}"));
        assert_eq!(a["read_ms"].as_integer(), Some(400));
        assert_eq!(a["eject_after"].as_integer(), Some(1));
        assert_eq!(a["eject_retry_ms"].as_integer(), Some(2000));
        assert_eq!(a["servers"][0].as_str(), Some("127.0.0.1:11212:1 a"));
        let b = &v["pools"]["beta"];
        assert_eq!(b["distribution"].as_str(), Some("modula"));
        assert_eq!(b["connections"].as_integer(), Some(2));
        assert_eq!(b["read_ms"].as_integer(), Some(NO_TIMEOUT_MS));
        assert!(
            b.get("eject_after").is_none(),
            "auto_eject_hosts defaults to false"
        );
        assert!(v.get("listen").is_none());
    }

    #[test]
    fn one_pool_uses_listen_and_route() {
        let t = to_toml("p:\n  listen: 127.0.0.1:1\n  servers: [\"127.0.0.1:2:1\"]\n").unwrap();
        let v: toml::Table = t.parse().unwrap();
        assert_eq!(v["listen"][0].as_str(), Some("127.0.0.1:1"));
        assert_eq!(v["route"].as_str(), Some("p"));
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_by_name() {
        for (yaml, says) in [
            (
                "p:\n  listen: a:1\n  redis: true\n  servers: [x]\n",
                "memcached only",
            ),
            (
                "p:\n  listen: a:1\n  hash: murmur\n  servers: [x]\n",
                "murmur",
            ),
            (
                "p:\n  listen: /tmp/s.sock\n  servers: [x]\n",
                "unix sockets",
            ),
            (
                "p:\n  listen: a:1\n  colour: red\n  servers: [x]\n",
                "unknown key \"colour\"",
            ),
            ("p:\n  servers: [x]\n", "no listen"),
            ("p:\n  listen: a:1\n", "no servers"),
            (
                "p:\n  listen: a:1\n  timeout: soon\n  servers: [x]\n",
                "timeout",
            ),
            ("- a\n- b\n", "map of pools"),
            ("p: [\n", "not YAML"),
        ] {
            let e = to_toml(yaml).unwrap_err();
            assert!(e.contains(says), "{yaml:?}: {e}");
        }
    }
}
