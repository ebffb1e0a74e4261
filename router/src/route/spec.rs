//! The route tree as the config describes it: parsed from TOML (with spans, so every error
//! names `file:line:column`), validated, and resolved to a [`RouteSpec`] over pool indices.
//! Workers build their own [`super::Route`] values from it (see [`super::tree`]).
//!
//! A route is either a name (a pool, or a route defined under `[routes.NAME]`) or a table
//! with a `type`:
//!
//! ```toml
//! [route]
//! type = "prefix"
//! default = "cluster"
//! prefixes = { "big:" = "regional", "r_" = "regional" }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::config::ConfigError;
use crate::protocol::Cmd;

/// A route as written: a name or an inline table.
#[derive(Debug)]
pub enum RawRouteRef {
    Name(String),
    Table(Box<RawRoute>),
}

impl<'de> Deserialize<'de> for RawRouteRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRouteRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pool or route name, or a route table with a `type`")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawRouteRef, E> {
                Ok(RawRouteRef::Name(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawRouteRef, A::Error> {
                RawRoute::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|r| RawRouteRef::Table(Box::new(r)))
            }
        }
        d.deserialize_any(V)
    }
}

type Child = Option<Spanned<RawRouteRef>>;
type Children = Option<Spanned<Vec<Spanned<RawRouteRef>>>>;

/// A route table as written. Which keys apply depends on `type`; the others are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    pub pool: Option<Spanned<String>>,
    pub children: Children,
    pub prefixes: Option<Spanned<BTreeMap<String, Spanned<RawRouteRef>>>>,
    pub default: Child,
    pub get: Child,
    pub set: Child,
    pub delete: Child,
    pub arith: Child,
    pub touch: Child,
    pub flush_all: Child,
    pub gutter_ttl: Option<Spanned<i64>>,
    pub master: Child,
    pub slave: Child,
    pub l1: Children,
    pub cold: Child,
    pub warm: Child,
    pub holdoff_secs: Option<Spanned<i64>>,
}

/// Operation classes of the operation selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// get, gets, gat, gats, mg
    Get,
    /// set, add, replace, append, prepend, cas, ms
    Set,
    /// delete, md
    Delete,
    /// incr, decr, ma
    Arith,
    /// touch
    Touch,
    /// flush_all
    FlushAll,
    /// version, me and anything else
    Other,
}

impl OpClass {
    pub fn of(cmd: Cmd) -> OpClass {
        match cmd {
            Cmd::Get | Cmd::Gets | Cmd::Gat | Cmd::Gats | Cmd::Mg => OpClass::Get,
            Cmd::Set
            | Cmd::Add
            | Cmd::Replace
            | Cmd::Append
            | Cmd::Prepend
            | Cmd::Cas
            | Cmd::Ms => OpClass::Set,
            Cmd::Delete | Cmd::Md => OpClass::Delete,
            Cmd::Incr | Cmd::Decr | Cmd::Ma => OpClass::Arith,
            Cmd::Touch => OpClass::Touch,
            Cmd::FlushAll => OpClass::FlushAll,
            _ => OpClass::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Get => "get",
            OpClass::Set => "set",
            OpClass::Delete => "delete",
            OpClass::Arith => "arith",
            OpClass::Touch => "touch",
            OpClass::FlushAll => "flush_all",
            OpClass::Other => "default",
        }
    }
}

/// A validated route tree. Pools are indices into `Config::pools`.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSpec {
    Pool(usize),
    /// Longest matching key prefix first; `default` when none matches.
    Prefix {
        prefixes: Vec<(Vec<u8>, RouteSpec)>,
        default: Box<RouteSpec>,
    },
    Operation {
        ops: Vec<(OpClass, RouteSpec)>,
        default: Box<RouteSpec>,
    },
    AllSync(Vec<RouteSpec>),
    AllAsync(Vec<RouteSpec>),
    AllInitial(Vec<RouteSpec>),
    Random(Vec<RouteSpec>),
    Failover {
        children: Vec<RouteSpec>,
        gutter_ttl: u32,
    },
    MissFailover(Vec<RouteSpec>),
    MasterSlaveL1 {
        master: Box<RouteSpec>,
        slave: Box<RouteSpec>,
        l1: Vec<RouteSpec>,
    },
    Warmup {
        cold: Box<RouteSpec>,
        warm: Box<RouteSpec>,
        holdoff_secs: u32,
    },
}

pub const TYPES: &[&str] = &[
    "pool",
    "prefix",
    "operation",
    "all-sync",
    "all-async",
    "all-initial",
    "random",
    "failover",
    "miss-failover",
    "master-slave-l1",
    "warmup",
];

pub const DEFAULT_GUTTER_TTL: u32 = 10;

