//! failover: the first child; when the router could not get a reply from it (server down,
//! marked down by health checks, timeout, connection lost: a router-made `SERVER_ERROR`),
//! the next child, and so on. A miss or a server's own error is an answer, not a failure.
//! Children after the first are gutters: a set-like request that lands there has its TTL
//! capped at `gutter_ttl` seconds (default 10), so gutter data dies quickly once the
//! primary is back. Multi-gets fail over key by key.
//!
//! ```toml
//! [route]
//! type = "failover"
//! children = ["main", "gutter"]
//! gutter_ttl = 10
//! ```

use std::rc::Rc;
use std::sync::Arc;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::wire::with_ttl_cap;
use super::{per_key, Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
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
        gutter_ttl: p.seconds(t, "gutter_ttl", DEFAULT_GUTTER_TTL, 2_592_000)?,
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
            with_ttl_cap(&req, self.gutter_ttl)
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
