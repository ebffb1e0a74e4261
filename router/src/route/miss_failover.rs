//! miss-failover: get-like requests try the children in order until one hits (a miss or
//! an error moves on; the last child's reply is the answer); multi-gets key by key;
//! everything else goes to the first child.
//!
//! ```toml
//! [route]
//! type = "miss-failover"
//! children = ["new", "old"]
//! ```

use std::rc::Rc;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{per_key, Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::{Cmd, Request};

pub const TYPE: RouteType = RouteType {
    name: "miss-failover",
    keys: &["children"],
    parse,
};

#[derive(Debug)]
pub struct MissFailoverSpec {
    children: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(MissFailoverSpec {
        children: p.required_children(t, "children")?,
    }))
}

impl Spec for MissFailoverSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(MissFailoverRoute::new(b.all(&self.children)))
    }

    fn describe(&self, d: &mut Describe) {
        d.list("miss-failover", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
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
        let failover = self.clone();
        child.route(
            req.clone(),
            Completion::then(move |r| {
                if is_hit(&r) {
                    done.complete(r)
                } else {
                    failover.attempt(i + 1, req, done)
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
