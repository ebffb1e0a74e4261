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
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::item_codec::badness;
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

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    fn route(children: &[&Rc<Fake>]) -> AllSyncRoute {
        AllSyncRoute::new(children.iter().map(|c| c.as_route()).collect())
    }

    #[test]
    fn every_child_gets_the_request_and_the_worst_reply_wins() {
        let log = log();
        let (a, b, c) = (
            Fake::new("a", &log, STORED),
            Fake::new("b", &log, NOT_STORED),
            Fake::new("c", &log, STORED),
        );
        let r = route(&[&a, &b, &c]);
        assert_eq!(ask(&r, "set k 0 0 1\r\nv\r\n").unwrap(), "NOT_STORED\r\n");
        assert_eq!(
            calls(&log),
            [
                "a: set k 0 0 \"v\"",
                "b: set k 0 0 \"v\"",
                "c: set k 0 0 \"v\""
            ]
        );
        let e = Fake::new("e", &log, Answer::Error);
        let r = route(&[&a, &e, &b]);
        assert_eq!(
            ask(&r, "delete k\r\n").unwrap(),
            "SERVER_ERROR timeout\r\n",
            "a router error is worse than anything"
        );
        let server = Fake::new("s", &log, Answer::Data("SERVER_ERROR out of memory\r\n"));
        let client = Fake::new("c", &log, Answer::Data("CLIENT_ERROR bad\r\n"));
        let r = route(&[&client, &server, &b]);
        assert_eq!(
            ask(&r, "get k\r\n").unwrap(),
            "SERVER_ERROR out of memory\r\n"
        );
    }

    #[test]
    fn among_equals_the_earliest_child_and_it_waits_for_all() {
        let log = log();
        let a = Fake::new("a", &log, Answer::Hold);
        let b = Fake::new("b", &log, NOT_STORED);
        let r = route(&[&a, &b]);
        let got = ask_later(&r, "add k 0 0 1\r\nv\r\n");
        assert_eq!(*got.borrow(), None, "answered before a replied");
        a.release("NOT_FOUND\r\n");
        assert_eq!(got.borrow().as_deref(), Some("NOT_FOUND\r\n"));
    }
}
