//! Master-Slave-L1, the seed kvproxy's replication policy, as one named composite route:
//! a master pool, a slave pool (a replica of the master) and any number of L1 pools (small
//! caches near the clients).
//!
//! - `get`: a random L1, then the master, then the slave, until one hits (read with
//!   `mg <key> v f t` to learn flags and remaining TTL); the layers that missed on the way
//!   are backfilled with `add` (never overwriting a newer write) in the background.
//! - `gets` (CAS-style reads): the master; on a miss or failure the slave, and a slave hit
//!   reseeds the master (`add`) so the CAS token the client gets is the master's.
//! - `add`/`cas`: the master; when stored, the value is `set` on the slave and every L1.
//! - `set`/`ms` and `delete`/`md`: all of them; the reply is the master's, the others
//!   finish in the background (failures counted).
//! - other writes (`replace`, `append`, `prepend`, `incr`, `decr`, `touch`, `ma`): the
//!   master; when they succeed the key is deleted from the slave and the L1s, which refill
//!   from the master on the next read.
//! - anything else (`gat`, `mg`, `version`): the master; `flush_all`: everyone.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{per_key, Completion, Gather, Reply, Route, RouteRef};
use crate::protocol::item_codec::{
    self as wire, miss_reply, parse_get, parse_mg, storage_of, value_reply, Read,
};
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

pub struct MasterSlaveL1Route {
    inner: Rc<Msl>,
}

struct Msl {
    master: RouteRef,
    slave: RouteRef,
    l1: Vec<RouteRef>,
    stats: Arc<WorkerStats>,
}

impl MasterSlaveL1Route {
    pub fn new(
        master: RouteRef,
        slave: RouteRef,
        l1: Vec<RouteRef>,
        stats: Arc<WorkerStats>,
    ) -> MasterSlaveL1Route {
        MasterSlaveL1Route {
            inner: Rc::new(Msl {
                master,
                slave,
                l1,
                stats,
            }),
        }
    }
}

fn text_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= 250 && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

impl Msl {
    /// Slave and L1s: the copies.
    fn copies(&self) -> impl Iterator<Item = &RouteRef> {
        std::iter::once(&self.slave).chain(self.l1.iter())
    }

    /// A background write whose success counts as a backfill.
    fn backfill(&self, to: &RouteRef, req: Request) {
        let stats = self.stats.clone();
        to.route(
            req,
            Completion::then(move |r| match &r {
                Reply::Data(d) if d.starts_with(b"STORED") => stats.backfills.add(1),
                Reply::Data(d) if d.starts_with(b"NOT_STORED") => {}
                _ => stats.async_failures.add(1),
            }),
        );
    }

    fn background(&self, to: &RouteRef, req: Request) {
        to.route(req, Completion::Background(self.stats.clone()));
    }

    /// `get`: L1, master, slave; backfill the layers that missed.
    fn read(self: &Rc<Self>, key: Bytes, done: Completion) {
        let mut layers: Vec<RouteRef> = Vec::with_capacity(3);
        if !self.l1.is_empty() {
            layers.push(self.l1[fastrand::usize(..self.l1.len())].clone());
        }
        layers.push(self.master.clone());
        layers.push(self.slave.clone());
        self.step(Rc::new(layers), 0, Vec::new(), key, done);
    }

    fn step(
        self: &Rc<Self>,
        layers: Rc<Vec<RouteRef>>,
        i: usize,
        mut missed: Vec<usize>,
        key: Bytes,
        done: Completion,
    ) {
        let Some(layer) = layers.get(i) else {
            return done.complete(miss_reply(Cmd::Get));
        };
        let me = self.clone();
        let layers2 = layers.clone();
        layer.route(
            wire::mg(&key, "v f t"),
            Completion::then(move |r| match parse_mg(&r) {
                Read::Hit(item) => {
                    for &m in &missed {
                        let add =
                            wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                        me.backfill(&layers2[m], add);
                    }
                    done.complete(value_reply(&key, &item, false))
                }
                read => {
                    if matches!(read, Read::Miss) {
                        missed.push(i);
                    }
                    me.step(layers2, i + 1, missed, key, done)
                }
            }),
        );
    }

