//! From the route tree as written ([`RawRoutes`], kept by the config) to a validated
//! [`RouteSpec`] over pool indices, which workers build their own [`Route`] trees from.
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
//!
//! This module knows no route type: it resolves names (refusing loops), finds the table's
//! [`RouteType`] among those registered (`super::registry`), refuses keys that type does
//! not take, and hands the table to the type's own parser, which reads its keys with the
//! typed getters of [`Parser`]. Every error names `file:line:column`. It also holds what
//! each type's `build` and `describe` get: [`Build`] and [`Describe`].

use std::fmt;
use std::sync::Arc;

use std::fmt::Write as _;

use super::RouteRef;
use crate::config::{At, ConfigError, RawKind, RawRoutes, RawValue};
use crate::protocol::Cmd;
use crate::stats::WorkerStats;

/// A validated route of one type, over pool indices: shared read-only by the workers, each
/// of which builds its own [`Route`] from it. Implemented next to each route type.
pub trait Spec: fmt::Debug + Send + Sync {
    /// This worker's route.
    fn build(&self, b: &Build) -> RouteRef;
    /// `stats route`: writes where a request goes, choosing as the route does.
    fn describe(&self, d: &mut Describe);
    /// The routes right under this one.
    fn children(&self) -> Vec<&RouteSpec>;
    /// Every pool the tree uses (pool routes add themselves).
    fn pools(&self, out: &mut Vec<usize>) {
        for c in self.children() {
            c.pools(out);
        }
    }
}

/// A validated route tree.
pub type RouteSpec = Box<dyn Spec>;

/// One route type: the `type` name, the keys its table takes besides `type`, and the parser
/// of such a table. Each route type's file defines its own; [`super::TYPES`] lists them.
pub struct RouteType {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub parse: fn(&mut Parser, &Table) -> Result<RouteSpec, ConfigError>,
}

/// What a worker builds its routes with: its pool routes (indexed like `Config::pools`;
/// `None` for a pool it could not build) and its counters.
pub struct Build<'a> {
    pub pools: &'a [Option<RouteRef>],
    pub stats: &'a Arc<WorkerStats>,
}

impl Build<'_> {
    pub fn route(&self, s: &RouteSpec) -> RouteRef {
        s.build(self)
    }

    pub fn all(&self, s: &[RouteSpec]) -> Vec<RouteRef> {
        s.iter().map(|s| s.build(self)).collect()
    }
}

/// What `stats route` reads of the running plan (pools in config order, their placements
/// and per-server states), without the route layer depending on the plan.
#[derive(Clone, Copy)]
pub struct Placed<'a> {
    pub pools: &'a [crate::config::Pool],
    pub placements: &'a [std::sync::Arc<crate::placement::Placement>],
    pub servers: &'a [Vec<std::sync::Arc<crate::stats::ServerStats>>],
}

/// `stats route <op> <key>` on its way down the tree: the path so far and the servers
/// reached. Each route type writes its own step with [`Describe::step`] or
/// [`Describe::list`], choosing the child as its `route` does.
pub struct Describe<'a> {
    pub placed: Placed<'a>,
    pub cmd: Cmd,
    pub key: &'a [u8],
    path: String,
    servers: Vec<String>,
}

impl<'a> Describe<'a> {
    pub fn new(placed: Placed<'a>, cmd: Cmd, key: &'a [u8]) -> Describe<'a> {
        Describe {
            placed,
            cmd,
            key,
            path: String::new(),
            servers: Vec::new(),
        }
    }

    /// Appends to the path.
    pub fn write(&mut self, s: impl fmt::Display) {
        let _ = write!(self.path, "{s}");
    }

    /// A server reached (each listed once).
    pub fn server(&mut self, line: String) {
        if !self.servers.contains(&line) {
            self.servers.push(line);
        }
    }

    /// `label>` then the one child taken.
    pub fn step(&mut self, label: impl fmt::Display, child: &RouteSpec) {
        self.write(format_args!("{label}>"));
        child.describe(self);
    }

    /// `name(child, child...)`: every child listed.
    pub fn list<'s>(&mut self, name: &str, children: impl IntoIterator<Item = &'s RouteSpec>) {
        self.write(format_args!("{name}("));
        for (i, c) in children.into_iter().enumerate() {
            if i > 0 {
                self.path.push_str(", ");
            }
            c.describe(self);
        }
        self.path.push(')');
    }

    /// `route <path>`, then `server <pool> <addr> <state>` per server reached.
    pub fn lines(self) -> Vec<String> {
        let mut out = vec![format!("route {}", self.path)];
        out.extend(self.servers);
        out
    }
}

