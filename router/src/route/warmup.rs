//! The warm-up route: a cold pool (new or emptied cluster) served with the help of a warm
//! one, using only memcached 1.6's stock commands.
//!
//! - `get`/`gets` (and their multi-key forms, key by key): read cold. A hit is the answer.
//!   On a miss, read warm with `mg <key> v f t` (value, flags, remaining TTL) and backfill
//!   cold with `add <key> <flags> <remaining ttl>`. `get` answers the warm value when the
//!   add was stored; `gets` (which needs a CAS token from cold) and a refused add (the key
//!   is held off, or a client wrote it meanwhile) read cold again.
//! - `mg`: the same, with the client's own `mg` re-issued to cold after the backfill.
//! - every delete (`delete`, `md`) is sent to cold followed by the hold-off tombstone of
//!   `marker::holdoff` (`set <key> <TOMBSTONE_FLAGS> <holdoff> 0`): for `holdoff_secs`
//!   every `add` of the key fails, so a value read from a warm pool that has not seen the
//!   invalidation yet is never written back, by this router or any other instance.
//! - reads treat a tombstone as a miss (and do not consult warm: the key was just
//!   invalidated).
//! - everything else (writes, arithmetic, touch, gat) goes to cold only.
//! - keys that cannot be written into a text command (see `marker::key`) are served by cold
//!   alone.
//!
//! ```toml
//! [route]
//! type = "warmup"
//! cold = "new"
//! warm = "old"
//! holdoff_secs = 2
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::joiner::per_key;
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::item_codec::{
    self as wire, miss_reply, parse_get, parse_mg, value_reply, Read,
};
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

pub const TYPE: RouteType = RouteType {
    name: "warmup",
    keys: &["cold", "warm", "holdoff_secs"],
    parse,
};

#[derive(Debug)]
pub struct WarmupSpec {
    cold: RouteSpec,
    warm: RouteSpec,
    holdoff_secs: u32,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(WarmupSpec {
        cold: p.required_child(t, "cold")?,
        warm: p.required_child(t, "warm")?,
        holdoff_secs: p.seconds(t, "holdoff_secs", marker::holdoff::DEFAULT_HOLDOFF_SECS, 60)?,
    }))
}

impl Spec for WarmupSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(WarmupRoute::new(
            b.route(&self.cold),
            b.route(&self.warm),
            self.holdoff_secs,
            b.stats.clone(),
        ))
    }

    /// Cold, then warm: a read reaches warm only on a cold miss.
    fn describe(&self, d: &mut Describe) {
        d.list("warmup", [&self.cold, &self.warm])
    }

    fn children(&self) -> Vec<&RouteSpec> {
        vec![&self.cold, &self.warm]
    }
}

pub struct WarmupRoute {
    inner: Rc<Warmup>,
}

struct Warmup {
    cold: RouteRef,
    warm: RouteRef,
    holdoff: u32,
    stats: Arc<WorkerStats>,
}

impl WarmupRoute {
    pub fn new(
        cold: RouteRef,
        warm: RouteRef,
        holdoff: u32,
        stats: Arc<WorkerStats>,
    ) -> WarmupRoute {
        WarmupRoute {
            inner: Rc::new(Warmup {
                cold,
                warm,
                holdoff,
                stats,
            }),
        }
    }
}

/// A key that can be written into a text command as it is.
fn text_key(key: &[u8]) -> bool {
    marker::key::validate(key).is_ok()
}

fn is_tombstone(cmd: Cmd, r: &Reply) -> bool {
    match (cmd, r) {
        (Cmd::Mg, Reply::Error(_)) => false,
        (Cmd::Mg, _) => wire::mg_is_tombstone(&wire::bytes_of(r)),
        _ => matches!(parse_get(r), Read::Hit(i) if i.is_tombstone()),
    }
}

/// `done`, with a tombstone turned into a miss.
fn filtered(cmd: Cmd, done: Completion) -> Completion {
    Completion::then(move |r| {
        if is_tombstone(cmd, &r) {
            done.complete(miss_reply(cmd))
        } else {
            done.complete(r)
        }
    })
}

