//! all-sync: every child gets the request; the reply waits for all of them and is the
//! worst one (router error, then server/client errors, then "did not happen" such as
//! `NOT_STORED`/`NOT_FOUND`/miss, then success); among equals, the earliest child's.
//!
//! ```toml
//! [routes.both]
//! type = "all-sync"
//! children = ["a", "b"]
//! ```

use std::rc::Rc;

use super::joiner::{Fold, Joiner};
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::wire::badness;
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::Request;

pub const TYPE: RouteType = RouteType {
    name: "all-sync",
    keys: &["children"],
    parse,
};

#[derive(Debug)]
pub struct AllSyncSpec {
    children: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(AllSyncSpec {
        children: p.required_children(t, "children")?,
    }))
}

impl Spec for AllSyncSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(AllSyncRoute::new(b.all(&self.children)))
    }

    fn describe(&self, d: &mut Describe) {
        d.list("all-sync", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
    }
}

pub struct AllSyncRoute {
    children: Vec<RouteRef>,
}

impl AllSyncRoute {
    pub fn new(children: Vec<RouteRef>) -> AllSyncRoute {
        AllSyncRoute { children }
    }
}

/// The worst reply so far: its badness, the child it came from, the reply.
#[derive(Default)]
struct Worst(Option<(u8, usize, Reply)>);

impl Fold for Worst {
    fn add(&mut self, child: usize, r: Reply) -> Option<Reply> {
        let b = badness(&r);
        let replace = match &self.0 {
            None => true,
            Some((wb, wi, _)) => b > *wb || (b == *wb && child < *wi),
        };
        if replace {
            self.0 = Some((b, child, r));
        }
        None
    }

    fn finish(&mut self) -> Option<Reply> {
        self.0.take().map(|(_, _, r)| r)
    }
}

impl Route for AllSyncRoute {
    fn route(&self, req: Request, done: Completion) {
        let worst = Joiner::new(self.children.len(), Worst::default(), done);
        for (i, c) in self.children.iter().enumerate() {
            c.route(req.clone(), worst.part(i));
        }
    }
}
