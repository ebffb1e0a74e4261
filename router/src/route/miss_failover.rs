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

use super::joiner::per_key;
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
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

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    const HIT: Answer = Answer::Data("VALUE k 0 1\r\no\r\nEND\r\n");

    #[test]
    fn a_get_tries_the_children_until_one_hits() {
        let log = log();
        let new = Fake::new("new", &log, MISS).then(&[MISS, Answer::Error, HIT]);
        let old = Fake::new("old", &log, HIT);
        let r = MissFailoverRoute::new(vec![new.as_route(), old.as_route()]);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 0 1\r\no\r\nEND\r\n");
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 0 1\r\no\r\nEND\r\n");
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 0 1\r\no\r\nEND\r\n");
        assert_eq!(
            calls(&log),
            [
                "new: get k",
                "old: get k",
                "new: get k",
                "old: get k",
                "new: get k"
            ]
        );
    }

    #[test]
    fn the_last_childs_miss_is_the_answer_and_writes_go_to_the_first() {
        let log = log();
        let new = Fake::new("new", &log, MISS);
        let old = Fake::new("old", &log, MG_MISS);
        let r = MissFailoverRoute::new(vec![new.as_route(), old.as_route()]);
        assert_eq!(ask(&r, "mg k v\r\n").unwrap(), "EN\r\n");
        assert_eq!(ask(&r, "set k 0 0 1\r\nv\r\n").unwrap(), "END\r\n");
        assert_eq!(
            calls(&log),
            ["new: mg k v", "old: mg k v", "new: set k 0 0 \"v\""]
        );
    }

    #[test]
    fn a_multi_get_fails_over_key_by_key() {
        let log = log();
        let new = Fake::new("new", &log, MISS).then(&[Answer::Data("VALUE a 0 1\r\nn\r\nEND\r\n")]);
        let old = Fake::new("old", &log, Answer::Data("VALUE b 0 1\r\no\r\nEND\r\n"));
        let r = MissFailoverRoute::new(vec![new.as_route(), old.as_route()]);
        assert_eq!(
            ask(&r, "get a b\r\n").unwrap(),
            "VALUE a 0 1\r\nn\r\nVALUE b 0 1\r\no\r\nEND\r\n"
        );
        assert_eq!(calls(&log), ["new: get a", "new: get b", "old: get b"]);
    }
}