impl Warmup {
    fn read(self: &Rc<Self>, req: Request, done: Completion) {
        let Request::Keyed(k) = &req else {
            return self.cold.route(req, done);
        };
        let (cmd, key) = (k.cmd, k.key.clone());
        let warmup = self.clone();
        self.cold.route(
            req.clone(),
            Completion::then(move |r| {
                let miss = match cmd {
                    Cmd::Mg => matches!(&r, Reply::Data(d) if d.starts_with(b"EN")),
                    _ => matches!(parse_get(&r), Read::Miss),
                };
                if is_tombstone(cmd, &r) {
                    done.complete(miss_reply(cmd))
                } else if miss && text_key(&key) {
                    warmup.from_warm(req, key, cmd, done)
                } else {
                    done.complete(r)
                }
            }),
        );
    }

    fn from_warm(self: &Rc<Self>, req: Request, key: Bytes, cmd: Cmd, done: Completion) {
        let warmup = self.clone();
        self.warm.route(
            wire::mg(&key, "v f t"),
            Completion::then(move |r| {
                let item = match parse_mg(&r) {
                    Read::Hit(item) if !item.is_tombstone() => item,
                    _ => return done.complete(miss_reply(cmd)),
                };
                warmup.stats.warm_hits.add(1);
                let add = wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                let after_add = warmup.clone();
                warmup.cold.route(
                    add,
                    Completion::then(move |a| {
                        let stored = matches!(&a, Reply::Data(d) if d.starts_with(b"STORED"));
                        if stored {
                            after_add.stats.backfills.add(1);
                        }
                        if a.is_error() {
                            after_add.stats.async_failures.add(1);
                        }
                        match (cmd, stored, a.is_error()) {
                            (Cmd::Get, true, _) | (Cmd::Get, _, true) => {
                                done.complete(value_reply(&key, &item, false))
                            }
                            (_, _, true) => done.complete(miss_reply(cmd)),
                            // gets needs cold's CAS; a refused add means cold knows better.
                            _ => after_add.cold.route(req, filtered(cmd, done)),
                        }
                    }),
                );
            }),
        );
    }

    fn delete(self: &Rc<Self>, req: Request, key: Bytes, cmd: Cmd, done: Completion) {
        if !text_key(&key) {
            return self.cold.route(req, done);
        }
        self.stats.holdoffs.add(1);
        let first: Rc<Cell<Option<Reply>>> = Rc::new(Cell::new(None));
        let slot = first.clone();
        // Same key, same server and connection: the delete's reply comes first.
        self.cold
            .route(req, Completion::then(move |r| slot.set(Some(r))));
        self.cold.route(
            wire::tombstone(&key, self.holdoff),
            Completion::then(move |t| match first.take() {
                Some(r) if t.is_error() && !r.is_error() => done.complete(t),
                Some(r) => done.complete(r),
                None if t.is_error() => done.complete(t),
                None => done.complete(Reply::Data(Bytes::from_static(if cmd == Cmd::Md {
                    b"HD\r\n"
                } else {
                    b"DELETED\r\n"
                }))),
            }),
        );
    }
}

