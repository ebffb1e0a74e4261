//! Fan-out routes: every child gets the request.
//!
//! - all-sync: waits for every child, replies with the worst reply (router error, then
//!   server/client errors, then "did not happen" such as `NOT_STORED`/`NOT_FOUND`/miss,
//!   then success); among equals, the earliest child's.
//! - all-async: replies with the first child reply that is not an error (any child, as
//!   soon as it arrives), finishes the rest in the background and counts their failures.
//! - all-initial: replies with the first child's reply; the others run in the background,
//!   their failures counted (`route_async_failures`). The seed kvproxy's GroupClient.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::{Completion, Reply, Route, RouteRef};
use crate::protocol::item_codec::badness;
use crate::protocol::Request;
use crate::stats::WorkerStats;

pub struct AllSyncRoute {
    children: Vec<RouteRef>,
}

impl AllSyncRoute {
    pub fn new(children: Vec<RouteRef>) -> AllSyncRoute {
        AllSyncRoute { children }
    }
}

struct Worst {
    left: Cell<usize>,
    worst: RefCell<Option<(u8, usize, Reply)>>,
    done: Cell<Option<Completion>>,
}

impl Worst {
    fn add(&self, idx: usize, r: Reply) {
        let b = badness(&r);
        {
            let mut w = self.worst.borrow_mut();
            let replace = match &*w {
                None => true,
                Some((wb, wi, _)) => b > *wb || (b == *wb && idx < *wi),
            };
            if replace {
                *w = Some((b, idx, r));
            }
        }
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            if let (Some(done), Some((_, _, r))) = (self.done.take(), self.worst.take()) {
                done.complete(r);
            }
        }
    }
}

impl Route for AllSyncRoute {
    fn route(&self, req: Request, done: Completion) {
        let w = Rc::new(Worst {
            left: Cell::new(self.children.len()),
            worst: RefCell::new(None),
            done: Cell::new(Some(done)),
        });
        for (i, c) in self.children.iter().enumerate() {
            let w = w.clone();
            c.route(req.clone(), Completion::then(move |r| w.add(i, r)));
        }
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

struct First {
    left: Cell<usize>,
    done: Cell<Option<Completion>>,
    stats: Arc<WorkerStats>,
}

impl First {
    fn add(&self, r: Reply) {
        let failed = r.is_error() || badness(&r) >= 2;
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if !failed {
            if let Some(done) = self.done.take() {
                return done.complete(r);
            }
            return;
        }
        match self.done.take() {
            // Already answered: a background failure.
            None => self.stats.async_failures.add(1),
            Some(done) if left == 0 => {
                // Every child failed: the client sees this one; earlier ones were counted.
                done.complete(r)
            }
            Some(done) => {
                self.stats.async_failures.add(1);
                self.done.set(Some(done));
            }
        }
    }
}

impl Route for AllAsyncRoute {
    fn route(&self, req: Request, done: Completion) {
        let f = Rc::new(First {
            left: Cell::new(self.children.len()),
            done: Cell::new(Some(done)),
            stats: self.stats.clone(),
        });
        for c in &self.children {
            let f = f.clone();
            c.route(req.clone(), Completion::then(move |r| f.add(r)));
        }
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
