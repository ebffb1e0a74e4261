//! The common subset of mcrouter's JSON config, turned into the router's TOML so a fleet
//! can leave mcrouter without rewriting its route trees by hand (and, with `Ch3` and
//! `WeightedCh3` placement, without a cold cache).
//!
//! Understood: `pools` (servers, in order), `route` or a `routes` list with one entry,
//! `named_handles`, and the route types `PoolRoute` (hash `Ch3` — mcrouter's default — or
//! `WeightedCh3` with weights), `AllSyncRoute`, `AllAsyncRoute`, `AllInitialRoute`,
//! `FailoverRoute`, `FailoverWithExptimeRoute`, `MissFailoverRoute`, `WarmUpRoute`,
//! `PrefixSelectorRoute` and `OperationSelectorRoute`, in object form or as
//! `"PoolRoute|name"` strings. Anything else is refused with its path in the JSON and the
//! reason, never dropped. Where the router's route does not behave exactly as mcrouter's,
//! the TOML carries a comment saying how (collected in [`Converted::notes`]). mcrouter's
//! listening port is a command-line flag, so the TOML listens on its default,
//! `127.0.0.1:5000`: edit `listen` in the printed TOML (`--print-toml`) to change it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// The TOML and what differs from mcrouter's behaviour.
#[derive(Debug)]
pub struct Converted {
    pub toml: String,
    pub notes: Vec<String>,
}

/// A route or value in the router's TOML, rendered inline.
#[derive(Debug, Clone, PartialEq)]
enum Toml {
    Str(String),
    Int(i64),
    Float(f64),
    Array(Vec<Toml>),
    Table(Vec<(String, Toml)>),
}

impl Toml {
    fn render(&self, out: &mut String) {
        match self {
            Toml::Str(s) => out.push_str(&toml::Value::String(s.clone()).to_string()),
            Toml::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Toml::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            Toml::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.render(out);
                }
                out.push(']');
            }
            Toml::Table(t) => {
                out.push_str("{ ");
                for (i, (k, v)) in t.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&key(k));
                    out.push_str(" = ");
                    v.render(out);
                }
                out.push_str(" }");
            }
        }
    }
}

/// A bare key when TOML allows it, else a quoted one.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

fn table(entries: Vec<(&str, Toml)>) -> Toml {
    Toml::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Placement a `PoolRoute` asked of a pool (mcrouter puts the hash on the route; the
/// router on the pool, so two routes hashing one pool differently are refused).
#[derive(Debug, Clone, PartialEq)]
enum Hash {
    Ch3,
    WeightedCh3(Vec<f64>),
}

struct Converter<'a> {
    pools: &'a serde_json::Map<String, Value>,
    named: BTreeMap<String, &'a Value>,
    hashes: BTreeMap<String, Hash>,
    notes: Vec<String>,
}

/// Converts mcrouter JSON text into router TOML.
pub fn to_toml(json: &str) -> Result<Converted, String> {
    let root: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(root) = &root else {
        return Err("expected a JSON object at the top level".into());
    };
    for k in root.keys() {
        if !["pools", "route", "routes", "named_handles"].contains(&k.as_str()) {
            return Err(format!(
                "{k:?}: not supported by the converter (pools, route, routes, named_handles are)"
            ));
        }
    }
    static EMPTY: std::sync::OnceLock<serde_json::Map<String, Value>> = std::sync::OnceLock::new();
    let pools = match root.get("pools") {
        Some(Value::Object(p)) => p,
        Some(_) => return Err("pools: expected an object of pools by name".into()),
        None => EMPTY.get_or_init(serde_json::Map::new),
    };
    let mut cv = Converter {
        pools,
        named: BTreeMap::new(),
        hashes: BTreeMap::new(),
        notes: Vec::new(),
    };
    if let Some(handles) = root.get("named_handles") {
        let Value::Array(list) = handles else {
            return Err("named_handles: expected a list of routes with a \"name\"".into());
        };
        for (i, h) in list.iter().enumerate() {
            let name = h
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("named_handles[{i}]: no \"name\""))?;
            cv.named.insert(name.to_string(), h);
        }
    }
    let top = match (root.get("route"), root.get("routes")) {
        (Some(r), None) => r,
        (None, Some(Value::Array(list))) if list.len() == 1 => {
            let entry = &list[0];
            entry
                .get("route")
                .ok_or("routes[0]: no \"route\"".to_string())?
        }
        (None, Some(_)) => {
            return Err(
                "routes: only a single entry can be converted (the router has no \
                        /region/cluster/ routing prefixes; give one config per cluster)"
                    .into(),
            )
        }
        (Some(_), Some(_)) => return Err("both route and routes are given".into()),
        (None, None) => return Err("no route".into()),
    };
    let route = cv.route(top, "route")?;
    let mut named: Vec<(String, Toml)> = Vec::new();
    for (name, h) in cv.named.clone() {
        named.push((
            name.clone(),
            cv.route_object(h, &format!("named_handles.{name}"))?,
        ));
    }
    cv.render(route, named)
}

