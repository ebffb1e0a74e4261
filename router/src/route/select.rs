//! Selector routes: pick one child per request and pass the completion on unchanged.
//!
//! - prefix: the longest key prefix that matches picks the child (else `default`);
//! - operation: the command's class (get-like, set-like, delete, arithmetic, touch,
//!   flush_all) picks the child (else `default`);
//! - random: a random child, e.g. to spread reads over replicas.

use super::spec::OpClass;
use super::{split_multi_get, Completion, Gather, Route, RouteRef};
use crate::protocol::Request;

pub struct PrefixRoute {
    /// Longest first.
    prefixes: Vec<(Vec<u8>, RouteRef)>,
    default: RouteRef,
}

impl PrefixRoute {
    pub fn new(prefixes: Vec<(Vec<u8>, RouteRef)>, default: RouteRef) -> PrefixRoute {
        PrefixRoute { prefixes, default }
    }

    /// Index into `prefixes`, or `prefixes.len()` for the default.
    fn pick(&self, key: &[u8]) -> usize {
        self.prefixes
            .iter()
            .position(|(p, _)| key.starts_with(p))
            .unwrap_or(self.prefixes.len())
    }

    fn child(&self, i: usize) -> &RouteRef {
        self.prefixes.get(i).map_or(&self.default, |(_, r)| r)
    }
}

impl Route for PrefixRoute {
    fn route(&self, req: Request, done: Completion) {
        match req {
            Request::Keyed(k) => {
                let i = self.pick(&k.key);
                self.child(i).route(Request::Keyed(k), done)
            }
            Request::MultiGet(m) => split_multi_get(
                m,
                |k| self.pick(k),
                |i, r, c| self.child(i).route(r, c),
                done,
            ),
            // No key: every subtree hears a flush.
            Request::FlushAll { .. } => {
                let n = self.prefixes.len() + 1;
                let gather = Gather::new(n, done);
                for i in 0..n {
                    self.child(i)
                        .route(req.clone(), Completion::Gather(gather.clone()));
                }
            }
            Request::Version | Request::Stats { .. } => self.default.route(req, done),
        }
    }
}

pub struct OperationRoute {
    ops: Vec<(OpClass, RouteRef)>,
    default: RouteRef,
}

impl OperationRoute {
    pub fn new(ops: Vec<(OpClass, RouteRef)>, default: RouteRef) -> OperationRoute {
        OperationRoute { ops, default }
    }
}

impl Route for OperationRoute {
    fn route(&self, req: Request, done: Completion) {
        let class = OpClass::of(req.cmd());
        let child = self
            .ops
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(&self.default, |(_, r)| r);
        child.route(req, done)
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
            None => done.complete(super::Reply::error("no route")),
        }
    }
}
