//! Every route type the config may name. A route type is one file (its spec parsing,
//! build, `route` and `describe`; see [`super::spec`]) and one line in [`TYPES`].

use super::spec::{self, Describe, Registry, RouteSpec, RouteType};
use super::{
    all_async, all_initial, all_sync, failover, master_slave_l1, miss_failover, operation, pool,
    prefix, random, warmup,
};
use crate::config::{ConfigError, RawRoutes};
use crate::protocol::Cmd;
use crate::worker::Plan;

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

/// Parses and validates the route tree over the pools named `pools` (`Config::pools`
/// order).
pub fn parse(routes: &RawRoutes, pools: &[String]) -> Result<RouteSpec, ConfigError> {
    spec::parse(&REGISTRY, routes, pools)
}

/// `stats route <op> <key>`: the path through the plan's tree and the servers it reaches,
/// as `STAT` lines (`route ...`, then `server <pool> <addr> <state>` per server).
pub fn describe(plan: &Plan, op: &str, key: &[u8]) -> Result<Vec<String>, String> {
    let cmd = Cmd::ALL
        .iter()
        .copied()
        .find(|c| c.name() == op && *c != Cmd::Other)
        .ok_or_else(|| format!("unknown operation {op:?}"))?;
    if marker::key::validate(key).is_err() {
        return Err("bad key".into());
    }
    let mut d = Describe::new(plan, cmd, key);
    plan.route.describe(&mut d);
    Ok(d.lines())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const HEAD: &str = "listen = [\"127.0.0.1:1\"]\n";
    const POOLS: &str =
        "[pools.main]\nservers = [\"127.0.0.1:11211\"]\n[pools.other]\nservers = [\"127.0.0.1:11212\", \"127.0.0.1:11213\"]\n";

    fn plan(tail: &str) -> Result<Plan, String> {
        let text = format!("{HEAD}{tail}{POOLS}");
        let config = Config::parse("router.toml", &text).map_err(|e| e.to_string())?;
        Plan::new(config).map_err(|e| e.to_string())
    }

    fn refused(tail: &str) -> String {
        match plan(tail) {
            Ok(_) => panic!("accepted:\n{tail}"),
            Err(e) => e,
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("route = \"nope\"\n", 2, "\"nope\" is not defined as a pool or a route (pools: main, other; routes: none)"),
            ("[route]\ntype = \"prefix\"\ndefault = \"main\"\nprefixes = { \"a:\" = \"missing\" }\n", 5, "\"missing\" is not defined"),
            ("[route]\ntype = \"teleport\"\n", 3, "unknown route type \"teleport\" (one of pool, prefix, operation, all-sync, all-async, all-initial, random, failover, miss-failover, master-slave-l1, warmup)"),
            ("[route]\ntype = \"failover\"\nchildren = [\"main\"]\nholdoff_secs = 2\n", 5, "`holdoff_secs` does not apply to a \"failover\" route (it takes: children, gutter_ttl)"),
            ("route = \"x\"\n[routes.x]\ntype = \"all-sync\"\nchildren = [\"y\"]\n[routes.y]\ntype = \"random\"\nchildren = [\"x\"]\n", 8, "route \"x\" refers to itself (x -> y -> x)"),
            ("[route]\ntype = \"failover\"\nchildren = [\"main\"]\ngutter_ttl = 0\n", 5, "gutter_ttl must be between 1 and 2592000, not 0"),
            ("[route]\ntype = \"warmup\"\ncold = \"main\"\n", 3, "type \"warmup\" needs `warm`"),
            ("[route]\ntype = \"all-sync\"\nchildren = []\n", 4, "`children` is empty"),
            ("[route]\ntype = \"all-sync\"\nchildren = \"main\"\n", 4, "invalid type: string \"main\", expected a sequence"),
            ("[route]\ntype = \"random\"\nchildren = [\"main\"]\nbogus = 1\n", 5, "unknown field `bogus`, expected one of `type`, `pool`"),
            ("[route]\nchildren = [\"main\"]\n", 2, "missing field `type`"),
            ("[route]\ntype = \"pool\"\npool = \"gone\"\n", 4, "pool \"gone\" is not defined (pools: main, other)"),
            ("[route]\ntype = \"prefix\"\ndefault = \"main\"\nprefixes = { \"a b\" = \"main\" }\n", 5, "prefix \"a b\" must be non-empty"),
            ("[route]\ntype = \"warmup\"\ncold = \"main\"\nwarm = \"other\"\nholdoff_secs = 61\n", 6, "holdoff_secs must be between 1 and 60, not 61"),
            ("route = 5\n", 2, "invalid type: integer `5`, expected a pool or route name"),
            // A named route nobody uses is still checked.
            ("route = \"main\"\n[routes.unused]\ntype = \"random\"\n", 4, "type \"random\" needs `children`"),
        ];
        for (tail, line, msg) in cases {
            let e = refused(tail);
            assert!(e.contains(&format!("router.toml:{line}:")), "{e}\n{tail}");
            assert!(e.contains(msg), "{e}\n{tail}");
        }
    }

    #[test]
    fn a_good_tree_passes_and_lists_its_pools() {
        let p = plan("[route]\ntype = \"failover\"\nchildren = [\"other\", { type = \"pool\", pool = \"main\" }]\n").unwrap();
        let mut used = Vec::new();
        p.route.pools(&mut used);
        assert_eq!(used, vec![1, 0]);
    }

    fn route_of(p: &Plan, op: &str, key: &str) -> Vec<String> {
        describe(p, op, key.as_bytes()).unwrap()
    }

    #[test]
    fn stats_route_follows_the_choices_the_routes_make() {
        let p = plan("[route]\ntype = \"prefix\"\ndefault = \"main\"\n[route.prefixes]\n\"o:\" = \"ops\"\n\"o:long:\" = \"main\"\n[routes.ops]\ntype = \"operation\"\nget = \"other\"\ndefault = { type = \"warmup\", cold = \"main\", warm = \"other\" }\n").unwrap();
        assert_eq!(
            route_of(&p, "get", "plain"),
            vec![
                "route prefix[default]>pool:main@127.0.0.1:11211",
                "server main 127.0.0.1:11211 down"
            ]
        );
        assert_eq!(
            route_of(&p, "set", "o:long:1")[0],
            "route prefix[\"o:long:\"]>pool:main@127.0.0.1:11211"
        );
        let get = route_of(&p, "get", "o:1");
        assert!(
            get[0].starts_with("route prefix[\"o:\"]>operation[get]>pool:other@127.0.0.1:1121"),
            "{get:?}"
        );
        assert_eq!(get.len(), 2, "one server: {get:?}");
        assert_eq!(
            route_of(&p, "delete", "o:1")[0],
            format!(
                "route prefix[\"o:\"]>operation[default]>warmup(pool:main@127.0.0.1:11211, {})",
                &get[0]["route prefix[\"o:\"]>operation[get]>".len()..]
            )
        );
        // flush_all reaches every server of a pool.
        let flush = route_of(&p, "flush_all", "o:1");
        assert!(
            flush.contains(&"server other 127.0.0.1:11212 down".to_string()),
            "{flush:?}"
        );
        assert!(
            flush.contains(&"server other 127.0.0.1:11213 down".to_string()),
            "{flush:?}"
        );
        assert!(describe(&p, "frob", b"k")
            .unwrap_err()
            .contains("unknown operation"));
        assert_eq!(describe(&p, "get", b"a\x01b").unwrap_err(), "bad key");
        assert_eq!(describe(&p, "get", &[b'k'; 251]).unwrap_err(), "bad key");
    }
}
