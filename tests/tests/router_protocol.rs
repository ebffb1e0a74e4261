//! squeal-router against real memcached: replies byte-identical to memcached's, bad input
//! harming nobody, multi-gets merged in order, stats and metrics, config errors.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::router::Router;
use harness::{McClient, Memcached};

/// Sends `req` then `mn` and returns everything up to the `MN` that answers it.
fn exchange(stream: &mut TcpStream, req: &[u8]) -> Vec<u8> {
    stream.write_all(req).unwrap();
    stream.write_all(b"mn\r\n").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.ends_with(b"MN\r\n") {
        assert!(Instant::now() < deadline, "no MN after {req:?}: {out:?}");
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(req)
        );
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The scripted requests: text and meta, good and bad. Everything here must get exactly
/// the bytes memcached 1.6 gives.
fn script() -> Vec<Vec<u8>> {
    let long = "k".repeat(251);
    let big = vec![b'x'; 2_000_000];
    let mut s: Vec<Vec<u8>> = [
        "set foo 0 0 3\r\nbar\r\n",
        "get foo\r\n",
        "gets foo\r\n",
        "add foo 0 0 1\r\nx\r\n",
        "add new 5 0 2\r\nab\r\n",
        "replace nope 0 0 1\r\nx\r\n",
        "replace foo 1 0 4\r\nbarn\r\n",
        "append foo 0 0 2\r\n!!\r\n",
        "prepend foo 0 0 2\r\n<<\r\n",
        "get foo new missing foo\r\n",
        "gets foo new\r\n",
        "cas foo 0 0 1 999\r\nz\r\n",
        "cas nope 0 0 1 1\r\nz\r\n",
        "cas foo 0 0 1\r\nz\r\n",
        "set n 0 0 2\r\n10\r\n",
        "incr n 5\r\n",
        "decr n 100\r\n",
        "incr foo 1\r\n",
        "incr nokey 1\r\n",
        "incr n abc\r\n",
        "incr n 1 noreply\r\nget n\r\n",
        "touch foo 100\r\n",
        "touch nokey 10\r\n",
        "touch foo abc\r\n",
        "gat 100 foo new\r\n",
        "gats 0 foo\r\n",
        "gat abc foo\r\n",
        "gat foo\r\n",
        "delete new\r\n",
        "delete new\r\n",
        "delete foo 0\r\n",
        "delete foo 5\r\n",
        "delete\r\n",
        "set q 0 0 1 noreply\r\na\r\nget q\r\n",
        "add q 0 0 1 noreply\r\nb\r\nget q\r\n",
        "set q 0 0 1 noreply\r\nxyz\r\n",
        "verbosity 1\r\n",
        "verbosity\r\n",
        "version\r\n",
        "FOO\r\n",
        "\r\n",
        "get\r\n",
        "set k 0 0\r\n",
        "set k abc 0 1\r\nx\r\n",
        "set k 0 0 -1\r\nx\r\n",
        "set k 0 0 1\r\nxyz\r\n",
        "set k 0 0 5\nhello\r\nget k\n",
        "get a  b\r\n",
        // meta
        "ms m1 3 T0 F7\r\nabc\r\n",
        "mg m1 v f k s\r\n",
        "mg m1 v q\r\n",
        "mg nope v q\r\n",
        "mg nope v q k O77\r\n",
        "mg nope v\r\n",
        "mg m1 O123 k\r\n",
        "ma cnt\r\n",
        "ms cnt 1\r\n5\r\n",
        "ma cnt\r\n",
        "ma cnt v\r\n",
        "ma cnt MD D2 v\r\n",
        "ma cnt q\r\n",
        "ma cnt q v\r\n",
        "ma nope q O5\r\n",
        "mg cnt v\r\n",
        "md m1 q\r\n",
        "md m1 q\r\n",
        "md m1\r\n",
        "md nope q O9\r\n",
        "ms m3 2 q O4 k\r\nhi\r\n",
        "ms bTI= 2 b\r\nhi\r\n",
        "mg bTI= b v k\r\n",
        "mg m2 v\r\n",
        "mg !!! b v\r\n",
        "ms !!! 2 b\r\nhi\r\n",
        "ms k 2 Z\r\nhi\r\n",
        "ms k abc\r\nhi\r\n",
        "ms k\r\n",
        "ms k 2 q\r\nhiXX\r\n",
        "mg k Z\r\n",
        "md k Z\r\n",
        "mg\r\n",
        "me\r\n",
        "me nope\r\n",
        "ms m2 2 MA\r\nhi\r\n",
        "ms m2 2 MA\r\nhi\r\n",
        "ms m2 2 MZ\r\nhi\r\n",
        "mg m2 v v v v v v v v v v v v v v v v v v v v v v v v v v\r\n",
        "flush_all\r\n",
        "get foo m2\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    s.push(format!("get {long}\r\n").into_bytes());
    s.push(format!("get a {long}\r\n").into_bytes());
    s.push(format!("mg {long} v\r\n").into_bytes());
    s.push(format!("set {long} 0 0 1\r\nx\r\n").into_bytes());
    s.push(format!("ms {long} 2\r\nhi\r\n").into_bytes());
    let mut too_big = b"set big 0 0 2000000\r\n".to_vec();
    too_big.extend_from_slice(&big);
    too_big.extend_from_slice(b"\r\nget big\r\n");
    s.push(too_big);
    let mut too_big = b"ms big 2000000 T0\r\n".to_vec();
    too_big.extend_from_slice(&big);
    too_big.extend_from_slice(b"\r\nmg big v\r\n");
    s.push(too_big);
    s
}

#[test]
fn replies_are_byte_identical_to_memcached() {
    let direct = Memcached::start().unwrap();
    let behind = Memcached::start().unwrap();
    let router = Router::start(&[behind.addr()], "", "").unwrap();
    let mut d = connect(&direct.addr());
    let mut r = connect(&router.addr());
    let mut differences = Vec::new();
    for req in script() {
        let want = exchange(&mut d, &req);
        let got = exchange(&mut r, &req);
        if want != got {
            differences.push(format!(
                "request {:?}\n  memcached: {:?}\n  router:    {:?}",
                String::from_utf8_lossy(&req[..req.len().min(120)]),
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[test]
fn the_whole_script_pipelined_in_one_write_matches_too() {
    let direct = Memcached::start().unwrap();
    let behind = Memcached::start().unwrap();
    let router = Router::start(&[behind.addr()], "", "").unwrap();
    let all: Vec<u8> = script()
        .into_iter()
        // memcached 1.6.18 sometimes drops the request after a get with an over-long key
        // when they arrive in one read (a quirk of its read buffer); one at a time, the
        // long-key requests are compared by the test above.
        .filter(|r| {
            !r.starts_with(b"flush_all") && !r.windows(251).any(|w| w.iter().all(|&b| b == b'k'))
        })
        .flatten()
        .collect();
    let want = exchange(&mut connect(&direct.addr()), &all);
    let got = exchange(&mut connect(&router.addr()), &all);
    assert_eq!(
        String::from_utf8_lossy(&want),
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn multi_get_across_servers_is_merged_in_request_order() {
    let servers = Memcached::start_many(3).unwrap();
    let addrs: Vec<String> = servers.iter().map(|m| m.addr()).collect();
    let router = Router::start(&addrs, "", "").unwrap();
    let mut c = McClient::connect(&router.addr()).unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("mk:{i}")).collect();
    for k in &keys {
        c.set(k, format!("v-{k}").as_bytes()).unwrap();
    }
    // Every key landed on exactly one server, and all servers got some.
    let mut per_server = vec![0; servers.len()];
    for k in &keys {
        let holders: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                McClient::connect(&m.addr())
                    .unwrap()
                    .get(k)
                    .unwrap()
                    .is_some()
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holders.len(), 1, "{k} on {holders:?}");
        per_server[holders[0]] += 1;
    }
    assert!(per_server.iter().all(|&n| n > 0), "{per_server:?}");

    // Request order, with misses and repeats mixed in.
    let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
    asked.insert(5, "missing:1".into());
    asked.insert(20, keys[3].clone());
    asked.push("missing:2".into());
    let mut s = connect(&router.addr());
    let reply = exchange(&mut s, format!("get {}\r\n", asked.join(" ")).as_bytes());
    let mut expected = Vec::new();
    for k in &asked {
        if !k.starts_with("missing") {
            let v = format!("v-{k}");
            expected.extend_from_slice(format!("VALUE {k} 0 {}\r\n{v}\r\n", v.len()).as_bytes());
        }
    }
    expected.extend_from_slice(b"END\r\nMN\r\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&expected)
    );
    // gets carries each server's cas unique; the VALUE order is still the request order.
    let reply = exchange(&mut s, format!("gets {}\r\n", asked.join(" ")).as_bytes());
    let order: Vec<String> = String::from_utf8_lossy(&reply)
        .lines()
        .filter(|l| l.starts_with("VALUE "))
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    let want: Vec<String> = asked
        .iter()
        .filter(|k| !k.starts_with("missing"))
        .cloned()
        .collect();
    assert_eq!(order, want);
}

#[test]
fn bad_keys_are_refused() {
    let mc = Memcached::start().unwrap();
    let router = Router::start(&[mc.addr()], "", "").unwrap();
    let mut s = connect(&router.addr());
    // Control characters: memcached takes them in a key, and so do reads and deletes
    // through the router; storing one is refused (the project-wide key rule), so a key
    // squeal could never invalidate is never cached.
    assert_eq!(exchange(&mut s, b"get a\x01b\r\n"), b"END\r\nMN\r\n");
    assert_eq!(exchange(&mut s, b"mg a\x7fb v\r\n"), b"EN\r\nMN\r\n");
    assert_eq!(
        exchange(&mut s, b"set a\tb 0 0 1\r\nx\r\n"),
        b"CLIENT_ERROR bad command line format\r\nERROR\r\nMN\r\n"
    );
    assert_eq!(
        exchange(&mut s, b"ms a\x01b 1\r\nx\r\n"),
        b"CLIENT_ERROR bad command line format\r\nMN\r\n"
    );
    let long = "k".repeat(251);
    assert_eq!(
        exchange(&mut s, format!("delete {long}\r\n").as_bytes()),
        b"CLIENT_ERROR bad command line format\r\nMN\r\n"
    );
    // 250 bytes is fine.
    let ok = "k".repeat(250);
    assert_eq!(
        exchange(&mut s, format!("set {ok} 0 0 1\r\nx\r\n").as_bytes()),
        b"STORED\r\nMN\r\n"
    );
}

#[test]
fn oversized_value_is_refused_and_drained_without_desync() {
    let mc = Memcached::start().unwrap();
    let router = Router::start(&[mc.addr()], "", "[limits]\nmax_item_size = 4096\n").unwrap();
    let value = vec![b'v'; 100_000];
    let mut c = McClient::connect(&router.addr()).unwrap();
    c.set("other", b"still here").unwrap();
    // The refused value arrives in pieces, and contains what looks like commands: all of
    // it is drained, none of it is executed.
    let mut s = connect(&router.addr());
    s.write_all(b"set big 0 0 100000\r\n").unwrap();
    let mut value_with_commands = value.clone();
    let cmds = b"\r\nflush_all\r\nget x\r\n";
    value_with_commands[..cmds.len()].copy_from_slice(cmds);
    for chunk in value_with_commands.chunks(7000) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let reply = exchange(&mut s, b"\r\nget other\r\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "SERVER_ERROR object too large for cache\r\nVALUE other 0 10\r\nstill here\r\nEND\r\nMN\r\n"
    );
    drop(s);

    let mut s = connect(&router.addr());
    let mut req = b"set big 0 0 100000\r\n".to_vec();
    req.extend_from_slice(&value);
    req.extend_from_slice(b"\r\nget other\r\n");
    let reply = exchange(&mut s, &req);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "SERVER_ERROR object too large for cache\r\nVALUE other 0 10\r\nstill here\r\nEND\r\nMN\r\n"
    );
    // At the limit it is stored.
    let mut req = b"set fits 0 0 4096\r\n".to_vec();
    req.extend_from_slice(&[b'f'; 4096]);
    req.extend_from_slice(b"\r\n");
    assert_eq!(exchange(&mut s, &req), b"STORED\r\nMN\r\n");
    assert_eq!(c.get("other").unwrap().as_deref(), Some(&b"still here"[..]));
}

#[test]
fn garbage_and_half_sent_values_harm_no_other_client() {
    let mc = Memcached::start().unwrap();
    let router = Router::start(&[mc.addr()], "", "").unwrap();
    let mut good = McClient::connect(&router.addr()).unwrap();
    good.set("g", b"good").unwrap();

    // Binary garbage: the router answers ERROR or closes, as memcached would.
    let mut bad = connect(&router.addr());
    let mut rng = 0x1234_5678_u32;
    let garbage: Vec<u8> = (0..20_000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng as u8
        })
        .collect();
    let _ = bad.write_all(&garbage);
    assert_eq!(good.get("g").unwrap().as_deref(), Some(&b"good"[..]));

    // A long line without a newline: closed, like memcached does.
    let mut long = connect(&router.addr());
    let _ = long.write_all(&vec![b'a'; 5000]);
    let mut buf = [0u8; 64];
    let n = long.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected close, got {:?}", &buf[..n]);

    // A value cut off by a disconnect is not stored, and nobody else notices.
    for _ in 0..20 {
        let mut half = connect(&router.addr());
        half.write_all(b"set half 0 0 100\r\n").unwrap();
        half.write_all(&[b'h'; 50]).unwrap();
        drop(half);
        assert_eq!(good.get("g").unwrap().as_deref(), Some(&b"good"[..]));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(good.get("half").unwrap(), None);
    // Pipelined good traffic still gets every reply in order.
    let mut s = connect(&router.addr());
    let mut req = Vec::new();
    for i in 0..200 {
        req.extend_from_slice(format!("set p{i} 0 0 1\r\n{}\r\nget p{i}\r\n", i % 10).as_bytes());
    }
    let reply = exchange(&mut s, &req);
    let mut want = String::new();
    for i in 0..200 {
        want.push_str(&format!(
            "STORED\r\nVALUE p{i} 0 1\r\n{}\r\nEND\r\n",
            i % 10
        ));
    }
    want.push_str("MN\r\n");
    assert_eq!(String::from_utf8_lossy(&reply), want);
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_never_reads_costs_bounded_memory() {
    let mc = Memcached::start().unwrap();
    let router = Router::start(
        &[mc.addr()],
        "",
        "[limits]\nmax_pending_per_client = 64\nmax_client_output = 1048576\n",
    )
    .unwrap();
    let mut c = McClient::connect(&router.addr()).unwrap();
    c.set("big", &vec![b'b'; 500_000]).unwrap();
    let pid = router.server.pid().unwrap();
    let before = rss_kb(pid);

    // Ask for 1 GB of replies and never read them.
    let mut slow = connect(&router.addr());
    slow.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = b"get big\r\n".repeat(2000);
    let _ = slow.write_all(&req);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kb(pid);
    assert!(
        after < before + 100_000,
        "router grew from {before} kB to {after} kB"
    );
    // Everyone else is served meanwhile.
    for i in 0..50 {
        c.set(&format!("x{i}"), b"1").unwrap();
        assert!(c.get(&format!("x{i}")).unwrap().is_some());
    }
    drop(slow);
}

#[test]
fn server_down_fails_fast_and_reconnects() {
    let mut servers = Memcached::start_many(2).unwrap();
    let addrs: Vec<String> = servers.iter().map(|m| m.addr()).collect();
    let router = Router::start(
        &addrs,
        "",
        "[timeouts]\nconnect_ms = 200\nread_ms = 500\nbackoff_min_ms = 20\nbackoff_max_ms = 200\n",
    )
    .unwrap();
    let mut c = McClient::connect(&router.addr()).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
    for k in &keys {
        c.set(k, b"v").unwrap();
    }
    let on_first: Vec<&String> = keys
        .iter()
        .filter(|k| {
            McClient::connect(&servers[0].addr())
                .unwrap()
                .get(k)
                .unwrap()
                .is_some()
        })
        .collect();
    assert!(!on_first.is_empty() && on_first.len() < keys.len());
    servers[0].kill();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let mut errors = 0;
    for k in &keys {
        let reply = c.set_with(k, b"w", 0, 0).unwrap();
        if on_first.contains(&k) {
            assert!(reply.starts_with("SERVER_ERROR"), "{k}: {reply}");
            errors += 1;
        } else {
            assert_eq!(reply, "STORED");
        }
    }
    assert_eq!(errors, on_first.len());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A multi-get with keys on the dead server answers the rest (dead keys are misses).
    let got = c
        .get_multi(&keys.iter().map(|k| k.as_str()).collect::<Vec<_>>())
        .unwrap();
    for (k, v) in &got {
        assert_eq!(v.is_some(), !on_first.contains(&k), "{k}");
    }
    let lines = c.stats("").unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(":state partial") || l.ends_with(":state down")),
        "{lines:?}"
    );

    servers[0].restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if c.set_with(on_first[0], b"back", 0, 0).unwrap() == "STORED" {
            break;
        }
        assert!(Instant::now() < deadline, "router never reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.get(on_first[0]).unwrap().as_deref(), Some(&b"back"[..]));
}

#[test]
fn stats_and_metrics_are_the_routers_own() {
    let mc = Memcached::start().unwrap();
    let router = Router::start(&[mc.addr()], "", "").unwrap();
    let mut c = McClient::connect(&router.addr()).unwrap();
    c.set("s1", b"x").unwrap();
    for _ in 0..3 {
        c.get("s1").unwrap();
    }
    c.get("nope").unwrap();
    let lines = c.stats("").unwrap();
    let stat = |name: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
            .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
            .to_string()
    };
    assert_eq!(stat("cmd_get"), "4");
    assert_eq!(stat("cmd_set"), "1");
    assert_eq!(stat("get_hits"), "3");
    assert_eq!(stat("get_misses"), "1");
    assert_eq!(stat("curr_connections"), "1");
    assert!(stat("version").starts_with("squeal-router"));
    assert_eq!(stat(&format!("server:main:{}:state", mc.addr())), "up");
    assert!(stat("uptime").parse::<u64>().is_ok());

    // Prometheus on the admin port (published once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", router.admin_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        if body.contains("squeal_router_ops_total{cmd=\"get\"} 4") {
            assert!(body.contains("squeal_router_get_hits_total 3"), "{body}");
            assert!(
                body.contains("squeal_router_server_connections_up"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the gets:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bad_config_refuses_to_start_and_names_the_line() {
    let good = "listen = [\"127.0.0.1:1\"]\nroute = \"main\"\n[pools.main]\nservers = [\"127.0.0.1:11211\"]\n";
    let (ok, err) = Router::check(good).unwrap();
    assert!(ok, "{err}");
    for (text, line, needle) in [
        (
            good.replace("route = \"main\"", "route = \"other\""),
            2,
            "not defined",
        ),
        (
            good.replace("127.0.0.1:11211", "127.0.0.1:notaport"),
            4,
            "bad port",
        ),
        (
            format!("{good}distribution = \"rendezvous\"\n"),
            5,
            "unknown distribution",
        ),
        (format!("{good}hash = \"sha1\"\n"), 5, "unknown hash"),
        (
            good.replace("listen = [\"127.0.0.1:1\"]", "listen = [\"nowhere\"]"),
            1,
            "ip:port",
        ),
        (
            format!("{good}[limits]\nmax_item_size = 0\n"),
            6,
            "max_item_size",
        ),
        (format!("{good}[limits]\ntypo = 1\n"), 6, "typo"),
        (format!("{good}servers = \n"), 5, ""),
    ] {
        let (ok, err) = Router::check(&text).unwrap();
        assert!(!ok, "accepted:\n{text}");
        assert!(
            err.contains(&format!("router.toml:{line}:")) && err.contains(needle),
            "for\n{text}\nexpected line {line} and {needle:?}, got: {err}"
        );
    }
}

/// As memcached: a `set` refused as too large also removes the old value, so a value the
/// application tried to replace is not served on (a stale read otherwise).
#[test]
fn an_oversized_set_removes_the_old_value_as_memcached_does() {
    let server = Memcached::start().unwrap();
    let router = Router::start(&[server.addr()], "", "[limits]\nmax_item_size = 1024").unwrap();
    let mut c = McClient::connect(&router.addr()).unwrap();
    let mut direct = McClient::connect(&server.addr()).unwrap();
    let big = vec![b'x'; 2000];
    for (i, command) in ["set", "ms"].iter().enumerate() {
        let key = format!("replaced:{i}");
        c.set(&key, b"old").unwrap();
        if *command == "set" {
            c.send(format!("set {key} 0 0 {}\r\n", big.len()).as_bytes())
                .unwrap();
        } else {
            c.send(format!("ms {key} {}\r\n", big.len()).as_bytes())
                .unwrap();
        }
        c.send(&big).unwrap();
        c.send(b"\r\n").unwrap();
        assert_eq!(c.line().unwrap(), "SERVER_ERROR object too large for cache");
        assert_eq!(
            c.get(&key).unwrap(),
            None,
            "{command}: the old value is gone"
        );
        assert_eq!(
            direct.get(&key).unwrap(),
            None,
            "{command}: on the server too"
        );
    }
    // Other storage commands leave the old value, as memcached does.
    c.set("kept", b"old").unwrap();
    c.send(format!("append kept 0 0 {}\r\n", big.len()).as_bytes())
        .unwrap();
    c.send(&big).unwrap();
    c.send(b"\r\n").unwrap();
    assert_eq!(c.line().unwrap(), "SERVER_ERROR object too large for cache");
    assert_eq!(c.get("kept").unwrap().as_deref(), Some(&b"old"[..]));
}
