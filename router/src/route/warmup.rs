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

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{per_key, Completion, Reply, Route, RouteRef};
use crate::protocol::item_codec::{
    self as wire, miss_reply, parse_get, parse_mg, value_reply, Read,
};
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

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
    !key.is_empty() && key.len() <= 250 && key.iter().all(|&b| b > b' ' && b != 0x7f)
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
        let me = self.clone();
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
                    me.from_warm(req, key, cmd, done)
                } else {
                    done.complete(r)
                }
            }),
        );
    }

    fn from_warm(self: &Rc<Self>, req: Request, key: Bytes, cmd: Cmd, done: Completion) {
        let me = self.clone();
        self.warm.route(
            wire::mg(&key, "v f t"),
            Completion::then(move |r| {
                let item = match parse_mg(&r) {
                    Read::Hit(item) if !item.is_tombstone() => item,
                    _ => return done.complete(miss_reply(cmd)),
                };
                me.stats.warm_hits.add(1);
                let add = wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                let me2 = me.clone();
                me.cold.route(
                    add,
                    Completion::then(move |a| {
                        let stored = matches!(&a, Reply::Data(d) if d.starts_with(b"STORED"));
                        if stored {
                            me2.stats.backfills.add(1);
                        }
                        if a.is_error() {
                            me2.stats.async_failures.add(1);
                        }
                        match (cmd, stored, a.is_error()) {
                            (Cmd::Get, true, _) | (Cmd::Get, _, true) => {
                                done.complete(value_reply(&key, &item, false))
                            }
                            (_, _, true) => done.complete(miss_reply(cmd)),
                            // gets needs cold's CAS; a refused add means cold knows better.
                            _ => me2.cold.route(req, filtered(cmd, done)),
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
        let me = &self.inner;
        match req {
            Request::MultiGet(m) if matches!(m.cmd, Cmd::Get | Cmd::Gets) => {
                per_key(m, |r, c| me.read(r, c), done)
            }
            Request::MultiGet(m) => {
                let cmd = m.cmd;
                per_key(m, |r, c| me.cold.route(r, filtered(cmd, c)), done)
            }
            Request::Keyed(k) => match k.cmd {
                Cmd::Get | Cmd::Gets | Cmd::Mg => me.read(Request::Keyed(k), done),
                Cmd::Gat | Cmd::Gats => {
                    let cmd = k.cmd;
                    me.cold.route(Request::Keyed(k), filtered(cmd, done))
                }
                Cmd::Delete | Cmd::Md => {
                    let (key, cmd) = (k.key.clone(), k.cmd);
                    me.delete(Request::Keyed(k), key, cmd, done)
                }
                _ => me.cold.route(Request::Keyed(k), done),
            },
            req => me.cold.route(req, done),
        }
    }
}
