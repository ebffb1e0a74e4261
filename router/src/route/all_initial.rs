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