impl<'a> Converter<'a> {
    fn route(&mut self, v: &'a Value, at: &str) -> Result<Toml, String> {
        match v {
            Value::String(s) => self.route_string(s, at),
            Value::Object(_) => self.route_object(v, at),
            _ => Err(format!("{at}: a route is a string or an object")),
        }
    }

    /// `"PoolRoute|name"`, `"Pool|name"` or the name of a named handle.
    fn route_string(&mut self, s: &str, at: &str) -> Result<Toml, String> {
        if let Some((ty, arg)) = s.split_once('|') {
            return match ty {
                "PoolRoute" | "Pool" => self.pool_ref(arg, Hash::Ch3, at),
                other => Err(format!(
                    "{at}: {other:?} in string form is not supported (PoolRoute|name is)"
                )),
            };
        }
        if self.named.contains_key(s) {
            return Ok(Toml::Str(s.to_string()));
        }
        Err(format!(
            "{at}: {s:?} is neither \"PoolRoute|pool\" nor a named handle"
        ))
    }

    fn pool_ref(&mut self, name: &str, hash: Hash, at: &str) -> Result<Toml, String> {
        if !self.pools.contains_key(name) {
            return Err(format!("{at}: pool {name:?} is not defined in pools"));
        }
        match self.hashes.get(name) {
            Some(h) if *h != hash => {
                return Err(format!(
                    "{at}: pool {name:?} is hashed two ways ({h:?} and {hash:?}); the router \
                     places a pool one way — define two pools"
                ))
            }
            _ => {
                self.hashes.insert(name.to_string(), hash);
            }
        }
        Ok(Toml::Str(name.to_string()))
    }

