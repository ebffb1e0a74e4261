//! Route trees against real memcached servers: prefix and operation selectors, all-sync /
//! all-async / all-initial fan-out, failover to a gutter with health checks (TKO) when a
//! server is killed or stops answering, `stats route`, and config errors naming the line.
//! Every check reads the servers directly (not through the router) to see where data went.

use std::time::{Duration, Instant};

use harness::memcache::{mc, stat, stat_u64};
use harness::router::Router;
use harness::{free_port, wait_for, Memcached};

/// `mg <key> t v` straight on a server: the remaining TTL (-1: none) and the value.
fn ttl_and_value(addr: &str, key: &str) -> Option<(i64, Vec<u8>)> {
    let mut c = mc(addr);
    c.send(format!("mg {key} t v\r\n").as_bytes()).unwrap();
    let line = c.line().unwrap();
    if line.starts_with("EN") {
        return None;
    }
    let toks: Vec<&str> = line.split(' ').collect();
    assert_eq!(toks[0], "VA", "{line}");
    let len: usize = toks[1].parse().unwrap();
    let ttl: i64 = toks
        .iter()
        .find_map(|t| t.strip_prefix('t'))
        .unwrap()
        .parse()
        .unwrap();
    let data = c.bytes(len + 2).unwrap();
    Some((ttl, data[..len].to_vec()))
}

