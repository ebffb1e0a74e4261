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

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    #[test]
    fn each_request_goes_to_one_child_and_every_child_gets_some() {
        let log = log();
        let a = Fake::new("a", &log, Answer::Data("VALUE k 0 1\r\na\r\nEND\r\n"));
        let b = Fake::new("b", &log, MISS);
        let r = RandomRoute::new(vec![a.as_route(), b.as_route()]);
        let mut replies = Vec::new();
        for _ in 0..200 {
            replies.push(ask(&r, "get k\r\n").unwrap());
        }
        assert_eq!(calls(&log).len(), 200, "one child per request");
        let hits = replies.iter().filter(|r| r.starts_with("VALUE")).count();
        let from_a = calls(&log).iter().filter(|c| c.starts_with("a:")).count();
        assert_eq!(hits, from_a, "the reply is the chosen child's");
        assert!(from_a > 0 && from_a < 200, "{from_a} of 200 to a");
    }
}
