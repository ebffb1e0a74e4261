//! Route trees, part two, against real memcached servers: warm-up (backfill with the warm
//! item's remaining TTL, CAS from cold, hold-off tombstones that refuse `add`),
//! Master-Slave-L1 (backfills, reseeding the master, writes to every layer), miss-failover,
//! random, and live reload under load (no request lost, a bad config refused).

use std::time::{Duration, Instant};

use harness::memcache::{mc, stat_u64};
use harness::router::Router;
use harness::{wait_for, McClient, Memcached};

/// `mg <key> f t v` straight on a server: (flags, remaining TTL, value).
fn meta(addr: &str, key: &str) -> Option<(u32, i64, Vec<u8>)> {
    let mut c = mc(addr);
    c.send(format!("mg {key} f t v\r\n").as_bytes()).unwrap();
    let line = c.line().unwrap();
    if line.starts_with("EN") {
        return None;
    }
    let toks: Vec<&str> = line.split(' ').collect();
    assert_eq!(toks[0], "VA", "{line}");
    let len: usize = toks[1].parse().unwrap();
    let flag = |p: char| toks.iter().find_map(|t| t.strip_prefix(p)).unwrap();
    let data = c.bytes(len + 2).unwrap();
    Some((
        flag('f').parse().unwrap(),
        flag('t').parse().unwrap(),
        data[..len].to_vec(),
    ))
}

/// `gets key`: (value, cas).
fn gets(c: &mut McClient, key: &str) -> Option<(Vec<u8>, u64)> {
    c.send(format!("gets {key}\r\n").as_bytes()).unwrap();
    let line = c.line().unwrap();
    if line == "END" {
        return None;
    }
    let toks: Vec<&str> = line.split(' ').collect();
    assert_eq!(toks[0], "VALUE", "{line}");
    let len: usize = toks[3].parse().unwrap();
    let cas: u64 = toks[4].parse().unwrap();
    let data = c.bytes(len + 2).unwrap();
    assert_eq!(c.line().unwrap(), "END");
    Some((data[..len].to_vec(), cas))
}

