//! Failover routes.
//!
//! - failover: the first child; when the router could not get a reply from it (server down,
//!   marked down by health checks, timeout, connection lost: a router-made
//!   `SERVER_ERROR`), the next child, and so on. Children after the first are gutters:
//!   a set-like request that lands there has its TTL capped at `gutter_ttl` seconds, so
//!   gutter data dies quickly once the primary is back. Multi-gets fail over key by key.
//! - miss-failover: get-like requests try the children in order until one hits (a miss or
//!   an error moves on); everything else goes to the first child.

use std::rc::Rc;
use std::sync::Arc;

use super::{per_key, Completion, Reply, Route, RouteRef};
use crate::protocol::item_codec::with_ttl_cap;
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

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
        let sent = if i > 0 && takes_ttl(req.cmd()) {
            self.stats.gutter_sets.add(1);
            with_ttl_cap(&req, self.gutter_ttl)
        } else if i + 1 >= self.children.len() {
            // The last child: nothing to keep the request for.
            return child.route(req, done);
        } else {
            req.clone()
        };
        if i + 1 >= self.children.len() {
            return child.route(sent, done);
        }
        let me = self.clone();
        child.route(
            sent,
            Completion::then(move |r| {
                if r.is_error() {
                    me.stats.failovers.add(1);
                    me.attempt(i + 1, req, done)
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

pub struct MissFailoverRoute {
    inner: Rc<MissFailover>,
}

struct MissFailover {
    children: Vec<RouteRef>,
}

impl MissFailoverRoute {
    pub fn new(children: Vec<RouteRef>) -> MissFailoverRoute {
        MissFailoverRoute {
            inner: Rc::new(MissFailover { children }),
        }
    }
}

/// A reply to a get-like request that carries a value (or, for `mg` without `v`, says so).
pub fn is_hit(r: &Reply) -> bool {
    match r {
        Reply::Data(d) => d.starts_with(b"VALUE ") || d.starts_with(b"VA ") || d.starts_with(b"HD"),
        Reply::Chunks(c) => c.len() > 1,
        Reply::Error(_) => false,
    }
}

pub fn is_get_like(cmd: Cmd) -> bool {
    matches!(cmd, Cmd::Get | Cmd::Gets | Cmd::Gat | Cmd::Gats | Cmd::Mg)
}

impl MissFailover {
    fn attempt(self: &Rc<Self>, i: usize, req: Request, done: Completion) {
        let Some(child) = self.children.get(i) else {
            return done.complete(Reply::error("no route"));
        };
        if i + 1 >= self.children.len() {
            return child.route(req, done);
        }
        let me = self.clone();
        child.route(
            req.clone(),
            Completion::then(move |r| {
                if is_hit(&r) {
                    done.complete(r)
                } else {
                    me.attempt(i + 1, req, done)
                }
            }),
        );
    }
}

impl Route for MissFailoverRoute {
    fn route(&self, req: Request, done: Completion) {
        match req {
            Request::MultiGet(m) => per_key(m, |r, c| self.inner.attempt(0, r, c), done),
            Request::Keyed(k) if is_get_like(k.cmd) => {
                self.inner.attempt(0, Request::Keyed(k), done)
            }
            req => match self.inner.children.first() {
                Some(c) => c.route(req, done),
                None => done.complete(Reply::error("no route")),
            },
        }
    }
}