/// The route types a [`Parser`] knows, and how a pool name becomes a spec.
pub struct Registry {
    pub types: &'static [&'static RouteType],
    pub pool: fn(usize) -> RouteSpec,
}

impl Registry {
    /// Every key some route table takes, `type` first.
    fn keys(&self) -> Vec<&'static str> {
        let mut keys = vec!["type"];
        for k in self.types.iter().flat_map(|t| t.keys) {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
        keys
    }
}

/// Validates the route tree against the pools named `pools`: `route`, and every named
/// route (those nobody uses are still checked).
pub fn parse(
    registry: &Registry,
    routes: &RawRoutes,
    pools: &[String],
) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut roots = Vec::new();
    for root in &routes.roots {
        roots.push(Parser::new(registry, routes, pools).route(root)?);
    }
    for r in routes.named.values() {
        Parser::new(registry, routes, pools).route(r)?;
    }
    Ok(roots)
}

/// A route table being parsed: its type and entries.
pub struct Table<'t> {
    kind: &'t str,
    kind_at: At,
    entries: &'t [(At, String, RawValue)],
}

impl<'t> Table<'t> {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&'t RawValue> {
        self.entries
            .iter()
            .find(|(_, k, _)| k == key)
            .map(|(_, _, v)| v)
    }
}

/// Resolves names and parses tables.
pub struct Parser<'a> {
    registry: &'a Registry,
    routes: &'a RawRoutes,
    pools: &'a [String],
    /// Named routes being resolved, outermost first: a loop refers back into it.
    stack: Vec<String>,
}

/// serde's name for what a value is, as its "invalid type" errors give it.
fn unexpected(v: &RawValue) -> String {
    match &v.kind {
        RawKind::String(s) => format!("string {s:?}"),
        RawKind::Integer(n) => format!("integer `{n}`"),
        RawKind::Array(_) => "sequence".into(),
        RawKind::Table(_) => "map".into(),
        RawKind::Other(s) => s.clone(),
    }
}

const ROUTE: &str = "a pool or route name, or a route table with a `type`";

impl<'a> Parser<'a> {
    pub fn new(registry: &'a Registry, routes: &'a RawRoutes, pools: &'a [String]) -> Parser<'a> {
        Parser {
            registry,
            routes,
            pools,
            stack: Vec::new(),
        }
    }

    pub fn err(&self, at: At, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.routes.file, at, message)
    }

    fn invalid(&self, v: &RawValue, expected: &str) -> ConfigError {
        self.err(
            v.at,
            format!("invalid type: {}, expected {expected}", unexpected(v)),
        )
    }

    /// The configured pool names, in `Config::pools` order.
    pub fn pools(&self) -> &[String] {
        self.pools
    }

    /// A route: a name or a table.
    pub fn route(&mut self, v: &RawValue) -> Result<RouteSpec, ConfigError> {
        match &v.kind {
            RawKind::String(name) => self.name(name, v.at),
            RawKind::Table(entries) => self.table(v.at, entries),
            _ => Err(self.invalid(v, ROUTE)),
        }
    }