#[test]
fn warmup_backfills_with_remaining_ttl_and_holdoff_refuses_add() {
    let servers = Memcached::start_many(2).unwrap();
    let (cold, warm) = (servers[0].addr(), servers[1].addr());
    let router = Router::start_config(&format!(
        r#"workers = 2
[pools.cold]
servers = ["{cold}"]
[pools.warm]
servers = ["{warm}"]
[route]
type = "warmup"
cold = "cold"
warm = "warm"
holdoff_secs = 2
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    let mut w = mc(&warm);
    assert_eq!(w.set_with("u:1", b"hello", 7, 100).unwrap(), "STORED");
    w.set("u:2", b"forever").unwrap();

    // A miss in cold reads warm and backfills cold with flags and remaining TTL.
    assert_eq!(c.get("u:1").unwrap().as_deref(), Some(&b"hello"[..]));
    let (flags, ttl, value) = meta(&cold, "u:1").expect("backfilled");
    assert_eq!((flags, value.as_slice()), (7, &b"hello"[..]));
    assert!((90..=100).contains(&ttl), "remaining ttl {ttl}");
    assert_eq!(c.get("u:2").unwrap().as_deref(), Some(&b"forever"[..]));
    assert_eq!(
        meta(&cold, "u:2").unwrap().1,
        -1,
        "no expiry stays no expiry"
    );
    assert!(stat_u64(&mut c, "route_backfills") >= 2);

    // gets answers with cold's CAS token (also for a key just backfilled).
    w.set("u:3", b"three").unwrap();
    let (v, cas) = gets(&mut c, "u:3").unwrap();
    assert_eq!(v, b"three");
    let (_, cold_cas) = gets(&mut mc(&cold), "u:3").unwrap();
    assert_eq!(cas, cold_cas);

    // Multi-get: a cold hit, a warm-only key, a key nowhere.
    mc(&cold).set("m:cold", b"c").unwrap();
    w.set("m:warm", b"w").unwrap();
    let got = c.get_multi(&["m:cold", "m:warm", "m:none"]).unwrap();
    let values: Vec<Option<&[u8]>> = got.iter().map(|(_, v)| v.as_deref()).collect();
    assert_eq!(values, vec![Some(&b"c"[..]), Some(&b"w"[..]), None]);

    // Writes go to cold only.
    c.set("only-cold", b"x").unwrap();
    assert!(meta(&cold, "only-cold").is_some());
    assert!(meta(&warm, "only-cold").is_none());

    // A delete leaves the hold-off: the key reads as a miss even though warm (which has
    // not seen the invalidation) still has it, and `add` fails, through the router and
    // straight on the server (any router instance or warm-up tool).
    assert_eq!(c.delete("u:1").unwrap(), "DELETED");
    let deleted_at = Instant::now();
    let (flags, ttl, value) = meta(&cold, "u:1").expect("tombstone");
    assert_eq!(flags, marker::holdoff::TOMBSTONE_FLAGS);
    assert!(value.is_empty() && (1..=2).contains(&ttl), "{ttl}");
    assert_eq!(c.get("u:1").unwrap(), None, "tombstone reads as a miss");
    assert!(
        !c.add("u:1", b"stale", 0).unwrap(),
        "add refused in the hold-off"
    );
    assert!(!mc(&cold).add("u:1", b"stale", 0).unwrap());
    assert_eq!(c.delete("never-there").unwrap(), "NOT_FOUND");
    assert!(stat_u64(&mut c, "route_holdoffs") >= 2);
    // After the hold-off, add works again.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(deleted_at.elapsed()));
    wait_for(
        || c.add("u:1", b"fresh", 0).unwrap(),
        "add after the hold-off",
    );
    assert_eq!(c.get("u:1").unwrap().as_deref(), Some(&b"fresh"[..]));
}

#[test]
fn master_slave_l1_backfills_reseeds_and_writes_every_layer() {
    let servers = Memcached::start_many(4).unwrap();
    let addrs: Vec<String> = servers.iter().map(|s| s.addr()).collect();
    let (master, slave, l1a, l1b) = (&addrs[0], &addrs[1], &addrs[2], &addrs[3]);
    let router = Router::start_config(&format!(
        r#"workers = 2
[pools.master]
servers = ["{master}"]
[pools.slave]
servers = ["{slave}"]
[pools.l1a]
servers = ["{l1a}"]
[pools.l1b]
servers = ["{l1b}"]
[routes.kv]
type = "master-slave-l1"
master = "master"
slave = "slave"
l1 = ["l1a", "l1b"]
[route]
type = "prefix"
default = "kv"
prefixes = {{ "direct:" = "master" }}
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    let l1_has = |key: &str| [l1a, l1b].iter().filter(|a| meta(a, key).is_some()).count();

    // Only in the slave: get finds it and backfills the master and the L1 it tried.
    assert_eq!(
        mc(slave).set_with("s:1", b"from-slave", 3, 200).unwrap(),
        "STORED"
    );
    assert_eq!(c.get("s:1").unwrap().as_deref(), Some(&b"from-slave"[..]));
    wait_for(
        || meta(master, "s:1").is_some() && l1_has("s:1") == 1,
        "backfill",
    );
    let (flags, ttl, _) = meta(master, "s:1").unwrap();
    assert_eq!(flags, 3);
    assert!((190..=200).contains(&ttl), "{ttl}");

    // Only in the master: the L1 gets it.
    mc(master).set("m:1", b"from-master").unwrap();
    assert_eq!(c.get("m:1").unwrap().as_deref(), Some(&b"from-master"[..]));
    wait_for(|| l1_has("m:1") == 1, "L1 backfill");
    assert!(
        meta(slave, "m:1").is_none(),
        "a hit in the master does not touch the slave"
    );

    // gets goes to the master; a miss there reseeds it from the slave and answers with
    // the master's CAS token.
    mc(slave).set("g:1", b"seed").unwrap();
    let (v, cas) = gets(&mut c, "g:1").unwrap();
    assert_eq!(v, b"seed");
    let (_, master_cas) = gets(&mut mc(master), "g:1").unwrap();
    assert_eq!(cas, master_cas);
    c.send(format!("cas g:1 0 0 3 {cas}\r\nnew\r\n").as_bytes())
        .unwrap();
    assert_eq!(c.line().unwrap(), "STORED");
    // cas stored in the master, then set everywhere.
    wait_for(
        || {
            addrs
                .iter()
                .all(|a| meta(a, "g:1").is_some_and(|m| m.2 == b"new"))
        },
        "cas value on every layer",
    );

    // add: master, then every layer.
    assert!(c.add("a:1", b"added", 0).unwrap());
    wait_for(
        || addrs.iter().all(|a| meta(a, "a:1").is_some()),
        "add copied to every layer",
    );
    assert!(!c.add("a:1", b"again", 0).unwrap());

    // set and delete: all layers.
    c.set("x:1", b"everywhere").unwrap();
    wait_for(
        || addrs.iter().all(|a| meta(a, "x:1").is_some()),
        "set on every layer",
    );
    assert_eq!(c.delete("x:1").unwrap(), "DELETED");
    wait_for(
        || addrs.iter().all(|a| meta(a, "x:1").is_none()),
        "delete on every layer",
    );

    // Other writes: the master, then the copies are dropped (they refill from it).
    c.set("n", b"1").unwrap();
    wait_for(
        || addrs.iter().all(|a| meta(a, "n").is_some()),
        "n everywhere",
    );
    c.send(b"incr n 4\r\n").unwrap();
    assert_eq!(c.line().unwrap(), "5");
    wait_for(
        || addrs[1..].iter().all(|a| meta(a, "n").is_none()),
        "stale copies dropped",
    );
    assert_eq!(meta(master, "n").unwrap().2, b"5");
    assert_eq!(c.get("n").unwrap().as_deref(), Some(&b"5"[..]));
    assert!(stat_u64(&mut c, "route_backfills") >= 3);
}

#[test]
fn miss_failover_and_random() {
    let servers = Memcached::start_many(2).unwrap();
    let (a, b) = (servers[0].addr(), servers[1].addr());
    let router = Router::start_config(&format!(
        r#"workers = 1
[pools.a]
servers = ["{a}"]
[pools.b]
servers = ["{b}"]
[route]
type = "prefix"
default = {{ type = "miss-failover", children = ["a", "b"] }}
prefixes = {{ "rr:" = {{ type = "random", children = ["a", "b"] }} }}
"#
    ))
    .unwrap();
    let mut c = mc(&router.addr());
    mc(&b).set("only-b", b"B").unwrap();
    mc(&a).set("both", b"A").unwrap();
    mc(&b).set("both", b"B").unwrap();
    assert_eq!(c.get("only-b").unwrap().as_deref(), Some(&b"B"[..]));
    assert_eq!(c.get("both").unwrap().as_deref(), Some(&b"A"[..]));
    assert_eq!(c.get("none").unwrap(), None);
    let got = c.get_multi(&["both", "none", "only-b"]).unwrap();
    let values: Vec<Option<&[u8]>> = got.iter().map(|(_, v)| v.as_deref()).collect();
    assert_eq!(values, vec![Some(&b"A"[..]), None, Some(&b"B"[..])]);
    // Writes go to the first child only.
    c.set("w", b"1").unwrap();
    assert!(meta(&a, "w").is_some() && meta(&b, "w").is_none());

    // random: reads spread over both replicas.
    mc(&a).set("rr:k", b"A").unwrap();
    mc(&b).set("rr:k", b"B").unwrap();
    let (mut seen_a, mut seen_b) = (0, 0);
    for _ in 0..200 {
        match c.get("rr:k").unwrap().as_deref() {
            Some(b"A") => seen_a += 1,
            Some(b"B") => seen_b += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(seen_a > 40 && seen_b > 40, "a {seen_a}, b {seen_b}");
}

#[test]
fn reload_under_load_loses_no_request_and_refuses_a_bad_config() {
    let servers = Memcached::start_many(2).unwrap();
    let (a, b) = (servers[0].addr(), servers[1].addr());
    let config = |route: &str| {
        format!(
            "workers = 2\nroute = \"{route}\"\n[pools.a]\nservers = [\"{a}\"]\n[pools.b]\nservers = [\"{b}\"]\n"
        )
    };
    let router = Router::start_config(&config("a")).unwrap();
    let addr = router.addr();
    let head = std::fs::read_to_string(&router.config).unwrap();
    let head: String = head.lines().take(2).map(|l| format!("{l}\n")).collect();
    let write = |body: &str| {
        let tmp = router.config.with_extension("tmp");
        std::fs::write(&tmp, format!("{head}{body}")).unwrap();
        std::fs::rename(&tmp, &router.config).unwrap();
    };

    // Clients on long-lived connections, each request checked; bounded in count.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..3)
        .map(|t| {
            let addr = addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = mc(&addr);
                let mut n = 0u64;
                for i in 0..200_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("load:{t}:{i}");
                    assert_eq!(c.set_with(&key, b"v", 0, 0).unwrap(), "STORED", "{key}");
                    // Straddling a reload, the get may go to the other pool: a miss,
                    // never an error, never a lost reply.
                    if let Some(v) = c.get(&key).unwrap() {
                        assert_eq!(v, b"v");
                    }
                    n += 2;
                }
                n
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(300));
    let mut admin = mc(&addr);
    write(&config("b"));
    router.server.signal("HUP");
    wait_for(|| stat_u64(&mut admin, "config_reloads") == 1, "reload");
    // New requests use pool b.
    wait_for(
        || {
            admin.set("after-reload", b"1").unwrap();
            meta(&b, "after-reload").is_some()
        },
        "sets in b",
    );
    assert!(meta(&a, "after-reload").is_none());

    // A broken config is refused; the running one stays.
    std::thread::sleep(Duration::from_millis(200));
    write("route = \"b\"\n[pools.b]\nservers = [\"127.0.0.1:0\"]\n");
    router.server.signal("HUP");
    wait_for(
        || stat_u64(&mut admin, "config_reload_failures") == 1,
        "refused reload",
    );
    admin.set("still-b", b"1").unwrap();
    assert!(meta(&b, "still-b").is_some());
    let log = std::fs::read_to_string(&router.server.log).unwrap();
    assert!(
        log.contains("config reload rejected") && log.contains("router.toml:5:"),
        "{log}"
    );

    // And back to a, under load.
    std::thread::sleep(Duration::from_millis(200));
    write(&config("a"));
    router.server.signal("HUP");
    wait_for(
        || stat_u64(&mut admin, "config_reloads") == 2,
        "second reload",
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: u64 = load.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!("reload under load: {total} requests, every one answered");
    assert!(total > 1000, "load too small to mean anything: {total}");
    // The same connections kept working across both reloads.
    assert_eq!(stat_u64(&mut admin, "config_generation"), 2);
}