/// Resolves names and validates tables.
pub struct Resolver<'a> {
    pub err: &'a dyn Fn(Range<usize>, String) -> ConfigError,
    pub pools: &'a [String],
    pub routes: &'a BTreeMap<String, Spanned<RawRouteRef>>,
    stack: Vec<String>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        err: &'a dyn Fn(Range<usize>, String) -> ConfigError,
        pools: &'a [String],
        routes: &'a BTreeMap<String, Spanned<RawRouteRef>>,
    ) -> Resolver<'a> {
        Resolver {
            err,
            pools,
            routes,
            stack: Vec::new(),
        }
    }

    pub fn resolve(&mut self, r: &Spanned<RawRouteRef>) -> Result<RouteSpec, ConfigError> {
        match r.get_ref() {
            RawRouteRef::Name(name) => self.name(name, r.span()),
            RawRouteRef::Table(t) => self.table(t),
        }
    }

    fn name(&mut self, name: &str, span: Range<usize>) -> Result<RouteSpec, ConfigError> {
        if let Some(i) = self.pools.iter().position(|p| p == name) {
            return Ok(RouteSpec::Pool(i));
        }
        let Some(def) = self.routes.get(name) else {
            let routes: Vec<&str> = self.routes.keys().map(|s| s.as_str()).collect();
            return Err((self.err)(
                span,
                format!(
                    "{name:?} is not defined as a pool or a route (pools: {}; routes: {})",
                    self.pools.join(", "),
                    if routes.is_empty() {
                        "none".to_string()
                    } else {
                        routes.join(", ")
                    }
                ),
            ));
        };
        if self.stack.iter().any(|s| s == name) {
            return Err((self.err)(
                span,
                format!(
                    "route {name:?} refers to itself ({} -> {name})",
                    self.stack.join(" -> ")
                ),
            ));
        }
        self.stack.push(name.to_string());
        let r = self.resolve(def);
        self.stack.pop();
        r
    }

    fn children(
        &mut self,
        what: &str,
        c: &Children,
        kind: &Spanned<String>,
    ) -> Result<Vec<RouteSpec>, ConfigError> {
        let Some(list) = c else {
            return Err((self.err)(
                kind.span(),
                format!("type {:?} needs `{what}`", kind.get_ref()),
            ));
        };
        if list.get_ref().is_empty() {
            return Err((self.err)(list.span(), format!("`{what}` is empty")));
        }
        list.get_ref().iter().map(|r| self.resolve(r)).collect()
    }

    fn one(
        &mut self,
        what: &str,
        c: &Child,
        kind: &Spanned<String>,
    ) -> Result<RouteSpec, ConfigError> {
        match c {
            Some(r) => self.resolve(r),
            None => Err((self.err)(
                kind.span(),
                format!("type {:?} needs `{what}`", kind.get_ref()),
            )),
        }
    }

    fn int(
        &self,
        v: &Option<Spanned<i64>>,
        what: &str,
        default: u32,
        max: i64,
    ) -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if (1..=max).contains(s.get_ref()) => Ok(*s.get_ref() as u32),
            Some(s) => Err((self.err)(
                s.span(),
                format!("{what} must be between 1 and {max}, not {}", s.get_ref()),
            )),
        }
    }

    fn table(&mut self, t: &RawRoute) -> Result<RouteSpec, ConfigError> {
        let kind = t.kind.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "pool" => &["pool"],
            "prefix" => &["prefixes", "default"],
            "operation" => &[
                "get",
                "set",
                "delete",
                "arith",
                "touch",
                "flush_all",
                "default",
            ],
            "all-sync" | "all-async" | "all-initial" | "random" | "miss-failover" => &["children"],
            "failover" => &["children", "gutter_ttl"],
            "master-slave-l1" => &["master", "slave", "l1"],
            "warmup" => &["cold", "warm", "holdoff_secs"],
            other => {
                return Err((self.err)(
                    t.kind.span(),
                    format!("unknown route type {other:?} (one of {})", TYPES.join(", ")),
                ))
            }
        };
        for (name, span) in t.present() {
            if !allowed.contains(&name) {
                return Err((self.err)(
                    span,
                    format!(
                        "`{name}` does not apply to a {kind:?} route (it takes: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let k = &t.kind;
        Ok(match kind {
            "pool" => match &t.pool {
                Some(p) => match self.pools.iter().position(|n| n == p.get_ref()) {
                    Some(i) => RouteSpec::Pool(i),
                    None => {
                        return Err((self.err)(
                            p.span(),
                            format!(
                                "pool {:?} is not defined (pools: {})",
                                p.get_ref(),
                                self.pools.join(", ")
                            ),
                        ))
                    }
                },
                None => return Err((self.err)(k.span(), "type \"pool\" needs `pool`".into())),
            },
            "prefix" => {
                let Some(map) = &t.prefixes else {
                    return Err((self.err)(
                        k.span(),
                        "type \"prefix\" needs `prefixes`".into(),
                    ));
                };
                let mut prefixes = Vec::new();
                for (p, r) in map.get_ref() {
                    if p.is_empty() || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        return Err((self.err)(
                            r.span(),
                            format!("prefix {p:?} must be non-empty, without spaces or control characters"),
                        ));
                    }
                    prefixes.push((p.as_bytes().to_vec(), self.resolve(r)?));
                }
                // Longest first: the first match is the longest prefix.
                prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
                RouteSpec::Prefix {
                    prefixes,
                    default: Box::new(self.one("default", &t.default, k)?),
                }
            }
            "operation" => {
                let mut ops = Vec::new();
                for (class, c) in [
                    (OpClass::Get, &t.get),
                    (OpClass::Set, &t.set),
                    (OpClass::Delete, &t.delete),
                    (OpClass::Arith, &t.arith),
                    (OpClass::Touch, &t.touch),
                    (OpClass::FlushAll, &t.flush_all),
                ] {
                    if let Some(r) = c {
                        ops.push((class, self.resolve(r)?));
                    }
                }
                RouteSpec::Operation {
                    ops,
                    default: Box::new(self.one("default", &t.default, k)?),
                }
            }
            "all-sync" => RouteSpec::AllSync(self.children("children", &t.children, k)?),
            "all-async" => RouteSpec::AllAsync(self.children("children", &t.children, k)?),
            "all-initial" => RouteSpec::AllInitial(self.children("children", &t.children, k)?),
            "random" => RouteSpec::Random(self.children("children", &t.children, k)?),
            "miss-failover" => {
                RouteSpec::MissFailover(self.children("children", &t.children, k)?)
            }
            "failover" => RouteSpec::Failover {
                children: self.children("children", &t.children, k)?,
                gutter_ttl: self.int(&t.gutter_ttl, "gutter_ttl", DEFAULT_GUTTER_TTL, 2_592_000)?,
            },
            "master-slave-l1" => RouteSpec::MasterSlaveL1 {
                master: Box::new(self.one("master", &t.master, k)?),
                slave: Box::new(self.one("slave", &t.slave, k)?),
                l1: match &t.l1 {
                    None => Vec::new(),
                    Some(_) => self.children("l1", &t.l1, k)?,
                },
            },
            "warmup" => RouteSpec::Warmup {
                cold: Box::new(self.one("cold", &t.cold, k)?),
                warm: Box::new(self.one("warm", &t.warm, k)?),
                holdoff_secs: self.int(
                    &t.holdoff_secs,
                    "holdoff_secs",
                    marker::holdoff::DEFAULT_HOLDOFF_SECS,
                    60,
                )?,
            },
            _ => unreachable!("checked above"),
        })
    }
}

impl RawRoute {
    /// The optional keys that are set, with where.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        let mut out = Vec::new();
        let mut c = |name: &'static str, s: Option<Range<usize>>| {
            if let Some(s) = s {
                out.push((name, s));
            }
        };
        c("pool", self.pool.as_ref().map(|s| s.span()));
        c("children", self.children.as_ref().map(|s| s.span()));
        c("prefixes", self.prefixes.as_ref().map(|s| s.span()));
        for (name, v) in [
            ("default", &self.default),
            ("get", &self.get),
            ("set", &self.set),
            ("delete", &self.delete),
            ("arith", &self.arith),
            ("touch", &self.touch),
            ("flush_all", &self.flush_all),
            ("master", &self.master),
            ("slave", &self.slave),
            ("cold", &self.cold),
            ("warm", &self.warm),
        ] {
            c(name, v.as_ref().map(|s| s.span()));
        }
        c("gutter_ttl", self.gutter_ttl.as_ref().map(|s| s.span()));
        c("l1", self.l1.as_ref().map(|s| s.span()));
        c("holdoff_secs", self.holdoff_secs.as_ref().map(|s| s.span()));
        out
    }
}

impl RouteSpec {
    /// Every pool the tree uses.
    pub fn pools(&self, out: &mut Vec<usize>) {
        let add = |s: &RouteSpec, out: &mut Vec<usize>| s.pools(out);
        match self {
            RouteSpec::Pool(i) => {
                if !out.contains(i) {
                    out.push(*i)
                }
            }
            RouteSpec::Prefix { prefixes, default } => {
                for (_, c) in prefixes {
                    add(c, out);
                }
                add(default, out);
            }
            RouteSpec::Operation { ops, default } => {
                for (_, c) in ops {
                    add(c, out);
                }
                add(default, out);
            }
            RouteSpec::AllSync(c)
            | RouteSpec::AllAsync(c)
            | RouteSpec::AllInitial(c)
            | RouteSpec::Random(c)
            | RouteSpec::MissFailover(c)
            | RouteSpec::Failover { children: c, .. } => {
                for c in c {
                    add(c, out);
                }
            }
            RouteSpec::MasterSlaveL1 { master, slave, l1 } => {
                add(master, out);
                add(slave, out);
                for c in l1 {
                    add(c, out);
                }
            }
            RouteSpec::Warmup { cold, warm, .. } => {
                add(cold, out);
                add(warm, out);
            }
        }
    }
}
