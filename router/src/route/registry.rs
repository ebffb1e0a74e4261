//! Every route type the config may name. A route type is one file (its spec parsing,
//! build, `route` and `describe`; see [`super::spec`]) and one line in [`TYPES`].

use super::spec::{self, Describe, Placed, Registry, RouteSpec, RouteType};
use super::{
    all_async, all_initial, all_sync, failover, master_slave_l1, miss_failover, operation, pool,
    prefix, random, warmup,
};
use crate::config::{ConfigError, RawRoutes};
use crate::protocol::Cmd;

/// The route types, in the order error messages list them.
pub const TYPES: &[&RouteType] = &[
    &pool::TYPE,
    &prefix::TYPE,
    &operation::TYPE,
    &all_sync::TYPE,
    &all_async::TYPE,
    &all_initial::TYPE,
    &random::TYPE,
    &failover::TYPE,
    &miss_failover::TYPE,
    &master_slave_l1::TYPE,
    &warmup::TYPE,
];

const REGISTRY: Registry = Registry {
    types: TYPES,
    pool: pool::spec,
};

/// Parses and validates the route trees (one per root: `route`, then each listener's) over
/// the pools named `pools` (`Config::pools` order).
pub fn parse(routes: &RawRoutes, pools: &[String]) -> Result<Vec<RouteSpec>, ConfigError> {
    spec::parse(&REGISTRY, routes, pools)
}

/// `stats route <op> <key>`: the path through the plan's tree and the servers it reaches,
/// as `STAT` lines (`route ...`, then `server <pool> <addr> <state>` per server).
pub fn describe(
    route: &RouteSpec,
    placed: Placed,
    op: &str,
    key: &[u8],
) -> Result<Vec<String>, String> {
    let cmd = Cmd::ALL
        .iter()
        .copied()
        .find(|c| c.name() == op && *c != Cmd::Other)
        .ok_or_else(|| format!("unknown operation {op:?}"))?;
    if marker::key::validate(key).is_err() {
        return Err("bad key".into());
    }
    let mut d = Describe::new(placed, cmd, key);
    route.describe(&mut d);
    Ok(d.lines())
}