    fn name(&mut self, name: &str, at: At) -> Result<RouteSpec, ConfigError> {
        if let Some(i) = self.pools.iter().position(|p| p == name) {
            return Ok((self.registry.pool)(i));
        }
        let Some(def) = self.routes.named.get(name) else {
            let routes: Vec<&str> = self.routes.named.keys().map(|s| s.as_str()).collect();
            return Err(self.err(
                at,
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
            return Err(self.err(
                at,
                format!(
                    "route {name:?} refers to itself ({} -> {name})",
                    self.stack.join(" -> ")
                ),
            ));
        }
        self.stack.push(name.to_string());
        let r = self.route(def);
        self.stack.pop();
        r
    }

    /// A table: its type, then keys that type does not take refused, then its parser.
    fn table(
        &mut self,
        at: At,
        entries: &[(At, String, RawValue)],
    ) -> Result<RouteSpec, ConfigError> {
        let types = self.registry.types;
        let known = self.registry.keys();
        if let Some((key_at, key, _)) = entries
            .iter()
            .find(|(_, k, _)| !known.contains(&k.as_str()))
        {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(self.err(
                *key_at,
                format!(
                    "unknown field `{key}`, expected one of {}",
                    expected.join(", ")
                ),
            ));
        }
        let Some((_, _, kind)) = entries.iter().find(|(_, k, _)| k == "type") else {
            return Err(self.err(at, "missing field `type`"));
        };
        let RawKind::String(name) = &kind.kind else {
            return Err(self.invalid(kind, "a string"));
        };
        let Some(ty) = types.iter().find(|t| t.name == name) else {
            let names: Vec<&str> = types.iter().map(|t| t.name).collect();
            return Err(self.err(
                kind.at,
                format!("unknown route type {name:?} (one of {})", names.join(", ")),
            ));
        };
        for (_, key, v) in entries {
            if key != "type" && !ty.keys.contains(&key.as_str()) {
                return Err(self.err(
                    v.at,
                    format!(
                        "`{key}` does not apply to a {name:?} route (it takes: {})",
                        ty.keys.join(", ")
                    ),
                ));
            }
        }
        let table = Table {
            kind: name,
            kind_at: kind.at,
            entries,
        };
        (ty.parse)(self, &table)
    }

    /// The error of a table that lacks `what`.
    pub fn needs(&self, t: &Table, what: &str) -> ConfigError {
        self.err(t.kind_at, format!("type {:?} needs `{what}`", t.kind))
    }

    /// The route under `key`, if set.
    pub fn child(&mut self, t: &Table, key: &str) -> Result<Option<RouteSpec>, ConfigError> {
        t.get(key).map(|v| self.route(v)).transpose()
    }

    /// The route under `key`, which the type needs.
    pub fn required_child(&mut self, t: &Table, key: &str) -> Result<RouteSpec, ConfigError> {
        match self.child(t, key)? {
            Some(r) => Ok(r),
            None => Err(self.needs(t, key)),
        }
    }

    /// The non-empty list of routes under `key`, if set.
    pub fn children(
        &mut self,
        t: &Table,
        key: &str,
    ) -> Result<Option<Vec<RouteSpec>>, ConfigError> {
        let Some(v) = t.get(key) else {
            return Ok(None);
        };
        let RawKind::Array(list) = &v.kind else {
            return Err(self.invalid(v, "a sequence"));
        };
        if list.is_empty() {
            return Err(self.err(v.at, format!("`{key}` is empty")));
        }
        list.iter()
            .map(|r| self.route(r))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// The non-empty list of routes under `key`, which the type needs.
    pub fn required_children(
        &mut self,
        t: &Table,
        key: &str,
    ) -> Result<Vec<RouteSpec>, ConfigError> {
        match self.children(t, key)? {
            Some(c) => Ok(c),
            None => Err(self.needs(t, key)),
        }
    }

    /// The string under `key`, with where it is, if set.
    pub fn string<'t>(
        &self,
        t: &Table<'t>,
        key: &str,
    ) -> Result<Option<(&'t str, At)>, ConfigError> {
        match t.get(key) {
            None => Ok(None),
            Some(RawValue {
                at,
                kind: RawKind::String(s),
            }) => Ok(Some((s.as_str(), *at))),
            Some(v) => Err(self.invalid(v, "a string")),
        }
    }

    /// The number of seconds (1..=`max`) under `key`; `default` when not set.
    pub fn seconds(
        &self,
        t: &Table,
        key: &str,
        default: u32,
        max: i64,
    ) -> Result<u32, ConfigError> {
        match t.get(key) {
            None => Ok(default),
            Some(RawValue {
                kind: RawKind::Integer(n),
                ..
            }) if (1..=max).contains(n) => Ok(*n as u32),
            Some(RawValue {
                at,
                kind: RawKind::Integer(n),
            }) => Err(self.err(*at, format!("{key} must be between 1 and {max}, not {n}"))),
            Some(v) => Err(self.invalid(v, "i64")),
        }
    }

    /// The entries of the table under `key` (in key order), if set.
    pub fn map<'t>(
        &self,
        t: &Table<'t>,
        key: &str,
    ) -> Result<Option<Vec<(&'t str, &'t RawValue)>>, ConfigError> {
        match t.get(key) {
            None => Ok(None),
            Some(RawValue {
                kind: RawKind::Table(entries),
                ..
            }) => {
                let mut out: Vec<(&str, &RawValue)> =
                    entries.iter().map(|(_, k, v)| (k.as_str(), v)).collect();
                out.sort_by(|a, b| a.0.cmp(b.0));
                Ok(Some(out))
            }
            Some(v) => Err(self.invalid(v, "a map")),
        }
    }
}