    fn children(&mut self, v: Option<&'a Value>, at: &str) -> Result<Vec<Toml>, String> {
        match v {
            Some(Value::Array(list)) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, c)| self.route(c, &format!("{at}[{i}]")))
                .collect(),
            Some(one @ (Value::String(_) | Value::Object(_))) => Ok(vec![self.route(one, at)?]),
            _ => Err(format!("{at}: expected a non-empty list of routes")),
        }
    }

    fn route_object(&mut self, v: &'a Value, at: &str) -> Result<Toml, String> {
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}: a route object needs a \"type\""))?;
        let field = |k: &str| v.get(k);
        let known: &[&str] = match ty {
            "PoolRoute" => &["pool", "hash"],
            "AllSyncRoute" | "AllAsyncRoute" | "AllInitialRoute" | "FailoverRoute"
            | "MissFailoverRoute" => &["children"],
            "FailoverWithExptimeRoute" => &["normal", "failover", "failover_exptime"],
            "WarmUpRoute" => &["cold", "warm", "exptime"],
            "PrefixSelectorRoute" => &["policies", "wildcard"],
            "OperationSelectorRoute" => &["operation_policies", "default_policy"],
            other => {
                return Err(format!(
                    "{at}: route type {other:?} is not supported by the converter"
                ))
            }
        };
        if let Value::Object(o) = v {
            for k in o.keys() {
                if k != "type" && k != "name" && !known.contains(&k.as_str()) {
                    return Err(format!("{at}: {ty} key {k:?} is not supported"));
                }
            }
        }
        let sub = |k: &str| format!("{at}.{k}");
        Ok(match ty {
            "PoolRoute" => {
                let hash = self.hash(field("hash"), &sub("hash"))?;
                match field("pool") {
                    Some(Value::String(name)) => self.pool_ref(name, hash, &sub("pool"))?,
                    _ => {
                        return Err(format!(
                            "{}: give the pool by name (inline pools are not supported)",
                            sub("pool")
                        ))
                    }
                }
            }
            "AllSyncRoute" | "AllAsyncRoute" | "AllInitialRoute" | "MissFailoverRoute" => {
                let ours = match ty {
                    "AllSyncRoute" => "all-sync",
                    "AllAsyncRoute" => {
                        self.notes.push(format!(
                            "{at}: AllAsyncRoute answers with the first good reply here; \
                             mcrouter answers at once with a default reply"
                        ));
                        "all-async"
                    }
                    "AllInitialRoute" => "all-initial",
                    _ => "miss-failover",
                };
                let children = self.children(field("children"), &sub("children"))?;
                table(vec![
                    ("type", Toml::Str(ours.into())),
                    ("children", Toml::Array(children)),
                ])
            }
            "FailoverRoute" => {
                let children = self.children(field("children"), &sub("children"))?;
                table(vec![
                    ("type", Toml::Str("failover".into())),
                    ("children", Toml::Array(children)),
                    // mcrouter's FailoverRoute does not cap TTLs.
                    ("gutter_ttl", Toml::Int(0)),
                ])
            }
            "FailoverWithExptimeRoute" => {
                let normal = self.route(
                    field("normal").ok_or_else(|| format!("{at}: no \"normal\""))?,
                    &sub("normal"),
                )?;
                let mut children = vec![normal];
                children.extend(self.children(field("failover"), &sub("failover"))?);
                let ttl = match field("failover_exptime") {
                    None => 60,
                    Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n > 0) => {
                        n.as_i64().unwrap_or(60)
                    }
                    Some(_) => {
                        return Err(format!(
                            "{}: expected a positive number of seconds",
                            sub("failover_exptime")
                        ))
                    }
                };
                table(vec![
                    ("type", Toml::Str("failover".into())),
                    ("children", Toml::Array(children)),
                    ("gutter_ttl", Toml::Int(ttl)),
                ])
            }
            "WarmUpRoute" => {
                let cold = self.route(
                    field("cold").ok_or_else(|| format!("{at}: no \"cold\""))?,
                    &sub("cold"),
                )?;
                let warm = self.route(
                    field("warm").ok_or_else(|| format!("{at}: no \"warm\""))?,
                    &sub("warm"),
                )?;
                if field("exptime").is_some() {
                    self.notes.push(format!(
                        "{at}: WarmUpRoute's exptime is not used: the router backfills the cold \
                         cluster with each item's remaining TTL read from the warm one"
                    ));
                }
                table(vec![
                    ("type", Toml::Str("warmup".into())),
                    ("cold", cold),
                    ("warm", warm),
                ])
            }
            "PrefixSelectorRoute" => {
                let Some(Value::Object(policies)) = field("policies") else {
                    return Err(format!(
                        "{}: expected an object of prefix -> route",
                        sub("policies")
                    ));
                };
                let mut prefixes = Vec::new();
                for (p, r) in policies {
                    prefixes.push((p.clone(), self.route(r, &format!("{at}.policies.{p}"))?));
                }
                let mut t = vec![
                    ("type".to_string(), Toml::Str("prefix".into())),
                    ("prefixes".to_string(), Toml::Table(prefixes)),
                ];
                if let Some(w) = field("wildcard") {
                    t.push(("default".into(), self.route(w, &sub("wildcard"))?));
                }
                Toml::Table(t)
            }
            _ => self.operation(v, at)?,
        })
    }

    /// `OperationSelectorRoute`: mcrouter names single operations, the router groups them
    /// (set-like, get-like, arithmetic); a group whose members mcrouter routes differently
    /// is refused.
    fn operation(&mut self, v: &'a Value, at: &str) -> Result<Toml, String> {
        const GROUPS: &[(&str, &[&str])] = &[
            ("get", &["get", "gets", "gat", "gats", "metaget"]),
            (
                "set",
                &[
                    "set", "add", "replace", "cas", "append", "prepend", "metaset",
                ],
            ),
            ("delete", &["delete", "metadelete"]),
            ("arith", &["incr", "decr", "metaarithmetic"]),
            ("touch", &["touch"]),
            ("flush_all", &["flushall", "flush_all"]),
        ];
        let mut t = vec![("type".to_string(), Toml::Str("operation".into()))];
        let policies = match v.get("operation_policies") {
            Some(Value::Object(p)) => p.clone(),
            None => serde_json::Map::new(),
            Some(_) => return Err(format!("{at}.operation_policies: expected an object")),
        };
        for op in policies.keys() {
            if !GROUPS.iter().any(|(_, ops)| ops.contains(&op.as_str())) {
                return Err(format!(
                    "{at}.operation_policies: operation {op:?} is not known"
                ));
            }
        }
        for (group, ops) in GROUPS {
            let given: Vec<(&str, &Value)> = ops
                .iter()
                .filter_map(|op| policies.get(*op).map(|r| (*op, r)))
                .collect();
            let Some((first_op, first)) = given.first() else {
                continue;
            };
            if let Some((op, _)) = given.iter().find(|(_, r)| *r != *first) {
                return Err(format!(
                    "{at}.operation_policies: {first_op:?} and {op:?} go to different routes; \
                     the router routes all {group}-like operations together"
                ));
            }
            if given.len() < ops.len() && *group != "flush_all" {
                self.notes.push(format!(
                    "{at}: {} route as {first_op:?} does (the router routes {group}-like \
                     operations together)",
                    ops.iter()
                        .filter(|o| !policies.contains_key(**o))
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let owned: &'a Value = v
                .get("operation_policies")
                .and_then(|p| p.get(*first_op))
                .expect("present");
            t.push((
                group.to_string(),
                self.route(owned, &format!("{at}.operation_policies.{first_op}"))?,
            ));
        }
        if let Some(d) = v.get("default_policy") {
            t.push((
                "default".into(),
                self.route(d, &format!("{at}.default_policy"))?,
            ));
        }
        Ok(Toml::Table(t))
    }

    fn hash(&self, v: Option<&Value>, at: &str) -> Result<Hash, String> {
        let (func, weights) = match v {
            None => return Ok(Hash::Ch3),
            Some(Value::String(s)) => (s.as_str(), None),
            Some(Value::Object(o)) => (
                o.get("hash_func").and_then(Value::as_str).unwrap_or("Ch3"),
                o.get("weights"),
            ),
            Some(_) => return Err(format!("{at}: expected a hash name or object")),
        };
        match func {
            "Ch3" => Ok(Hash::Ch3),
            "WeightedCh3" => {
                let Some(Value::Array(w)) = weights else {
                    return Err(format!("{at}: WeightedCh3 needs \"weights\""));
                };
                w.iter()
                    .map(|x| {
                        x.as_f64()
                            .ok_or_else(|| format!("{at}: weight {x} is not a number"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Hash::WeightedCh3)
            }
            other => Err(format!(
                "{at}: hash {other:?} is not supported (Ch3 and WeightedCh3 are)"
            )),
        }
    }

    fn servers(&self, name: &str) -> Result<Vec<Toml>, String> {
        let at = format!("pools.{name}.servers");
        let Some(Value::Array(list)) = self.pools[name].get("servers") else {
            return Err(format!("{at}: expected a list of host:port"));
        };
        if let Value::Object(o) = &self.pools[name] {
            for k in o.keys() {
                if k != "servers" {
                    return Err(format!("pools.{name}: key {k:?} is not supported"));
                }
            }
        }
        list.iter()
            .map(|s| {
                let s = s
                    .as_str()
                    .ok_or_else(|| format!("{at}: {s} is not a string"))?;
                // host:port[:protocol[:security]]; only ascii over plain TCP maps.
                let mut parts = s.splitn(3, ':');
                let (host, port) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                match parts.next() {
                    None | Some("ascii") | Some("ascii:plain") => {}
                    Some(other) => {
                        return Err(format!(
                            "{at}: {s:?}: protocol/security {other:?} is not supported (ascii over plain TCP is)"
                        ))
                    }
                }
                // Weight 1 and the address as the name: placement is furc_hash by index,
                // so only the order matters.
                Ok(Toml::Str(format!("{host}:{port}:1")))
            })
            .collect()
    }

    fn render(mut self, route: Toml, named: Vec<(String, Toml)>) -> Result<Converted, String> {
        let mut out = String::from("# converted from an mcrouter JSON config by squeal-router\n");
        let mut notes = std::mem::take(&mut self.notes);
        notes.sort();
        notes.dedup();
        for n in &notes {
            let _ = writeln!(out, "# note: {n}");
        }
        // mcrouter takes its port on the command line (`-p`, 5000 by default).
        out.push_str("# mcrouter's port is a command-line flag (-p); the router's is here:\n");
        out.push_str("listen = [\"127.0.0.1:5000\"]\n");
        out.push_str("route = ");
        route.render(&mut out);
        out.push('\n');
        if !named.is_empty() {
            out.push_str("\n[routes]\n");
            for (name, r) in &named {
                let _ = write!(out, "{} = ", key(name));
                r.render(&mut out);
                out.push('\n');
            }
        }
        for name in self.pools.keys() {
            let Some(hash) = self.hashes.get(name) else {
                notes.push(format!("pools.{name}: not used by any route; left out"));
                continue;
            };
            let servers = self.servers(name)?;
            let _ = writeln!(out, "\n[pools.{}]", key(name));
            match hash {
                Hash::Ch3 => out.push_str("distribution = \"ch3\"\n"),
                Hash::WeightedCh3(w) => {
                    if w.len() != servers.len() {
                        return Err(format!(
                            "pools.{name}: {} servers but {} WeightedCh3 weights",
                            servers.len(),
                            w.len()
                        ));
                    }
                    out.push_str("distribution = \"weighted_ch3\"\nweights = ");
                    Toml::Array(w.iter().map(|x| Toml::Float(*x)).collect()).render(&mut out);
                    out.push('\n');
                }
            }
            out.push_str("servers = ");
            Toml::Array(servers).render(&mut out);
            out.push('\n');
        }
        Ok(Converted { toml: out, notes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
      "pools": {
        "A": {"servers": ["127.0.0.1:5001", "127.0.0.1:5002"]},
        "G": {"servers": ["127.0.0.1:5003:ascii:plain"]},
        "R": {"servers": ["127.0.0.1:5004", "127.0.0.1:5005"]}
      },
      "named_handles": [{"name": "regional", "type": "PoolRoute", "pool": "R",
                          "hash": {"hash_func": "WeightedCh3", "weights": [1.0, 0.5]}}],
      "route": {
        "type": "OperationSelectorRoute",
        "operation_policies": {
          "delete": {"type": "AllSyncRoute", "children": ["PoolRoute|A", "regional"]},
          "set": {"type": "FailoverWithExptimeRoute", "normal": "PoolRoute|A",
                  "failover": ["PoolRoute|G"], "failover_exptime": 5}
        },
        "default_policy": {"type": "PrefixSelectorRoute",
                           "policies": {"big:": "regional"},
                           "wildcard": {"type": "MissFailoverRoute",
                                        "children": ["PoolRoute|A", "PoolRoute|G"]}}
      }
    }"#;

    #[test]
    fn the_common_subset_converts() {
        let c = to_toml(CONFIG).unwrap();
        let v: toml::Table = c.toml.parse().unwrap_or_else(|e| panic!("{e}\n{}", c.toml));
        let route = &v["route"];
        assert_eq!(route["type"].as_str(), Some("operation"));
        assert_eq!(route["delete"]["type"].as_str(), Some("all-sync"));
        assert_eq!(route["set"]["type"].as_str(), Some("failover"));
        assert_eq!(route["set"]["gutter_ttl"].as_integer(), Some(5));
        assert_eq!(route["set"]["children"][1].as_str(), Some("G"));
        assert_eq!(
            route["default"]["prefixes"]["big:"].as_str(),
            Some("regional")
        );
        assert_eq!(
            route["default"]["default"]["type"].as_str(),
            Some("miss-failover")
        );
        assert_eq!(v["routes"]["regional"].as_str(), Some("R"));
        assert_eq!(v["pools"]["A"]["distribution"].as_str(), Some("ch3"));
        assert_eq!(
            v["pools"]["R"]["distribution"].as_str(),
            Some("weighted_ch3")
        );
        assert_eq!(v["pools"]["R"]["weights"][1].as_float(), Some(0.5));
        assert_eq!(
            v["pools"]["G"]["servers"][0].as_str(),
            Some("127.0.0.1:5003:1")
        );
        // set-like operations mcrouter did not name follow "set", and the TOML says so.
        assert!(c.notes.iter().any(|n| n.contains("add")), "{:?}", c.notes);
        assert!(c.toml.contains("# note:"));
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_with_its_path() {
        for (json, says) in [
            (
                r#"{"pools": {}, "route": {"type": "HashRoute"}}"#,
                "HashRoute",
            ),
            (
                r#"{"pools": {}, "route": "PoolRoute|X"}"#,
                "pool \"X\" is not defined",
            ),
            (
                r#"{"pools": {"A": {"servers": ["h:1"]}}, "routes": [{"aliases": ["/a/b/"], "route": "PoolRoute|A"}, {"aliases": ["/a/c/"], "route": "PoolRoute|A"}]}"#,
                "single entry",
            ),
            (
                r#"{"pools": {"A": {"servers": ["h:1:caret"]}}, "route": "PoolRoute|A"}"#,
                "caret",
            ),
            (
                r#"{"pools": {"A": {"servers": ["h:1"]}}, "route": {"type": "PoolRoute", "pool": "A", "hash": "Crc32"}}"#,
                "Crc32",
            ),
            (
                r#"{"pools": {"A": {"servers": ["h:1"]}}, "route": {"type": "AllSyncRoute", "children": [{"type": "PoolRoute", "pool": "A"}, {"type": "PoolRoute", "pool": "A", "hash": {"hash_func": "WeightedCh3", "weights": [0.5]}}]}}"#,
                "hashed two ways",
            ),
            (
                r#"{"pools": {"A": {"servers": ["h:1"]}}, "route": {"type": "OperationSelectorRoute", "operation_policies": {"set": "PoolRoute|A", "add": "NullRoute"}}}"#,
                "different routes",
            ),
            (r#"{"macros": {}, "route": "x"}"#, "\"macros\""),
            ("[1]", "object"),
            ("{", "not JSON"),
        ] {
            let e = to_toml(json).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
