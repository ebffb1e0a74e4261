//! Routes: what happens to a parsed request. This is the seam route trees plug into.
//!
//! A [`Route`] takes a [`Request`] and a [`Completion`] and must complete it exactly once,
//! now or later, on the same worker thread. Routes are not `async`: a pool route only
//! appends bytes to a backend connection's queue and returns, so a request costs no task
//! and no channel; the reply arrives through the `Completion` when the backend connection
//! reads it. Composite routes (prefix or operation selectors, fan-out, failover) wrap other
//! routes: they pick one or several children and pass either the same completion or a
//! [`Completion::Then`] that inspects the reply first (e.g. failover on `SERVER_ERROR`).
//!
//! Everything here lives on one worker thread, hence `Rc` and `RefCell`.
//!
//! Files: this one (the trait, replies, completions); [`joiner`] (waiting for several
//! replies: multi-get merge, broadcasts, fan-outs); [`spec`] (what a route type implements,
//! and the parser of route tables); one file per route type (its spec parsing, build,
//! `route`, `describe` and tests); [`registry`] (the list of route types, `parse` and
//! `stats route`); `crate::protocol::item_codec` (requests and replies composite routes build and read).

pub mod all_async;
pub mod all_initial;
pub mod all_sync;
pub mod failover;
pub mod joiner;
pub mod master_slave_l1;
pub mod miss_failover;
pub mod operation;
pub mod pool;
pub mod prefix;
pub mod random;
pub mod registry;
pub mod spec;
pub mod warmup;

#[cfg(test)]
mod fake;

use std::rc::Rc;

use crate::backend::health::Watch;
use crate::protocol::item_codec;
use crate::protocol::Request;
use crate::reply_queue::Slot;

/// Replies are a protocol type; routes name them often, so they are re-exported here.
pub use crate::protocol::reply::Reply;

/// Something that serves requests: a pool, or a tree of routes over pools.
pub trait Route {
    /// Starts `req`. `done` must be completed exactly once.
    fn route(&self, req: Request, done: Completion);
}

/// A route as composite routes hold their children (and capture them in completions).
pub type RouteRef = Rc<dyn Route>;

/// A request sent as several parts, as a [`Completion::Part`] holds it: part `part`'s
/// reply is in (see [`joiner::Joiner`]).
pub trait Part {
    fn part_done(&self, part: usize, reply: Reply);
}

/// Where a reply goes.
pub enum Completion {
    /// Into the client's ordered reply queue.
    Client(Slot),
    /// One part of a request sent as several (a share of a split multi-get, one server's
    /// `flush_all` or `stats`, one child of a fan-out), joined with the others.
    Part(Rc<dyn Part>, usize),
    /// Anything else: composite routes use this to look at a reply before passing it on.
    Then(Box<dyn FnOnce(Reply)>),
    /// Into the client's queue, after telling the server's health watch how it went.
    Checked(Slot, Rc<Watch>),
    /// Nowhere: a background send (fan-out, backfill) whose failures are only counted.
    Background(std::sync::Arc<crate::stats::WorkerStats>),
}

impl Completion {
    pub fn complete(self, reply: Reply) {
        match self {
            Completion::Client(slot) => slot.fill(reply),
            Completion::Part(join, part) => join.part_done(part, reply),
            Completion::Then(f) => f(reply),
            Completion::Checked(slot, watch) => {
                watch.observe(&reply);
                slot.fill(reply)
            }
            Completion::Background(stats) => {
                if reply.is_error() || item_codec::badness(&reply) >= 2 {
                    stats.async_failures.add(1);
                }
            }
        }
    }

    /// A completion that runs `f` with the reply.
    pub fn then(f: impl FnOnce(Reply) + 'static) -> Completion {
        Completion::Then(Box::new(f))
    }

    /// This completion, after `watch` has seen the reply.
    pub fn watched(self, watch: &Rc<Watch>) -> Completion {
        match self {
            Completion::Client(slot) => Completion::Checked(slot, watch.clone()),
            // Nothing to report from a background send: still worth counting.
            other => {
                let watch = watch.clone();
                Completion::then(move |r| {
                    watch.observe(&r);
                    other.complete(r)
                })
            }
        }
    }
}

impl crate::backend::connection::Done for Completion {
    #[inline]
    fn done(self, reply: Reply) {
        self.complete(reply)
    }
}

/// Answers every request with the same router error (`SERVER_ERROR <reason>`): a pool the
/// worker could not build.
pub struct ErrorRoute(pub &'static str);

impl Route for ErrorRoute {
    fn route(&self, _req: Request, done: Completion) {
        done.complete(Reply::error(self.0))
    }
}
