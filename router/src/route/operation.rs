//! The operation selector: the command's class (get-like, set-like, delete, arithmetic,
//! touch, flush_all) picks the child, else `default`.
//!
//! ```toml
//! [route]
//! type = "operation"
//! get = "replicas"
//! set = "both"
//! default = "main"
//! ```

use std::rc::Rc;

use super::spec::{Build, Describe, Parser, RouteSpec, RouteType, Spec, Table};
use super::{Completion, Route, RouteRef};
use crate::config::ConfigError;
use crate::protocol::{Cmd, Request};

pub const TYPE: RouteType = RouteType {
    name: "operation",
    keys: &[
        "get",
        "set",
        "delete",
        "arith",
        "touch",
        "flush_all",
        "default",
    ],
    parse,
};

/// Operation classes of the operation selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// get, gets, gat, gats, mg
    Get,
    /// set, add, replace, append, prepend, cas, ms
    Set,
    /// delete, md
    Delete,
    /// incr, decr, ma
    Arith,
    /// touch
    Touch,
    /// flush_all
    FlushAll,
    /// version, me and anything else
    Other,
}

impl OpClass {
    /// The classes a table may name, in the order they are read.
    pub const NAMED: [OpClass; 6] = [
        OpClass::Get,
        OpClass::Set,
        OpClass::Delete,
        OpClass::Arith,
        OpClass::Touch,
        OpClass::FlushAll,
    ];

    pub fn of(cmd: Cmd) -> OpClass {
        match cmd {
            Cmd::Get | Cmd::Gets | Cmd::Gat | Cmd::Gats | Cmd::Mg => OpClass::Get,
            Cmd::Set
            | Cmd::Add
            | Cmd::Replace
            | Cmd::Append
            | Cmd::Prepend
            | Cmd::Cas
            | Cmd::Ms => OpClass::Set,
            Cmd::Delete | Cmd::Md => OpClass::Delete,
            Cmd::Incr | Cmd::Decr | Cmd::Ma => OpClass::Arith,
            Cmd::Touch => OpClass::Touch,
            Cmd::FlushAll => OpClass::FlushAll,
            _ => OpClass::Other,
        }
    }

    /// The key naming the class in a route table (`default` for the rest).
    pub fn name(self) -> &'static str {
        match self {
            OpClass::Get => "get",
            OpClass::Set => "set",
            OpClass::Delete => "delete",
            OpClass::Arith => "arith",
            OpClass::Touch => "touch",
            OpClass::FlushAll => "flush_all",
            OpClass::Other => "default",
        }
    }
}

/// The children of the classes that have one (a spec or a built route), and the default.
#[derive(Debug)]
pub struct Operations<C> {
    ops: Vec<(OpClass, C)>,
    default: C,
}

pub type OperationSpec = Operations<RouteSpec>;
pub type OperationRoute = Operations<RouteRef>;

impl<C> Operations<C> {
    pub fn new(ops: Vec<(OpClass, C)>, default: C) -> Operations<C> {
        Operations { ops, default }
    }

    /// The class's own child, if it has one: the one choice both the route and
    /// `stats route` make.
    fn pick(&self, cmd: Cmd) -> Option<&(OpClass, C)> {
        let class = OpClass::of(cmd);
        self.ops.iter().find(|(c, _)| *c == class)
    }
}

fn parse(p: &mut Parser, t: &Table) -> Result<RouteSpec, ConfigError> {
    let mut ops = Vec::new();
    for class in OpClass::NAMED {
        if let Some(r) = p.child(t, class.name())? {
            ops.push((class, r));
        }
    }
    let default = p.required_child(t, "default")?;
    Ok(Box::new(Operations::new(ops, default)))
}

impl Spec for OperationSpec {
    fn build(&self, b: &Build) -> RouteRef {
        Rc::new(Operations {
            ops: self.ops.iter().map(|(o, c)| (*o, b.route(c))).collect(),
            default: b.route(&self.default),
        })
    }

    fn describe(&self, d: &mut Describe) {
        match self.pick(d.cmd) {
            Some((o, c)) => d.step(format_args!("operation[{}]", o.name()), c),
            None => d.step("operation[default]", &self.default),
        }
    }

    fn children(&self) -> Vec<&RouteSpec> {
        let mut c: Vec<&RouteSpec> = self.ops.iter().map(|(_, c)| c).collect();
        c.push(&self.default);
        c
    }
}

impl Route for OperationRoute {
    fn route(&self, req: Request, done: Completion) {
        let child = self.pick(req.cmd()).map_or(&self.default, |(_, r)| r);
        child.route(req, done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::*;
    use super::*;

    #[test]
    fn the_commands_class_picks_the_child_else_the_default() {
        let log = log();
        let child = |n| Fake::new(n, &log, STORED).as_route();
        let r = Operations::new(
            vec![
                (OpClass::Get, child("get")),
                (OpClass::Set, child("set")),
                (OpClass::Delete, child("delete")),
                (OpClass::Arith, child("arith")),
                (OpClass::FlushAll, child("flush")),
            ],
            child("default"),
        );
        for line in [
            "get k\r\n",
            "gets a b\r\n",
            "mg k v\r\n",
            "add k 0 0 1\r\nv\r\n",
            "ms k 1\r\nv\r\n",
            "md k\r\n",
            "decr k 1\r\n",
            "touch k 10\r\n",
            "flush_all\r\n",
            "version\r\n",
        ] {
            ask(&r, line);
        }
        assert_eq!(
            calls(&log),
            [
                "get: get k",
                "get: gets a b",
                "get: mg k v",
                "set: add k 0 0 \"v\"",
                "set: ms k 1",
                "delete: md k",
                "arith: decr k 1",
                "default: touch k 10",
                "flush: flush_all",
                "default: version"
            ]
        );
    }
}
