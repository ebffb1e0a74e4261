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

use super::joiner::{broadcast, per_key};
use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Reply, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::item_codec::{
    self as wire, miss_reply, parse_get, parse_mg, storage_of, value_reply, Read,
};
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

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    struct Setup {
        log: Log,
        stats: Arc<WorkerStats>,
        route: MasterSlaveL1Route,
    }

    fn setup(master: Rc<Fake>, slave: Rc<Fake>, l1: Option<Rc<Fake>>, log: Log) -> Setup {
        let stats = stats();
        let route = MasterSlaveL1Route::new(
            master.as_route(),
            slave.as_route(),
            l1.iter().map(|l| l.as_route()).collect(),
            stats.clone(),
        );
        Setup { log, stats, route }
    }

    #[test]
    fn a_get_reads_l1_master_slave_and_backfills_the_layers_that_missed() {
        let log = log();
        let s = setup(
            Fake::new("master", &log, STORED).then(&[MG_MISS]),
            Fake::new("slave", &log, Answer::Data("VA 1 f4 t60\r\ns\r\n")),
            Some(Fake::new("l1", &log, STORED).then(&[MG_MISS])),
            log,
        );
        assert_eq!(
            ask(&s.route, "get k\r\n").unwrap(),
            "VALUE k 4 1\r\ns\r\nEND\r\n"
        );
        assert_eq!(
            calls(&s.log),
            [
                "l1: mg k v f t",
                "master: mg k v f t",
                "slave: mg k v f t",
                "l1: add k 4 60 \"s\"",
                "master: add k 4 60 \"s\""
            ]
        );
        assert_eq!(s.stats.backfills.get(), 2);
    }

    #[test]
    fn a_gets_on_a_master_miss_reseeds_the_master_from_the_slave() {
        let log = log();
        let s = setup(
            Fake::new("master", &log, MISS).then(&[
                MISS,
                STORED,
                Answer::Data("VALUE k 4 1 9\r\ns\r\nEND\r\n"),
            ]),
            Fake::new("slave", &log, Answer::Data("VA 1 f4 t-1 c3\r\ns\r\n")),
            None,
            log,
        );
        assert_eq!(
            ask(&s.route, "gets k\r\n").unwrap(),
            "VALUE k 4 1 9\r\ns\r\nEND\r\n",
            "the master's CAS"
        );
        assert_eq!(
            calls(&s.log),
            [
                "master: gets k",
                "slave: mg k v f t c",
                "master: add k 4 0 \"s\"",
                "master: gets k"
            ]
        );
    }

    #[test]
    fn an_add_sets_every_copy_once_the_master_stored_it() {
        let log = log();
        let s = setup(
            Fake::new("master", &log, STORED).then(&[NOT_STORED]),
            Fake::new("slave", &log, STORED),
            Some(Fake::new("l1", &log, STORED)),
            log,
        );
        assert_eq!(
            ask(&s.route, "add k 1 30 1\r\nv\r\n").unwrap(),
            "NOT_STORED\r\n"
        );
        assert_eq!(
            ask(&s.route, "add k 1 30 1\r\nv\r\n").unwrap(),
            "STORED\r\n"
        );
        assert_eq!(
            calls(&s.log),
            [
                "master: add k 1 30 \"v\"",
                "master: add k 1 30 \"v\"",
                "slave: set k 1 30 \"v\"",
                "l1: set k 1 30 \"v\""
            ]
        );
    }

    #[test]
    fn set_and_delete_reach_everyone_with_the_masters_reply() {
        let log = log();
        let s = setup(
            Fake::new("master", &log, STORED),
            Fake::new("slave", &log, Answer::Error),
            Some(Fake::new("l1", &log, NOT_STORED)),
            log,
        );
        assert_eq!(ask(&s.route, "set k 0 0 1\r\nv\r\n").unwrap(), "STORED\r\n");
        assert_eq!(
            calls(&s.log),
            [
                "slave: set k 0 0 \"v\"",
                "l1: set k 0 0 \"v\"",
                "master: set k 0 0 \"v\""
            ]
        );
        assert_eq!(s.stats.async_failures.get(), 1, "the slave's error");
    }

    #[test]
    fn other_writes_go_to_the_master_and_drop_the_copies_when_they_succeed() {
        let log = log();
        let s = setup(
            Fake::new("master", &log, Answer::Data("11\r\n"))
                .then(&[Answer::Data("NOT_FOUND\r\n")]),
            Fake::new("slave", &log, DELETED),
            Some(Fake::new("l1", &log, DELETED)),
            log,
        );
        assert_eq!(ask(&s.route, "incr n 1\r\n").unwrap(), "NOT_FOUND\r\n");
        assert_eq!(ask(&s.route, "incr n 1\r\n").unwrap(), "11\r\n");
        assert_eq!(
            calls(&s.log),
            [
                "master: incr n 1",
                "master: incr n 1",
                "slave: delete n",
                "l1: delete n"
            ]
        );
    }

    #[test]
    fn flush_all_reaches_everyone_and_the_rest_goes_to_the_master() {
        let log = log();
        let ok = Answer::Data("OK\r\n");
        let s = setup(
            Fake::new("master", &log, ok.clone()),
            Fake::new("slave", &log, ok.clone()),
            Some(Fake::new("l1", &log, ok)),
            log,
        );
        assert_eq!(ask(&s.route, "flush_all\r\n").unwrap(), "OK\r\n");
        ask(&s.route, "mg k v\r\n");
        ask(&s.route, "gat 10 k\r\n");
        assert_eq!(
            calls(&s.log),
            [
                "master: flush_all",
                "slave: flush_all",
                "l1: flush_all",
                "master: mg k v",
                "master: gat k"
            ]
        );
    }
}
