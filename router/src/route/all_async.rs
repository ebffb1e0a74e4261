//! all-async: every child gets the request; the reply is the first child reply that is
//! not an error (any child, as soon as it arrives). The rest finish in the background,
//! their failures counted (`route_async_failures`); when every child failed, the client
//! gets the last failure.
//!
//! ```toml
//! [route]
//! type = "all-async"
//! children = ["a", "b"]
//! ```

use std::rc::Rc;
use std::sync::Arc;

use super::joiner::{Fold, Joiner};
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::item_codec::badness;
use crate::protocol::Request;
use crate::stats::WorkerStats;

pub const TYPE: RouteType = RouteType {
    name: "all-async",
    keys: &["children"],
    parse,
};

#[derive(Debug)]
pub struct AllAsyncSpec {
    children: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(AllAsyncSpec {
        children: p.required_children(t, "children")?,
    }))
}

impl Spec for AllAsyncSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(AllAsyncRoute::new(b.all(&self.children), b.stats.clone()))
    }

    fn describe(&self, d: &mut Describe) {
        d.list("all-async", &self.children)
    }

    fn children(&self) -> Vec<&RouteSpec> {
        self.children.iter().collect()
    }
}

pub struct AllAsyncRoute {
    children: Vec<RouteRef>,
    stats: Arc<WorkerStats>,
}

impl AllAsyncRoute {
    pub fn new(children: Vec<RouteRef>, stats: Arc<WorkerStats>) -> AllAsyncRoute {
        AllAsyncRoute { children, stats }
    }
}

/// The first good reply answers; failures are counted, except the one a client gets
/// when every child failed.
struct FirstGood {
    answered: bool,
    /// The latest failure not counted yet.
    failure: Option<Reply>,
    stats: Arc<WorkerStats>,
}

impl Fold for FirstGood {
    fn add(&mut self, _child: usize, r: Reply) -> Option<Reply> {
        if r.is_error() || badness(&r) >= 2 {
            if self.failure.replace(r).is_some() {
                self.stats.async_failures.add(1);
            }
            return None;
        }
        if self.answered {
            return None;
        }
        self.answered = true;
        Some(r)
    }

    fn finish(&mut self) -> Option<Reply> {
        let failure = self.failure.take();
        if self.answered {
            if failure.is_some() {
                self.stats.async_failures.add(1);
            }
            return None;
        }
        failure
    }
}

impl Route for AllAsyncRoute {
    fn route(&self, req: Request, done: Completion) {
        let fold = FirstGood {
            answered: false,
            failure: None,
            stats: self.stats.clone(),
        };
        let first = Joiner::new(self.children.len(), fold, done);
        for (i, c) in self.children.iter().enumerate() {
            c.route(req.clone(), first.part(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    #[test]
    fn the_first_good_reply_answers_at_once_and_later_failures_are_counted() {
        let log = log();
        let slow = Fake::new("slow", &log, Answer::Hold);
        let fast = Fake::new("fast", &log, STORED);
        let stats = stats();
        let r = AllAsyncRoute::new(vec![slow.as_route(), fast.as_route()], stats.clone());
        assert_eq!(ask(&r, "set k 0 0 1\r\nv\r\n").unwrap(), "STORED\r\n");
        assert_eq!(
            calls(&log),
            ["slow: set k 0 0 \"v\"", "fast: set k 0 0 \"v\""]
        );
        assert_eq!(slow.held(), 1);
        slow.release("SERVER_ERROR out of memory\r\n");
        assert_eq!(stats.async_failures.get(), 1);
    }

    #[test]
    fn a_failure_does_not_answer_while_another_child_may_succeed() {
        let log = log();
        let down = Fake::new("down", &log, Answer::Error);
        let slow = Fake::new("slow", &log, Answer::Hold);
        let stats = stats();
        let r = AllAsyncRoute::new(vec![down.as_route(), slow.as_route()], stats.clone());
        let got = ask_later(&r, "delete k\r\n");
        assert_eq!(*got.borrow(), None);
        slow.release("DELETED\r\n");
        assert_eq!(got.borrow().as_deref(), Some("DELETED\r\n"));
        assert_eq!(stats.async_failures.get(), 1, "the failure nobody saw");
    }

    #[test]
    fn when_every_child_fails_the_client_sees_the_last_failure() {
        let log = log();
        let a = Fake::new("a", &log, Answer::Error);
        let b = Fake::new("b", &log, Answer::Data("CLIENT_ERROR bad\r\n"));
        let stats = stats();
        let r = AllAsyncRoute::new(vec![a.as_route(), b.as_route()], stats.clone());
        assert_eq!(ask(&r, "incr k 1\r\n").unwrap(), "CLIENT_ERROR bad\r\n");
        assert_eq!(stats.async_failures.get(), 1);
    }
}