impl Route for WarmupRoute {
    fn route(&self, req: Request, done: Completion) {
        let warmup = &self.inner;
        match req {
            Request::MultiGet(m) if matches!(m.cmd, Cmd::Get | Cmd::Gets) => {
                per_key(m, |r, c| warmup.read(r, c), done)
            }
            Request::MultiGet(m) => {
                let cmd = m.cmd;
                per_key(m, |r, c| warmup.cold.route(r, filtered(cmd, c)), done)
            }
            Request::Keyed(k) => match k.cmd {
                Cmd::Get | Cmd::Gets | Cmd::Mg => warmup.read(Request::Keyed(k), done),
                Cmd::Gat | Cmd::Gats => {
                    let cmd = k.cmd;
                    warmup.cold.route(Request::Keyed(k), filtered(cmd, done))
                }
                Cmd::Delete | Cmd::Md => {
                    let (key, cmd) = (k.key.clone(), k.cmd);
                    warmup.delete(Request::Keyed(k), key, cmd, done)
                }
                _ => warmup.cold.route(Request::Keyed(k), done),
            },
            req => warmup.cold.route(req, done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    const WARM_HIT: Answer = Answer::Data("VA 1 f5 t30\r\nw\r\n");

    fn route(cold: &Rc<Fake>, warm: &Rc<Fake>, stats: &Arc<WorkerStats>) -> WarmupRoute {
        WarmupRoute::new(cold.as_route(), warm.as_route(), 2, stats.clone())
    }

    #[test]
    fn a_cold_miss_is_read_warm_and_backfilled_with_add_and_the_remaining_ttl() {
        let log = log();
        let stats = stats();
        let cold = Fake::new("cold", &log, STORED).then(&[MISS]);
        let warm = Fake::new("warm", &log, WARM_HIT);
        let r = route(&cold, &warm, &stats);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 5 1\r\nw\r\nEND\r\n");
        assert_eq!(
            calls(&log),
            ["cold: get k", "warm: mg k v f t", "cold: add k 5 30 \"w\""]
        );
        assert_eq!((stats.warm_hits.get(), stats.backfills.get()), (1, 1));
    }

    #[test]
    fn a_refused_add_or_a_gets_reads_cold_again() {
        let log = log();
        let stats = stats();
        let cold = Fake::new("cold", &log, MISS).then(&[
            MISS,
            NOT_STORED,
            Answer::Data("VALUE k 9 1\r\nc\r\nEND\r\n"),
            MISS,
            STORED,
            Answer::Data("VALUE k 5 1 77\r\nw\r\nEND\r\n"),
        ]);
        let warm = Fake::new("warm", &log, WARM_HIT);
        let r = route(&cold, &warm, &stats);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "VALUE k 9 1\r\nc\r\nEND\r\n");
        assert_eq!(
            ask(&r, "gets k\r\n").unwrap(),
            "VALUE k 5 1 77\r\nw\r\nEND\r\n"
        );
        assert_eq!(
            calls(&log),
            [
                "cold: get k",
                "warm: mg k v f t",
                "cold: add k 5 30 \"w\"",
                "cold: get k",
                "cold: gets k",
                "warm: mg k v f t",
                "cold: add k 5 30 \"w\"",
                "cold: gets k"
            ]
        );
        assert_eq!(stats.backfills.get(), 1);
    }

    #[test]
    fn a_delete_is_followed_by_the_holdoff_tombstone() {
        let log = log();
        let stats = stats();
        let cold = Fake::new("cold", &log, STORED).then(&[DELETED]);
        let warm = Fake::new("warm", &log, WARM_HIT);
        let r = route(&cold, &warm, &stats);
        assert_eq!(ask(&r, "delete k\r\n").unwrap(), "DELETED\r\n");
        let flags = marker::holdoff::TOMBSTONE_FLAGS;
        assert_eq!(
            calls(&log),
            [
                "cold: delete k".to_string(),
                format!("cold: set k {flags} 2 \"\"")
            ]
        );
        assert_eq!(stats.holdoffs.get(), 1);
    }

    #[test]
    fn a_tombstone_reads_as_a_miss_without_asking_warm() {
        let log = log();
        let stats = stats();
        let flags = marker::holdoff::TOMBSTONE_FLAGS;
        let tombstone: &'static str =
            Box::leak(format!("VALUE k {flags} 0\r\n\r\nEND\r\n").into_boxed_str());
        let cold = Fake::new("cold", &log, Answer::Data(tombstone));
        let warm = Fake::new("warm", &log, WARM_HIT);
        let r = route(&cold, &warm, &stats);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "END\r\n");
        assert_eq!(calls(&log), ["cold: get k"]);
    }

    #[test]
    fn a_warm_miss_is_a_miss_and_writes_go_to_cold_only() {
        let log = log();
        let stats = stats();
        let cold = Fake::new("cold", &log, MISS).then(&[MISS]);
        let warm = Fake::new("warm", &log, MG_MISS);
        let r = route(&cold, &warm, &stats);
        assert_eq!(ask(&r, "get k\r\n").unwrap(), "END\r\n");
        ask(&r, "set k 0 0 1\r\nv\r\n");
        assert_eq!(
            calls(&log),
            ["cold: get k", "warm: mg k v f t", "cold: set k 0 0 \"v\""]
        );
        assert_eq!(stats.warm_hits.get(), 0);
    }
}