#[test]
fn prefix_selector_longest_prefix_wins_and_stats_route_explains() {
    let servers = Memcached::start_many(2).unwrap();
    let (main, regional) = (servers[0].addr(), servers[1].addr());
    let router = Router::start_config(&format!(
        r#"workers = 2
[pools.main]
servers = ["{main}"]
[pools.regional]
servers = ["{regional}"]
[route]
type = "prefix"
default = "main"
[route.prefixes]
"r_" = "regional"
"big:" = "regional"
"big:small:" = "main"
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    for k in ["user:1", "r_user:1", "big:1", "big:small:1"] {
        c.set(k, k.as_bytes()).unwrap();
    }
    let mut m = mc(&main);
    let mut r = mc(&regional);
    assert_eq!(m.get("user:1").unwrap().as_deref(), Some(&b"user:1"[..]));
    assert_eq!(r.get("user:1").unwrap(), None);
    assert_eq!(
        r.get("r_user:1").unwrap().as_deref(),
        Some(&b"r_user:1"[..])
    );
    assert_eq!(m.get("r_user:1").unwrap(), None);
    assert_eq!(r.get("big:1").unwrap().as_deref(), Some(&b"big:1"[..]));
    // The longer prefix beats `big:`.
    assert_eq!(
        m.get("big:small:1").unwrap().as_deref(),
        Some(&b"big:small:1"[..])
    );
    assert_eq!(r.get("big:small:1").unwrap(), None);

    // A multi-get across subtrees comes back whole and in order.
    let got = c
        .get_multi(&["big:1", "user:1", "nope", "r_user:1", "big:small:1"])
        .unwrap();
    let values: Vec<Option<&[u8]>> = got.iter().map(|(_, v)| v.as_deref()).collect();
    assert_eq!(
        values,
        vec![
            Some(&b"big:1"[..]),
            Some(&b"user:1"[..]),
            None,
            Some(&b"r_user:1"[..]),
            Some(&b"big:small:1"[..])
        ]
    );
    // Deletes follow the same path.
    assert_eq!(c.delete("r_user:1").unwrap(), "DELETED");
    assert_eq!(r.get("r_user:1").unwrap(), None);

    // stats route: the path and the server.
    let lines = c.stats("route get r_user:9").unwrap();
    assert!(
        lines[0].starts_with("STAT route prefix[\"r_\"]>pool:regional@"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("STAT server regional {regional} up")),
        "{lines:?}"
    );
    let lines = c.stats("route set plain").unwrap();
    assert_eq!(
        lines[0],
        format!("STAT route prefix[default]>pool:main@{main}"),
        "{lines:?}"
    );
    let lines = c.stats("route frob k").unwrap();
    assert!(lines[0].starts_with("CLIENT_ERROR"), "{lines:?}");
}

#[test]
fn operation_selector_sends_each_class_to_its_subtree() {
    let servers = Memcached::start_many(3).unwrap();
    let (a, b, counters) = (servers[0].addr(), servers[1].addr(), servers[2].addr());
    // Reads from b (a replica), writes to both, deletes to both, arithmetic to its own pool.
    let router = Router::start_config(&format!(
        r#"workers = 1
[pools.a]
servers = ["{a}"]
[pools.b]
servers = ["{b}"]
[pools.counters]
servers = ["{counters}"]
[routes.both]
type = "all-sync"
children = ["a", "b"]
[route]
type = "operation"
get = "b"
set = "both"
delete = "both"
arith = "counters"
default = "a"
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    c.set("k", b"v1").unwrap();
    assert_eq!(mc(&a).get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(mc(&b).get("k").unwrap().as_deref(), Some(&b"v1"[..]));
    // A value only in `a` is invisible: reads go to `b`.
    mc(&a).set("only-a", b"x").unwrap();
    assert_eq!(c.get("only-a").unwrap(), None);
    mc(&b).set("only-b", b"y").unwrap();
    assert_eq!(c.get("only-b").unwrap().as_deref(), Some(&b"y"[..]));
    // Arithmetic goes to `counters` only.
    mc(&counters).set("n", b"10").unwrap();
    c.send(b"incr n 5\r\n").unwrap();
    assert_eq!(c.line().unwrap(), "15");
    assert_eq!(mc(&counters).get("n").unwrap().as_deref(), Some(&b"15"[..]));
    // Deletes reach both.
    assert_eq!(c.delete("k").unwrap(), "DELETED");
    assert_eq!(mc(&a).get("k").unwrap(), None);
    assert_eq!(mc(&b).get("k").unwrap(), None);
    // `touch` has no subtree: the default.
    mc(&a).set("t", b"1").unwrap();
    c.send(b"touch t 100\r\n").unwrap();
    assert_eq!(c.line().unwrap(), "TOUCHED");
    let lines = c.stats("route incr n").unwrap();
    assert_eq!(
        lines[0],
        format!("STAT route operation[arith]>pool:counters@{counters}")
    );
}

#[test]
fn fanout_all_sync_all_async_all_initial() {
    let servers = Memcached::start_many(2).unwrap();
    let (a, b) = (servers[0].addr(), servers[1].addr());
    // Nothing listens here: every request to it fails.
    let dead = format!("127.0.0.1:{}", free_port());
    let router = Router::start_config(&format!(
        r#"workers = 1
[timeouts]
connect_ms = 200
read_ms = 500
[pools.a]
servers = ["{a}"]
[pools.b]
servers = ["{b}"]
[pools.dead]
servers = ["{dead}"]
[route]
type = "prefix"
default = "a"
[route.prefixes]
"sync:" = {{ type = "all-sync", children = ["a", "b"] }}
"syncbad:" = {{ type = "all-sync", children = ["a", "dead"] }}
"init:" = {{ type = "all-initial", children = ["a", "dead", "b"] }}
"async:" = {{ type = "all-async", children = ["dead", "b"] }}
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    // all-sync: both written, agreed reply.
    c.set("sync:1", b"s").unwrap();
    assert_eq!(mc(&a).get("sync:1").unwrap().as_deref(), Some(&b"s"[..]));
    assert_eq!(mc(&b).get("sync:1").unwrap().as_deref(), Some(&b"s"[..]));
    // all-sync with a dead child: the worst reply, though `a` stored it.
    let reply = c.set_with("syncbad:1", b"x", 0, 0).unwrap();
    assert!(reply.starts_with("SERVER_ERROR"), "{reply}");
    assert_eq!(mc(&a).get("syncbad:1").unwrap().as_deref(), Some(&b"x"[..]));
    // all-sync delete: NOT_FOUND in one is worse than DELETED in the other.
    mc(&b).delete("sync:1").unwrap();
    assert_eq!(c.delete("sync:1").unwrap(), "NOT_FOUND");
    assert_eq!(mc(&a).get("sync:1").unwrap(), None);

    let failures = stat_u64(&mut c, "route_async_failures");
    // all-initial: the first child's reply; the others in the background (dead counted).
    assert_eq!(c.set_with("init:1", b"i", 0, 0).unwrap(), "STORED");
    assert_eq!(mc(&a).get("init:1").unwrap().as_deref(), Some(&b"i"[..]));
    wait_for(|| mc(&b).get("init:1").unwrap().is_some(), "init:1 in b");
    // all-async: the first good reply (b), though the first child is dead.
    assert_eq!(c.set_with("async:1", b"y", 0, 0).unwrap(), "STORED");
    assert_eq!(mc(&b).get("async:1").unwrap().as_deref(), Some(&b"y"[..]));
    wait_for(
        || stat_u64(&mut c, "route_async_failures") >= failures + 2,
        "two background failures counted",
    );
}

fn failover_config(main: &str, gutter: &str) -> String {
    format!(
        r#"workers = 2
[timeouts]
connect_ms = 300
read_ms = 300
backoff_min_ms = 50
backoff_max_ms = 200
[health]
tko_after = 3
probe_min_ms = 50
probe_max_ms = 200
[pools.main]
servers = ["{main}"]
[pools.gutter]
servers = ["{gutter}"]
[route]
type = "failover"
children = ["main", "gutter"]
gutter_ttl = 5
"#
    )
}

#[test]
fn killed_server_fails_over_to_gutter_with_short_ttl_and_comes_back() {
    let mut servers = Memcached::start_many(2).unwrap();
    let (main, gutter) = (servers[0].addr(), servers[1].addr());
    let router = Router::start_config(&failover_config(&main, &gutter)).unwrap();
    let mut c = mc(&router.addr());
    c.set_with("before", b"1", 0, 100).unwrap();
    assert!(ttl_and_value(&main, "before").is_some());
    assert!(ttl_and_value(&gutter, "before").is_none());

    // Load: sets and gets in a bounded loop; the primary is killed a third of the way in.
    let mut failed_over_after = None;
    let mut errors = 0;
    let mut killed_at = None;
    for i in 0..600 {
        if i == 200 {
            servers[0].kill();
            killed_at = Some(Instant::now());
        }
        let key = format!("load:{i}");
        let reply = c.set_with(&key, b"v", 0, 0).unwrap();
        if reply != "STORED" {
            errors += 1;
        }
        assert_eq!(c.get(&key).unwrap().is_some(), reply == "STORED", "{key}");
        if let (Some(t), None) = (killed_at, failed_over_after) {
            if ttl_and_value(&gutter, &key).is_some() {
                failed_over_after = Some(t.elapsed());
            }
        }
    }
    let failed_over_after = failed_over_after.expect("sets reached the gutter");
    eprintln!(
        "failover: first set in the gutter {failed_over_after:?} after the kill; {errors} errors"
    );
    // Refused connections fail at once; at worst one read timeout.
    assert!(
        failed_over_after < Duration::from_millis(300),
        "{failed_over_after:?}"
    );
    assert_eq!(
        errors, 0,
        "no request failed: every one went to main or the gutter"
    );
    // Gutter items live at most gutter_ttl seconds (the client asked for no expiry).
    let (ttl, _) = ttl_and_value(&gutter, "load:599").unwrap();
    assert!((1..=5).contains(&ttl), "gutter ttl {ttl}");
    // Health: the server is marked down and shows so.
    let state = stat(&mut c, "", &format!("server:main:{main}:state"));
    assert!(state == "tko" || state == "down", "{state}");
    assert!(stat_u64(&mut c, &format!("server:main:{main}:tko_marks")) >= 1);
    assert!(stat_u64(&mut c, "route_failovers") > 0);
    assert!(stat_u64(&mut c, "route_gutter_sets") > 0);

    // Back: after a restart, sets land in main again.
    servers[0].restart().unwrap();
    let back = Instant::now();
    let mut i = 0;
    loop {
        let key = format!("after:{i}");
        assert_eq!(c.set_with(&key, b"w", 0, 0).unwrap(), "STORED");
        if ttl_and_value(&main, &key).is_some() {
            break;
        }
        i += 1;
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "main never came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "failback: main serves again {:?} after its restart",
        back.elapsed()
    );
    let (ttl, _) = ttl_and_value(&main, &format!("after:{i}")).unwrap();
    assert_eq!(ttl, -1, "main keeps the client's TTL");
    wait_for(
        || stat(&mut c, "", &format!("server:main:{main}:state")) == "up",
        "main up in every worker",
    );
}

#[test]
fn stopped_server_times_out_then_fails_fast_and_is_probed_back() {
    let servers = Memcached::start_many(2).unwrap();
    let (main, gutter) = (servers[0].addr(), servers[1].addr());
    let router = Router::start_config(&failover_config(&main, &gutter)).unwrap();
    let mut c = mc(&router.addr());
    c.set("warm", b"1").unwrap();
    let pid = servers[0].server.pid().unwrap();
    let signal = |s: &str| {
        std::process::Command::new("kill")
            .args([s, &pid.to_string()])
            .status()
            .unwrap()
    };
    // SIGSTOP: connections stay open, nothing answers. Requests time out (read_ms = 300),
    // fail over, and after tko_after failures the server fails fast.
    signal("-STOP");
    let mut slowest = Duration::ZERO;
    let mut times = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let reply = c.set_with(&format!("stop:{i}"), b"s", 0, 0).unwrap();
        assert_eq!(reply, "STORED", "request {i}");
        slowest = slowest.max(t.elapsed());
        times.push(t.elapsed());
    }
    signal("-CONT");
    eprintln!("stopped server: per-request times {times:?}");
    // The first requests wait for the read timeout, never much longer.
    assert!(slowest < Duration::from_millis(1000), "{slowest:?}");
    // Once marked down, requests go straight to the gutter.
    let fast = times[10..]
        .iter()
        .filter(|t| **t < Duration::from_millis(50))
        .count();
    assert!(fast >= 8, "TKO did not make requests fail fast: {times:?}");
    assert!(ttl_and_value(&gutter, "stop:19").is_some());
    // The probe brings it back.
    wait_for(
        || stat(&mut c, "", &format!("server:main:{main}:state")) == "up",
        "main up again",
    );
    wait_for(
        || {
            c.set("again", b"a").unwrap();
            ttl_and_value(&main, "again").is_some()
        },
        "writes to main again",
    );
}

#[test]
fn route_config_errors_name_the_line() {
    let head = "listen = [\"127.0.0.1:1\"]\n";
    let pools = "[pools.main]\nservers = [\"127.0.0.1:11211\"]\n";
    let cases = [
        ("route = \"nope\"\n", 2, "not defined as a pool or a route"),
        (
            "[route]\ntype = \"prefix\"\ndefault = \"main\"\nprefixes = { \"a:\" = \"missing\" }\n",
            5,
            "\"missing\" is not defined",
        ),
        ("[route]\ntype = \"teleport\"\n", 3, "unknown route type"),
        (
            "[route]\ntype = \"failover\"\nchildren = [\"main\"]\nholdoff_secs = 2\n",
            5,
            "does not apply",
        ),
        (
            "route = \"x\"\n[routes.x]\ntype = \"all-sync\"\nchildren = [\"y\"]\n[routes.y]\ntype = \"random\"\nchildren = [\"x\"]\n",
            8,
            "refers to itself",
        ),
        (
            // (0 is accepted: no cap, as mcrouter's plain FailoverRoute)
            "[route]\ntype = \"failover\"\nchildren = [\"main\"]\ngutter_ttl = -1\n",
            5,
            "gutter_ttl must be",
        ),
        ("[route]\ntype = \"warmup\"\ncold = \"main\"\n", 3, "needs `warm`"),
    ];
    for (tail, line, msg) in cases {
        let text = format!("{head}{tail}{pools}");
        let (ok, err) = Router::check(&text).unwrap();
        assert!(!ok, "accepted:\n{text}");
        assert!(
            err.contains(&format!("router.toml:{line}:")),
            "{err}\n{text}"
        );
        assert!(err.contains(msg), "{err}\n{text}");
    }
    // And a good tree passes.
    let (ok, err) = Router::check(&format!(
        "{head}[route]\ntype = \"failover\"\nchildren = [\"main\", {{ type = \"pool\", pool = \"main\" }}]\n{pools}"
    ))
    .unwrap();
    assert!(ok, "{err}");
}