    /// `gets`: master; else slave, reseeding master.
    fn cas_read(self: &Rc<Self>, req: Request, key: Bytes, done: Completion) {
        let me = self.clone();
        self.master.route(
            req.clone(),
            Completion::then(move |r| {
                if let Read::Hit(_) = parse_get(&r) {
                    return done.complete(r);
                }
                let master_failed = r.is_error();
                let me2 = me.clone();
                me.slave.route(
                    wire::mg(&key, "v f t c"),
                    Completion::then(move |s| {
                        let item = match parse_mg(&s) {
                            Read::Hit(item) => item,
                            _ if master_failed => return done.complete(r),
                            _ => return done.complete(miss_reply(Cmd::Gets)),
                        };
                        let add =
                            wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                        let me3 = me2.clone();
                        me2.master.route(
                            add,
                            Completion::then(move |a| {
                                if a.is_error() {
                                    // Master unreachable: the slave's copy, with its CAS.
                                    return done.complete(value_reply(&key, &item, true));
                                }
                                if matches!(&a, Reply::Data(d) if d.starts_with(b"STORED")) {
                                    me3.stats.backfills.add(1);
                                }
                                me3.master.route(
                                    req,
                                    Completion::then(move |m| match parse_get(&m) {
                                        Read::Hit(_) => done.complete(m),
                                        _ => done.complete(value_reply(&key, &item, true)),
                                    }),
                                );
                            }),
                        );
                    }),
                );
            }),
        );
    }

    /// `add`/`cas`: master, then `set` on every copy.
    fn master_then_set(self: &Rc<Self>, req: Request, done: Completion) {
        let Request::Keyed(k) = &req else {
            return self.master.route(req, done);
        };
        let store = storage_of(k).filter(|_| text_key(&k.key));
        let key = k.key.clone();
        let me = self.clone();
        self.master.route(
            req,
            Completion::then(move |r| {
                if let (Some(st), Reply::Data(d)) = (&store, &r) {
                    if d.starts_with(b"STORED") {
                        for c in me.copies() {
                            me.background(
                                c,
                                wire::store(Cmd::Set, &key, st.flags, st.exptime, &st.data),
                            );
                        }
                    }
                }
                done.complete(r)
            }),
        );
    }

    /// Other writes: master; on success, drop the copies' now stale values.
    fn master_then_delete(self: &Rc<Self>, req: Request, key: Bytes, done: Completion) {
        let me = self.clone();
        self.master.route(
            req,
            Completion::then(move |r| {
                if matches!(&r, Reply::Data(d) if wire::is_success(d)) && text_key(&key) {
                    for c in me.copies() {
                        me.background(c, wire::delete(&key));
                    }
                }
                done.complete(r)
            }),
        );
    }

    /// Master with the client's completion, every copy in the background.
    fn all(&self, req: Request, done: Completion) {
        for c in self.copies() {
            self.background(c, req.clone());
        }
        self.master.route(req, done);
    }
}

impl Route for MasterSlaveL1Route {
    fn route(&self, req: Request, done: Completion) {
        let me = &self.inner;
        match req {
            Request::MultiGet(m) if matches!(m.cmd, Cmd::Get | Cmd::Gets) => {
                per_key(m, |r, c| self.route(r, c), done)
            }
            Request::MultiGet(m) => me.master.route(Request::MultiGet(m), done),
            Request::Keyed(k) => match k.cmd {
                Cmd::Get if text_key(&k.key) => me.read(k.key, done),
                Cmd::Gets if text_key(&k.key) => {
                    let key = k.key.clone();
                    me.cas_read(Request::Keyed(k), key, done)
                }
                Cmd::Add | Cmd::Cas => me.master_then_set(Request::Keyed(k), done),
                Cmd::Set | Cmd::Ms | Cmd::Delete | Cmd::Md => me.all(Request::Keyed(k), done),
                Cmd::Replace
                | Cmd::Append
                | Cmd::Prepend
                | Cmd::Incr
                | Cmd::Decr
                | Cmd::Touch
                | Cmd::Ma => {
                    let key = k.key.clone();
                    me.master_then_delete(Request::Keyed(k), key, done)
                }
                _ => me.master.route(Request::Keyed(k), done),
            },
            Request::FlushAll { .. } => {
                let gather = Gather::new(2 + me.l1.len(), done);
                for c in std::iter::once(&me.master).chain(me.copies()) {
                    c.route(req.clone(), Completion::Gather(gather.clone()));
                }
            }
            Request::Version | Request::Stats { .. } => me.master.route(req, done),
        }
    }
}
