//! From a validated [`RouteSpec`] to a worker's tree of [`Route`] values, and the
//! explanation `stats route <op> <key>` gives of where a key goes.

use std::fmt::Write as _;
use std::sync::Arc;

use super::failover::{FailoverRoute, MissFailoverRoute};
use super::fanout::{AllAsyncRoute, AllInitialRoute, AllSyncRoute};
use super::msl1::MasterSlaveL1Route;
use super::select::{OperationRoute, PrefixRoute, RandomRoute};
use super::spec::{OpClass, RouteSpec};
use super::warmup::WarmupRoute;
use super::{Completion, Reply, Route, RouteRef};
use crate::placement::Distribution;
use crate::plan::Plan;
use crate::protocol::{Cmd, Request};
use crate::stats::WorkerStats;

/// Answers every request with an error: a pool the worker could not build.
struct Unavailable;

impl Route for Unavailable {
    fn route(&self, _req: Request, done: Completion) {
        done.complete(Reply::error("pool unavailable"))
    }
}

/// Builds the route tree over this worker's pool routes (indexed like `Config::pools`).
pub fn build(spec: &RouteSpec, pools: &[Option<RouteRef>], stats: &Arc<WorkerStats>) -> RouteRef {
    let b = |s: &RouteSpec| build(s, pools, stats);
    let all = |c: &[RouteSpec]| c.iter().map(b).collect::<Vec<_>>();
    match spec {
        RouteSpec::Pool(i) => match pools.get(*i) {
            Some(Some(p)) => p.clone(),
            _ => std::rc::Rc::new(Unavailable),
        },
        RouteSpec::Prefix { prefixes, default } => std::rc::Rc::new(PrefixRoute::new(
            prefixes.iter().map(|(p, c)| (p.clone(), b(c))).collect(),
            b(default),
        )),
        RouteSpec::Operation { ops, default } => std::rc::Rc::new(OperationRoute::new(
            ops.iter().map(|(o, c)| (*o, b(c))).collect(),
            b(default),
        )),
        RouteSpec::AllSync(c) => std::rc::Rc::new(AllSyncRoute::new(all(c))),
        RouteSpec::AllAsync(c) => std::rc::Rc::new(AllAsyncRoute::new(all(c), stats.clone())),
        RouteSpec::AllInitial(c) => std::rc::Rc::new(AllInitialRoute::new(all(c), stats.clone())),
        RouteSpec::Random(c) => std::rc::Rc::new(RandomRoute::new(all(c))),
        RouteSpec::Failover {
            children,
            gutter_ttl,
        } => std::rc::Rc::new(FailoverRoute::new(
            all(children),
            *gutter_ttl,
            stats.clone(),
        )),
        RouteSpec::MissFailover(c) => std::rc::Rc::new(MissFailoverRoute::new(all(c))),
        RouteSpec::MasterSlaveL1 { master, slave, l1 } => std::rc::Rc::new(
            MasterSlaveL1Route::new(b(master), b(slave), all(l1), stats.clone()),
        ),
        RouteSpec::Warmup {
            cold,
            warm,
            holdoff_secs,
        } => std::rc::Rc::new(WarmupRoute::new(
            b(cold),
            b(warm),
            *holdoff_secs,
            stats.clone(),
        )),
    }
}

/// `stats route <op> <key>`: the path through the tree and the servers it reaches, as
/// `STAT` lines (`route ...`, then `server <pool> <addr> <state>` per server).
pub fn describe(plan: &Plan, op: &str, key: &[u8]) -> Result<Vec<String>, String> {
    let cmd = Cmd::ALL
        .iter()
        .copied()
        .find(|c| c.name() == op && *c != Cmd::Other)
        .ok_or_else(|| format!("unknown operation {op:?}"))?;
    if key.is_empty() || key.len() > 250 {
        return Err("bad key".into());
    }
    let mut path = String::new();
    let mut servers = Vec::new();
    walk(&plan.config.route, plan, cmd, key, &mut path, &mut servers);
    let mut out = vec![format!("route {path}")];
    out.extend(servers);
    Ok(out)
}

fn walk(
    spec: &RouteSpec,
    plan: &Plan,
    cmd: Cmd,
    key: &[u8],
    path: &mut String,
    servers: &mut Vec<String>,
) {
    let list =
        |name: &str, children: &[&RouteSpec], path: &mut String, servers: &mut Vec<String>| {
            let _ = write!(path, "{name}(");
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    path.push_str(", ");
                }
                walk(c, plan, cmd, key, path, servers);
            }
            path.push(')');
        };
    match spec {
        RouteSpec::Pool(i) => {
            let Some(pool) = plan.config.pools.get(*i) else {
                return;
            };
            let placement = &plan.placements[*i];
            let stats = &plan.servers[*i];
            let reached: Vec<usize> = match &placement.dist {
                Distribution::Random(_) => (0..pool.servers.len()).collect(),
                _ if cmd == Cmd::FlushAll => (0..pool.servers.len()).collect(),
                _ => vec![placement.server_for(key)],
            };
            let _ = write!(path, "pool:{}", pool.name);
            if reached.len() == 1 {
                let _ = write!(path, "@{}", pool.servers[reached[0]].label);
            }
            for s in reached {
                let line = format!(
                    "server {} {} {}",
                    pool.name,
                    pool.servers[s].label,
                    stats.get(s).map_or("unknown", |st| st.state())
                );
                if !servers.contains(&line) {
                    servers.push(line);
                }
            }
        }
        RouteSpec::Prefix { prefixes, default } => {
            match prefixes.iter().find(|(p, _)| key.starts_with(p)) {
                Some((p, c)) => {
                    let _ = write!(path, "prefix[{:?}]>", String::from_utf8_lossy(p));
                    walk(c, plan, cmd, key, path, servers);
                }
                None => {
                    path.push_str("prefix[default]>");
                    walk(default, plan, cmd, key, path, servers);
                }
            }
        }
        RouteSpec::Operation { ops, default } => {
            let class = OpClass::of(cmd);
            match ops.iter().find(|(o, _)| *o == class) {
                Some((o, c)) => {
                    let _ = write!(path, "operation[{}]>", o.name());
                    walk(c, plan, cmd, key, path, servers);
                }
                None => {
                    path.push_str("operation[default]>");
                    walk(default, plan, cmd, key, path, servers);
                }
            }
        }
        RouteSpec::AllSync(c) => list("all-sync", &c.iter().collect::<Vec<_>>(), path, servers),
        RouteSpec::AllAsync(c) => list("all-async", &c.iter().collect::<Vec<_>>(), path, servers),
        RouteSpec::AllInitial(c) => {
            list("all-initial", &c.iter().collect::<Vec<_>>(), path, servers)
        }
        RouteSpec::Random(c) => list("random", &c.iter().collect::<Vec<_>>(), path, servers),
        RouteSpec::Failover { children, .. } => list(
            "failover",
            &children.iter().collect::<Vec<_>>(),
            path,
            servers,
        ),
        RouteSpec::MissFailover(c) => list(
            "miss-failover",
            &c.iter().collect::<Vec<_>>(),
            path,
            servers,
        ),
        RouteSpec::MasterSlaveL1 { master, slave, l1 } => {
            let mut c: Vec<&RouteSpec> = vec![master, slave];
            c.extend(l1.iter());
            list("master-slave-l1", &c, path, servers)
        }
        RouteSpec::Warmup { cold, warm, .. } => list("warmup", &[cold, warm], path, servers),
    }
}
