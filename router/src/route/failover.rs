//! failover: the first child; when the router could not get a reply from it (server down,
//! marked down by health checks, timeout, connection lost: a router-made `SERVER_ERROR`),
//! the next child, and so on. A miss or a server's own error is an answer, not a failure.
//! Children after the first are gutters: a set-like request that lands there has its TTL
//! capped at `gutter_ttl` seconds (default 10), so gutter data dies quickly once the
//! primary is back (`gutter_ttl = 0`: no cap, as mcrouter's plain `FailoverRoute`).
//! Multi-gets fail over key by key.
//!
//! ```toml
//! [route]
//! type = "failover"
//! children = ["main", "gutter"]
//! gutter_ttl = 10
//! ```

use std::rc::Rc;
use std::sync::Arc;

use super::joiner::per_key;
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::{ConfigError, RawKind, RawValue};
use crate::protocol::item_codec::with_ttl_cap;
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

pub const TYPE: RouteType = RouteType {
    name: "failover",
    keys: &["children", "gutter_ttl"],
    parse,
};

pub const DEFAULT_GUTTER_TTL: u32 = 10;

#[derive(Debug)]
pub struct FailoverSpec {
    children: Vec<RouteSpec>,
    gutter_ttl: u32,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(FailoverSpec {
        children: p.required_children(t, "children")?,
        gutter_ttl: match t.get("gutter_ttl") {
            // 0: no cap, as mcrouter's plain FailoverRoute (its converter writes this).
            Some(RawValue {
                kind: RawKind::Integer(0),
                ..
            }) => 0,
            _ => p
                .seconds(t, "gutter_ttl", DEFAULT_GUTTER_TTL, 2_592_000)
                .map_err(|mut e| {
                    e.message = e
                        .message
                        .replace("must be between 1", "must be 0 (no cap) or between 1");
                    e
                })?,
        },
    }))
}

impl Spec for FailoverSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(FailoverRoute::new(
            b.all(&self.children),
            self.gutter_ttl,
            b.stats.clone(),
        ))
    }

    /// Every child a request may fail over to.
    fn describe(&self, d: &mut Describe) {
        d.list("failover", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
    }
}

pub struct FailoverRoute {
    inner: Rc<Failover>,
}

struct Failover {
    children: Vec<RouteRef>,
    gutter_ttl: u32,
    stats: Arc<WorkerStats>,
}

fn takes_ttl(cmd: Cmd) -> bool {
    matches!(cmd, Cmd::Set | Cmd::Add | Cmd::Replace | Cmd::Cas | Cmd::Ms)
}

impl FailoverRoute {
    pub fn new(children: Vec<RouteRef>, gutter_ttl: u32, stats: Arc<WorkerStats>) -> FailoverRoute {
        FailoverRoute {
            inner: Rc::new(Failover {
                children,
                gutter_ttl,
                stats,
            }),
        }
    }
}

impl Failover {
    fn attempt(self: &Rc<Self>, i: usize, req: Request, done: Completion) {
        let Some(child) = self.children.get(i) else {
            return done.complete(Reply::error("no route"));
        };
        let last = i + 1 >= self.children.len();
        let sent = if i > 0 && takes_ttl(req.cmd()) {
            self.stats.gutter_sets.add(1);
            match self.gutter_ttl {
                0 => req.clone(),
                cap => with_ttl_cap(&req, cap),
            }
        } else if last {
            // The last child: nothing to keep the request for.
            return child.route(req, done);
        } else {
            req.clone()
        };
        if last {
            return child.route(sent, done);
        }
        let failover = self.clone();
        child.route(
            sent,
            Completion::then(move |r| {
                if r.is_error() {
                    failover.stats.failovers.add(1);
                    failover.attempt(i + 1, req, done)
                } else {
                    done.complete(r)
                }
            }),
        );
    }
}

