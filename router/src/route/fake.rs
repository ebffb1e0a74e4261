//! Test support: fake child routes that record what they are asked (as memcache text) and
//! answer scripted replies, so every route type is tested without sockets.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use super::{Completion, Reply, Route, RouteRef};
use crate::protocol::{parse, Limits, Op, Parsed, Request, Step, StoreMode};
use crate::stats::WorkerStats;

/// Every call any fake child got, in order, as `name: request`.
pub type Log = Rc<RefCell<Vec<String>>>;

pub fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

/// What a fake child answers.
#[derive(Clone)]
pub enum Answer {
    /// These bytes, as a server would send them.
    Data(&'static str),
    /// A router-made error, as a down server or a timeout gives.
    Error,
    /// Nothing yet: the completion is kept for [`Fake::release`].
    Hold,
}

pub const STORED: Answer = Answer::Data("STORED\r\n");
pub const NOT_STORED: Answer = Answer::Data("NOT_STORED\r\n");
pub const DELETED: Answer = Answer::Data("DELETED\r\n");
pub const MISS: Answer = Answer::Data("END\r\n");
pub const MG_MISS: Answer = Answer::Data("EN\r\n");

/// A child route: logs each request, answers from its script (then its default).
pub struct Fake {
    name: &'static str,
    log: Log,
    script: RefCell<VecDeque<Answer>>,
    default: Answer,
    held: RefCell<Vec<Completion>>,
}

impl Fake {
    pub fn new(name: &'static str, log: &Log, default: Answer) -> Rc<Fake> {
        Rc::new(Fake {
            name,
            log: log.clone(),
            script: RefCell::new(VecDeque::new()),
            default,
            held: RefCell::new(Vec::new()),
        })
    }

    /// Answers these first, in order.
    pub fn then(self: Rc<Self>, answers: &[Answer]) -> Rc<Fake> {
        self.script.borrow_mut().extend(answers.iter().cloned());
        self
    }

    /// Completes the oldest held request with `reply`.
    pub fn release(&self, reply: &'static str) {
        let done = self.held.borrow_mut().remove(0);
        done.complete(data(reply));
    }

    pub fn held(&self) -> usize {
        self.held.borrow().len()
    }

    pub fn as_route(self: &Rc<Self>) -> RouteRef {
        self.clone()
    }
}

impl Route for Fake {
    fn route(&self, req: Request, done: Completion) {
        self.log
            .borrow_mut()
            .push(format!("{}: {}", self.name, text(&req)));
        let answer = self
            .script
            .borrow_mut()
            .pop_front()
            .unwrap_or_else(|| self.default.clone());
        match answer {
            Answer::Data(d) => done.complete(data(d)),
            Answer::Error => done.complete(Reply::error("timeout")),
            Answer::Hold => self.held.borrow_mut().push(done),
        }
    }
}

pub fn data(s: &'static str) -> Reply {
    Reply::Data(Bytes::from_static(s.as_bytes()))
}

pub fn stats() -> Arc<WorkerStats> {
    Arc::new(WorkerStats::default())
}

/// The request a client sends as `line` (a whole command, with `\r\n`s).
pub fn req(line: &str) -> Request {
    let buf = Bytes::copy_from_slice(line.as_bytes());
    let Step::Frame { len, raw } = parse(&buf, &Limits::default()) else {
        panic!("not one request: {line:?}")
    };
    assert_eq!(len, buf.len(), "one request: {line:?}");
    match raw.into_parsed(&buf) {
        Parsed::Route(r, _) => r,
        other => panic!("not routed: {other:?}"),
    }
}

/// Routes `line` and returns the reply, if it came (as text).
pub fn ask(route: &dyn Route, line: &str) -> Option<String> {
    let out: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let o = out.clone();
    route.route(
        req(line),
        Completion::then(move |r| {
            let previous = o.replace(Some(reply_text(&r)));
            assert!(previous.is_none(), "completed twice");
        }),
    );
    out.take()
}

/// Routes `line`; the reply is read later from the returned cell.
pub fn ask_later(route: &dyn Route, line: &str) -> Rc<RefCell<Option<String>>> {
    let out: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let o = out.clone();
    route.route(
        req(line),
        Completion::then(move |r| *o.borrow_mut() = Some(reply_text(&r))),
    );
    out
}

pub fn reply_text(r: &Reply) -> String {
    String::from_utf8_lossy(&crate::protocol::item_codec::bytes_of(r)).into_owned()
}

/// A request as memcache text, close to what a backend would be sent (meta lines as
/// built, without the router's opaque).
pub fn text(req: &Request) -> String {
    match req {
        Request::Keyed(k) => {
            let key = String::from_utf8_lossy(&k.key);
            let verb = k.cmd.name();
            match &k.op {
                Op::Get { .. } => format!("{verb} {key}"),
                Op::Store {
                    mode,
                    flags,
                    exptime,
                    cas,
                    data,
                } => {
                    let value = String::from_utf8_lossy(&data[..data.len() - 2]);
                    let verb = match mode {
                        StoreMode::Set => "set",
                        StoreMode::Add => "add",
                        StoreMode::Replace => "replace",
                        StoreMode::Append => "append",
                        StoreMode::Prepend => "prepend",
                        StoreMode::Cas => "cas",
                    };
                    let cas = if *cas != 0 {
                        format!(" {cas}")
                    } else {
                        String::new()
                    };
                    format!("{verb} {key} {flags} {exptime}{cas} {value:?}")
                }
                Op::Delete => format!("delete {key}"),
                Op::Arith { decr, delta } => {
                    format!("{} {key} {delta}", if *decr { "decr" } else { "incr" })
                }
                Op::Touch { exptime } => format!("touch {key} {exptime}"),
                // The client's opaque where the router puts its own.
                Op::Meta(m) => {
                    let line = String::from_utf8_lossy(&m.line);
                    match &m.opaque {
                        Some(o) => format!(
                            "{} {}{}",
                            &line[..m.opaque_at],
                            String::from_utf8_lossy(o),
                            &line[m.opaque_at..]
                        ),
                        None => line.into_owned(),
                    }
                }
            }
        }
        Request::MultiGet(m) => {
            let keys: Vec<String> = m
                .keys
                .iter()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            format!("{} {}", m.cmd.name(), keys.join(" "))
        }
        Request::FlushAll { .. } => "flush_all".into(),
        Request::Version => "version".into(),
        Request::Stats { args } => format!("stats {}", String::from_utf8_lossy(args)),
    }
}

/// The log's entries, for comparing with a literal list.
pub fn calls(log: &Log) -> Vec<String> {
    log.borrow().clone()
}
