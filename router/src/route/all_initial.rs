//! all-initial: every child gets the request; the reply is the first child's. The others
//! run in the background, their failures counted (`route_async_failures`). The seed
//! kvproxy's GroupClient.
//!
//! ```toml
//! [route]
//! type = "all-initial"
//! children = ["primary", "copy"]
//! ```

use std::rc::Rc;
use std::sync::Arc;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::Request;
use crate::stats::WorkerStats;

pub const TYPE: RouteType = RouteType {
    name: "all-initial",
    keys: &["children"],
    parse,
};

#[derive(Debug)]
pub struct AllInitialSpec {
    children: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(AllInitialSpec {
        children: p.required_children(t, "children")?,
    }))
}

impl Spec for AllInitialSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(AllInitialRoute::new(b.all(&self.children), b.stats.clone()))
    }

    fn describe(&self, d: &mut Describe) {
        d.list("all-initial", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
    }
}

pub struct AllInitialRoute {
    children: Vec<RouteRef>,
    stats: Arc<WorkerStats>,
}

impl AllInitialRoute {
    pub fn new(children: Vec<RouteRef>, stats: Arc<WorkerStats>) -> AllInitialRoute {
        AllInitialRoute { children, stats }
    }
}

impl Route for AllInitialRoute {
    fn route(&self, req: Request, done: Completion) {
        let Some((first, rest)) = self.children.split_first() else {
            return done.complete(Reply::error("no route"));
        };
        for c in rest {
            c.route(req.clone(), Completion::Background(self.stats.clone()));
        }
        first.route(req, done);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    #[test]
    fn the_first_childs_reply_the_others_in_the_background() {
        let log = log();
        let first = Fake::new("first", &log, Answer::Hold);
        let other = Fake::new("other", &log, Answer::Error);
        let stats = stats();
        let r = AllInitialRoute::new(vec![first.as_route(), other.as_route()], stats.clone());
        let got = ask_later(&r, "set k 0 0 1\r\nv\r\n");
        assert_eq!(
            calls(&log),
            ["other: set k 0 0 \"v\"", "first: set k 0 0 \"v\""]
        );
        assert_eq!(*got.borrow(), None, "the other child does not answer");
        assert_eq!(stats.async_failures.get(), 1);
        first.release("NOT_STORED\r\n");
        assert_eq!(got.borrow().as_deref(), Some("NOT_STORED\r\n"));
    }
}