impl Route for FailoverRoute {
    fn route(&self, req: Request, done: Completion) {
        match req {
            Request::MultiGet(m) => per_key(m, |r, c| self.inner.attempt(0, r, c), done),
            req => self.inner.attempt(0, req, done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    fn route(children: &[&Rc<Fake>], stats: &Arc<WorkerStats>) -> FailoverRoute {
        FailoverRoute::new(
            children.iter().map(|c| c.as_route()).collect(),
            10,
            stats.clone(),
        )
    }

    #[test]
    fn a_router_error_fails_over_a_miss_or_server_error_does_not() {
        let log = log();
        let stats = stats();
        let main = Fake::new("main", &log, MISS).then(&[
            Answer::Error,
            MISS,
            Answer::Data("SERVER_ERROR out of memory\r\n"),
        ]);
        let gutter = Fake::new("gutter", &log, Answer::Data("VALUE k 0 1\r\ng\r\nEND\r\n"));
        let r = route(&[&main, &gutter], &stats);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 0 1\r\ng\r\nEND\r\n");
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "END\r\n");
        assert_eq!(
            ask(&r, "get k\r\n").unwrap(),
            "SERVER_ERROR out of memory\r\n"
        );
        assert_eq!(
            calls(&log),
            ["main: get k", "gutter: get k", "main: get k", "main: get k"]
        );
        assert_eq!(stats.failovers.get(), 1);
        assert_eq!(stats.gutter_sets.get(), 0, "a get is no gutter set");
    }

    #[test]
    fn the_last_childs_error_is_the_answer() {
        let log = log();
        let stats = stats();
        let a = Fake::new("a", &log, Answer::Error);
        let b = Fake::new("b", &log, Answer::Error);
        let r = route(&[&a, &b], &stats);
        assert_eq!(ask(&r, "delete k\r\n").unwrap(), "SERVER_ERROR timeout\r\n");
        assert_eq!(calls(&log), ["a: delete k", "b: delete k"]);
    }

    #[test]
    fn a_set_in_the_gutter_has_its_ttl_capped() {
        let log = log();
        let stats = stats();
        let main = Fake::new("main", &log, Answer::Error);
        let gutter = Fake::new("gutter", &log, STORED);
        let r = route(&[&main, &gutter], &stats);
        for line in [
            "set k 3 0 1\r\nv\r\n",
            "set k 3 5 1\r\nv\r\n",
            "add k 3 100 1\r\nv\r\n",
            "set k 3 2000000000 1\r\nv\r\n",
            "ms k 1 T100 O7 F3\r\nv\r\n",
            "ms k 1\r\nv\r\n",
            "delete k\r\n",
        ] {
            assert_eq!(ask(&r, line).unwrap(), "STORED\r\n", "{line}");
        }
        let to_gutter: Vec<String> = calls(&log)
            .into_iter()
            .filter(|c| c.starts_with("gutter"))
            .collect();
        assert_eq!(
            to_gutter,
            [
                "gutter: set k 3 10 \"v\"",
                "gutter: set k 3 5 \"v\"",
                "gutter: add k 3 10 \"v\"",
                "gutter: set k 3 10 \"v\"",
                "gutter: ms k 1 T10 O7 F3",
                "gutter: ms k 1 T10",
                "gutter: delete k"
            ]
        );
        assert!(
            calls(&log).contains(&"main: set k 3 0 \"v\"".to_string()),
            "the primary gets the TTL as sent"
        );
        assert_eq!(stats.gutter_sets.get(), 6);
        assert_eq!(stats.failovers.get(), 7);
    }

    #[test]
    fn gutter_ttl_0_leaves_the_ttl_alone() {
        let log = log();
        let stats = stats();
        let main = Fake::new("main", &log, Answer::Error);
        let gutter = Fake::new("gutter", &log, STORED);
        let r = FailoverRoute::new(vec![main.as_route(), gutter.as_route()], 0, stats.clone());
        assert_eq!(ask(&r, "set k 3 0 1\r\nv\r\n").unwrap(), "STORED\r\n");
        assert_eq!(ask(&r, "ms k 1 T100\r\nv\r\n").unwrap(), "STORED\r\n");
        let to_gutter: Vec<String> = calls(&log)
            .into_iter()
            .filter(|c| c.starts_with("gutter"))
            .collect();
        assert_eq!(
            to_gutter,
            ["gutter: set k 3 0 \"v\"", "gutter: ms k 1 T100"]
        );
    }

    #[test]
    fn a_multi_get_fails_over_key_by_key() {
        let log = log();
        let stats = stats();
        let main = Fake::new("main", &log, Answer::Data("VALUE a 0 1\r\nm\r\nEND\r\n"))
            .then(&[Answer::Data("VALUE a 0 1\r\nm\r\nEND\r\n"), Answer::Error]);
        let gutter = Fake::new("gutter", &log, Answer::Data("VALUE b 0 1\r\ng\r\nEND\r\n"));
        let r = route(&[&main, &gutter], &stats);
        assert_eq!(
            ask(&r, "get a b\r\n").unwrap(),
            "VALUE a 0 1\r\nm\r\nVALUE b 0 1\r\ng\r\nEND\r\n"
        );
        assert_eq!(calls(&log), ["main: get a", "main: get b", "gutter: get b"]);
    }
}
