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
//! - keys that cannot be written into a text command (see `marker::key`) skip the copies.
//!
//! ```toml
//! [route]
//! type = "master-slave-l1"
//! master = "master"
//! slave = "slave"
//! l1 = ["near-a", "near-b"]
//! ```

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::wire::{self, miss_reply, parse_get, parse_mg, storage_of, value_reply, Read};
use super::{broadcast, per_key, Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

pub const TYPE: RouteType = RouteType {
    name: "master-slave-l1",
    keys: &["master", "slave", "l1"],
    parse,
};

#[derive(Debug)]
pub struct MasterSlaveL1Spec {
    master: RouteSpec,
    slave: RouteSpec,
    l1: Vec<RouteSpec>,
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    Ok(Box::new(MasterSlaveL1Spec {
        master: p.required_child(t, "master")?,
        slave: p.required_child(t, "slave")?,
        l1: p.children(t, "l1")?.unwrap_or_default(),
    }))
}

impl Spec for MasterSlaveL1Spec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(MasterSlaveL1Route::new(
            b.route(&self.master),
            b.route(&self.slave),
            b.all(&self.l1),
            b.stats.clone(),
        ))
    }

    /// Master, slave and the L1s: which of them a request reaches depends on its result.
    fn describe(&self, d: &mut Describe) {
        d.list("master-slave-l1", self.children())
    }

    fn children(&self) -> Vec<&RouteSpec> {
        let mut c = vec![&self.master, &self.slave];
        c.extend(self.l1.iter());
        c
    }
}

pub struct MasterSlaveL1Route {
    inner: Rc<Layers>,
}

/// The pools of a master-slave-l1 route and the counters of its background copies.
struct Layers {
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
            inner: Rc::new(Layers {
                master,
                slave,
                l1,
                stats,
            }),
        }
    }
}

/// A key that can be written into the text commands of the copies.
fn text_key(key: &[u8]) -> bool {
    marker::key::validate(key).is_ok()
}

impl Layers {
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
        let route = self.clone();
        let next = layers.clone();
        layer.route(
            wire::mg(&key, "v f t"),
            Completion::then(move |r| match parse_mg(&r) {
                Read::Hit(item) => {
                    for &m in &missed {
                        let add =
                            wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                        route.backfill(&next[m], add);
                    }
                    done.complete(value_reply(&key, &item, false))
                }
                read => {
                    if matches!(read, Read::Miss) {
                        missed.push(i);
                    }
                    route.step(next, i + 1, missed, key, done)
                }
            }),
        );
    }

    /// `gets`: master; else slave, reseeding master.
    fn cas_read(self: &Rc<Self>, req: Request, key: Bytes, done: Completion) {
        let route = self.clone();
        self.master.route(
            req.clone(),
            Completion::then(move |r| {
                if let Read::Hit(_) = parse_get(&r) {
                    return done.complete(r);
                }
                let master_failed = r.is_error();
                let after_slave = route.clone();
                route.slave.route(
                    wire::mg(&key, "v f t c"),
                    Completion::then(move |s| {
                        let item = match parse_mg(&s) {
                            Read::Hit(item) => item,
                            _ if master_failed => return done.complete(r),
                            _ => return done.complete(miss_reply(Cmd::Gets)),
                        };
                        let add =
                            wire::store(Cmd::Add, &key, item.flags, item.exptime(), &item.data);
                        let after_add = after_slave.clone();
                        after_slave.master.route(
                            add,
                            Completion::then(move |a| {
                                if a.is_error() {
                                    // Master unreachable: the slave's copy, with its CAS.
                                    return done.complete(value_reply(&key, &item, true));
                                }
                                if matches!(&a, Reply::Data(d) if d.starts_with(b"STORED")) {
                                    after_add.stats.backfills.add(1);
                                }
                                after_add.master.route(
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
        let route = self.clone();
        self.master.route(
            req,
            Completion::then(move |r| {
                if let (Some(st), Reply::Data(d)) = (&store, &r) {
                    if d.starts_with(b"STORED") {
                        for c in route.copies() {
                            route.background(
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
        let route = self.clone();
        self.master.route(
            req,
            Completion::then(move |r| {
                if matches!(&r, Reply::Data(d) if wire::is_success(d)) && text_key(&key) {
                    for c in route.copies() {
                        route.background(c, wire::delete(&key));
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
        let layers = &self.inner;
        match req {
            Request::MultiGet(m) if matches!(m.cmd, Cmd::Get | Cmd::Gets) => {
                per_key(m, |r, c| self.route(r, c), done)
            }
            Request::MultiGet(m) => layers.master.route(Request::MultiGet(m), done),
            Request::Keyed(k) => match k.cmd {
                Cmd::Get if text_key(&k.key) => layers.read(k.key, done),
                Cmd::Gets if text_key(&k.key) => {
                    let key = k.key.clone();
                    layers.cas_read(Request::Keyed(k), key, done)
                }
                Cmd::Add | Cmd::Cas => layers.master_then_set(Request::Keyed(k), done),
                Cmd::Set | Cmd::Ms | Cmd::Delete | Cmd::Md => layers.all(Request::Keyed(k), done),
                Cmd::Replace
                | Cmd::Append
                | Cmd::Prepend
                | Cmd::Incr
                | Cmd::Decr
                | Cmd::Touch
                | Cmd::Ma => {
                    let key = k.key.clone();
                    layers.master_then_delete(Request::Keyed(k), key, done)
                }
                _ => layers.master.route(Request::Keyed(k), done),
            },
            Request::FlushAll { .. } => {
                let all: Vec<&RouteRef> = std::iter::once(&layers.master)
                    .chain(layers.copies())
                    .collect();
                broadcast(&req, all.into_iter(), done)
            }
            Request::Version | Request::Stats { .. } => layers.master.route(req, done),
        }
    }
}
