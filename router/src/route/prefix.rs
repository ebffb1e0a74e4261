//! The prefix selector: the longest key prefix that matches picks the child, else
//! `default`. A multi-get is split by child and merged back in order; `flush_all` (no key)
//! reaches every child; `version` and `stats` go to `default`.
//!
//! ```toml
//! [route]
//! type = "prefix"
//! default = "cluster"
//! prefixes = { "big:" = "regional", "r_" = "regional" }
//! ```

use std::rc::Rc;

use super::joiner::{broadcast, split_multi_get};
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::Request;

pub const TYPE: RouteType = RouteType {
    name: "prefix",
    keys: &["prefixes", "default"],
    parse,
};

/// Prefixes longest first, each with its child (a spec or a built route), and the default.
#[derive(Debug)]
pub struct Prefixes<C> {
    prefixes: Vec<(Vec<u8>, C)>,
    default: C,
}

impl<C> Prefixes<C> {
    /// `prefixes` in any order: sorted longest first, so the first match is the longest.
    pub fn new(mut prefixes: Vec<(Vec<u8>, C)>, default: C) -> Prefixes<C> {
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Prefixes { prefixes, default }
    }

    /// Index into the prefixes, or their number for the default: the one choice both the
    /// route and `stats route` make.
    fn pick(&self, key: &[u8]) -> usize {
        self.prefixes
            .iter()
            .position(|(p, _)| key.starts_with(p))
            .unwrap_or(self.prefixes.len())
    }

    fn child(&self, i: usize) -> &C {
        self.prefixes.get(i).map_or(&self.default, |(_, c)| c)
    }

    fn len(&self) -> usize {
        self.prefixes.len() + 1
    }
}

pub type PrefixSpec = Prefixes<RouteSpec>;
pub type PrefixRoute = Prefixes<RouteRef>;

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    let Some(map) = p.map(t, "prefixes")? else {
        return Err(p.needs(t, "prefixes"));
    };
    let mut prefixes = Vec::new();
    for (prefix, r) in map {
        if prefix.is_empty() || prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(p.err(
                r.at,
                format!(
                    "prefix {prefix:?} must be non-empty, without spaces or control characters"
                ),
            ));
        }
        prefixes.push((prefix.as_bytes().to_vec(), p.route(r)?));
    }
    let default = p.required_child(t, "default")?;
    Ok(Box::new(Prefixes::new(prefixes, default)))
}

impl Spec for PrefixSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(Prefixes {
            prefixes: self
                .prefixes
                .iter()
                .map(|(p, c)| (p.clone(), b.route(c)))
                .collect(),
            default: b.route(&self.default),
        })
    }

    fn describe(&self, d: &mut Describe) {
        let i = self.pick(d.key);
        match self.prefixes.get(i) {
            Some((p, c)) => d.step(format_args!("prefix[{:?}]", String::from_utf8_lossy(p)), c),
            None => d.step("prefix[default]", &self.default),
        }
    }

    fn children(&self) -> Vec<&RouteSpec> {
        let mut c: Vec<&RouteSpec> = self.prefixes.iter().map(|(_, c)| c).collect();
        c.push(&self.default);
        c
    }
}

impl Route for PrefixRoute {
    fn route(&self, req: Request, done: Completion) {
        match req {
            Request::Keyed(k) => {
                let i = self.pick(&k.key);
                self.child(i).route(Request::Keyed(k), done)
            }
            Request::MultiGet(m) => split_multi_get(
                m,
                |k| self.pick(k),
                |i, r, c| self.child(i).route(r, c),
                done,
            ),
            // No key: every subtree hears a flush.
            Request::FlushAll { .. } => {
                broadcast(&req, (0..self.len()).map(|i| self.child(i)), done)
            }
            Request::Version | Request::Stats { .. } => self.default.route(req, done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    fn tree(log: &Log) -> PrefixRoute {
        let short = Fake::new(
            "short",
            log,
            Answer::Data("VALUE big:1 0 1\r\ns\r\nEND\r\n"),
        );
        let long = Fake::new("long", log, STORED);
        let default = Fake::new(
            "default",
            log,
            Answer::Data("VALUE user:1 0 1\r\nd\r\nEND\r\n"),
        );
        Prefixes::new(
            vec![
                (b"big:".to_vec(), short.as_route()),
                (b"big:small:".to_vec(), long.as_route()),
            ],
            default.as_route(),
        )
    }

    #[test]
    fn the_longest_matching_prefix_picks_the_child() {
        let log = log();
        let r = tree(&log);
        assert_eq!(
            ask(&r, "set big:small:1 0 0 1\r\nv\r\n").unwrap(),
            "STORED\r\n"
        );
        ask(&r, "delete big:1\r\n");
        ask(&r, "delete plain\r\n");
        ask(&r, "delete bi\r\n");
        assert_eq!(
            calls(&log),
            [
                "long: set big:small:1 0 0 \"v\"",
                "short: delete big:1",
                "default: delete plain",
                "default: delete bi"
            ]
        );
    }

    #[test]
    fn a_multi_get_is_split_by_child_and_merged_in_order() {
        let log = log();
        let r = tree(&log);
        assert_eq!(
            ask(&r, "get user:1 big:1 user:2\r\n").unwrap(),
            "VALUE user:1 0 1\r\nd\r\nVALUE big:1 0 1\r\ns\r\nEND\r\n"
        );
        assert_eq!(
            calls(&log),
            ["default: get user:1 user:2", "short: get big:1"]
        );
    }

    #[test]
    fn flush_all_reaches_every_child_version_the_default() {
        let log = log();
        let ok = |n| Fake::new(n, &log, Answer::Data("OK\r\n"));
        let (a, d) = (ok("a"), ok("default"));
        let r = Prefixes::new(vec![(b"a:".to_vec(), a.as_route())], d.as_route());
        assert_eq!(ask(&r, "flush_all\r\n").unwrap(), "OK\r\n");
        ask(&r, "version\r\n");
        assert_eq!(
            calls(&log),
            ["a: flush_all", "default: flush_all", "default: version"]
        );
    }
}
