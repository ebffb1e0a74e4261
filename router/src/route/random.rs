//! The random route: a random child per request, e.g. to spread reads over replicas.
//!
//! ```toml
//! [route]
//! type = "random"
//! children = ["replica-a", "replica-b"]
//! ```

use std::rc::Rc;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::Request;

pub const TYPE: RouteType = RouteType {
    name: "random",
    keys: &["children"],
    parse,
};

#[derive(Debug)]
pub struct RandomSpec {
    children: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(RandomSpec {
        children: p.required_children(t, "children")?,
    }))
}

impl Spec for RandomSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(RandomRoute::new(b.all(&self.children)))
    }

    /// Any child may serve: all are listed.
    fn describe(&self, d: &mut Describe) {
        d.list("random", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
    }
}

pub struct RandomRoute {
    children: Vec<RouteRef>,
}

impl RandomRoute {
    pub fn new(children: Vec<RouteRef>) -> RandomRoute {
        RandomRoute { children }
    }
}

impl Route for RandomRoute {
    fn route(&self, req: Request, done: Completion) {
        let i = fastrand::usize(..self.children.len().max(1));
        match self.children.get(i) {
            Some(c) => c.route(req, done),
            None => done.complete(Reply::error("no route")),
        }
    }
}
