//! Drop-in for a twemproxy fleet: a `nutcracker.yml` with several pools (names, weights,
//! hash_tag, ejection settings) runs unchanged under the router, and every key a real
//! nutcracker stored through it is found through the router on the same ports — no cold
//! cache. An mcrouter JSON config converts and serves as its pools and routes say.

use std::fmt::Write as _;

use harness::process::server_dir;
use harness::router::Router;
use harness::twemproxy::Twemproxy;
use harness::{free_port, McClient, Memcached};

fn keys(pool: &str) -> Vec<String> {
    (0..300)
        .map(|i| match i % 3 {
            0 => format!("{pool}:user:{i}"),
            1 => format!("{pool}:user:{{{}}}:name:{i}", i % 23),
            _ => format!("{pool}/s/{:x}", i * 7919),
        })
        .collect()
}

fn yml(m: &[Memcached], alpha: u16, beta: u16) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "alpha:\n  listen: 127.0.0.1:{alpha}\n  hash: fnv1a_64");
    let _ = writeln!(
        y,
        "  hash_tag: \"{{}}\"\n  distribution: ketama\n  timeout: 1000"
    );
    let _ = writeln!(y, "  auto_eject_hosts: true\n  server_retry_timeout: 2000");
    let _ = writeln!(y, "  server_failure_limit: 3\n  redis: false\n  servers:");
    let _ = writeln!(
        y,
        "   - {}:1 cache-a\n   - {}:2 cache-b",
        m[0].addr(),
        m[1].addr()
    );
    let _ = writeln!(y, "beta:\n  listen: 127.0.0.1:{beta}\n  hash: md5");
    let _ = writeln!(
        y,
        "  distribution: ketama\n  backlog: 512\n  preconnect: true"
    );
    let _ = writeln!(y, "  server_connections: 2\n  servers:");
    let _ = writeln!(
        y,
        "   - {}:1\n   - {}:1\n   - {}:3",
        m[2].addr(),
        m[3].addr(),
        m[4].addr()
    );
    y
}

#[test]
fn a_nutcracker_yml_with_several_pools_runs_unchanged_and_finds_every_key() {
    let m = Memcached::start_many(5).unwrap();
    let (alpha, beta) = (free_port(), free_port());
    let dir = server_dir("dropin").unwrap();
    let conf = dir.path().join("nutcracker.yml");
    std::fs::write(&conf, yml(&m, alpha, beta)).unwrap();

    let nut = Twemproxy::start_file(&conf, alpha).unwrap();
    for (port, pool) in [(alpha, "alpha"), (beta, "beta")] {
        let mut c = McClient::connect(&format!("127.0.0.1:{port}")).unwrap();
        for k in keys(pool) {
            c.set(&k, k.as_bytes()).unwrap();
        }
    }
    drop(nut);

    // The same file, the same ports.
    let router = Router::start_file(&conf, alpha).unwrap();
    for (port, pool) in [(alpha, "alpha"), (beta, "beta")] {
        let mut c = McClient::connect(&format!("127.0.0.1:{port}")).unwrap();
        let mut missing = Vec::new();
        for k in keys(pool) {
            if c.get(&k).unwrap().as_deref() != Some(k.as_bytes()) {
                missing.push(k);
            }
        }
        assert!(
            missing.is_empty(),
            "{} of 300 {pool} keys set through nutcracker not found through the router: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    // Each pool serves only its own servers: alpha's keys are not reachable on beta's port.
    let mut c = McClient::connect(&format!("127.0.0.1:{beta}")).unwrap();
    let found = keys("alpha")
        .iter()
        .filter(|k| c.get(k).unwrap().is_some())
        .count();
    assert_eq!(found, 0, "beta's listener reached alpha's servers");
    drop(router);
}

#[test]
fn print_toml_shows_the_conversion_and_check_accepts_it() {
    let m = Memcached::start_many(5).unwrap();
    let dir = server_dir("dropin").unwrap();
    let conf = dir.path().join("nutcracker.yml");
    std::fs::write(&conf, yml(&m, free_port(), free_port())).unwrap();
    let out = std::process::Command::new(harness::project::bin("squeal-router"))
        .arg("--config")
        .arg(&conf)
        .arg("--print-toml")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[pools.\"alpha\"]") || text.contains("[pools.alpha]"),
        "{text}"
    );
    assert!(text.contains("eject_after = 3"), "{text}");
    assert!(text.contains("hash_tag = \"{}\""), "{text}");
    let check = std::process::Command::new(harness::project::bin("squeal-router"))
        .arg("--config")
        .arg(&conf)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // What cannot be mapped stops the router with the reason.
    std::fs::write(
        &conf,
        "p:\n  listen: 127.0.0.1:1\n  redis: true\n  servers: [\"127.0.0.1:2:1\"]\n",
    )
    .unwrap();
    let bad = std::process::Command::new(harness::project::bin("squeal-router"))
        .arg("--config")
        .arg(&conf)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("memcached only"));
}

#[test]
fn an_mcrouter_config_converts_and_routes() {
    let m = Memcached::start_many(3).unwrap();
    let port = free_port();
    let dir = server_dir("dropin").unwrap();
    let conf = dir.path().join("mcrouter.json");
    // Sets to both pools (all-sync), gets from A with a miss going on to B.
    let json = format!(
        r#"{{
          "pools": {{
            "A": {{"servers": ["{}", "{}"]}},
            "B": {{"servers": ["{}"]}}
          }},
          "route": {{
            "type": "OperationSelectorRoute",
            "operation_policies": {{
              "get": {{"type": "MissFailoverRoute", "children": ["PoolRoute|A", "PoolRoute|B"]}},
              "set": {{"type": "AllSyncRoute", "children": ["PoolRoute|A", "PoolRoute|B"]}},
              "delete": {{"type": "AllSyncRoute", "children": ["PoolRoute|A", "PoolRoute|B"]}}
            }},
            "default_policy": "PoolRoute|A"
          }}
        }}"#,
        m[0].addr(),
        m[1].addr(),
        m[2].addr()
    );
    // mcrouter takes its port on the command line; the converted TOML says 5000.
    let toml_path = dir.path().join("router.toml");
    let out = std::process::Command::new(harness::project::bin("squeal-router"))
        .arg("--config")
        .arg({
            std::fs::write(&conf, &json).unwrap();
            &conf
        })
        .arg("--print-toml")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8_lossy(&out.stdout).replace(
        "listen = [\"127.0.0.1:5000\"]",
        &format!("listen = [\"127.0.0.1:{port}\"]"),
    );
    std::fs::write(&toml_path, toml).unwrap();
    let _router = Router::start_file(&toml_path, port).unwrap();
    let mut c = McClient::connect(&format!("127.0.0.1:{port}")).unwrap();
    for i in 0..50 {
        c.set(&format!("k{i}"), b"v").unwrap();
    }
    // Both pools hold every key.
    let mut b = McClient::connect(&m[2].addr()).unwrap();
    for i in 0..50 {
        assert_eq!(b.get(&format!("k{i}")).unwrap().as_deref(), Some(&b"v"[..]));
    }
    // A miss in A is answered from B.
    for s in &m[..2] {
        let mut a = McClient::connect(&s.addr()).unwrap();
        a.send(b"flush_all\r\n").unwrap();
        assert_eq!(a.line().unwrap(), "OK");
    }
    assert_eq!(c.get("k7").unwrap().as_deref(), Some(&b"v"[..]));
}

/// `auto_eject_hosts: true`: once a server of the pool fails `server_failure_limit` times in
/// a row, its keys are served by the other servers (as nutcracker does), and the rehashes
/// are counted; the other servers' keys stay where they are.
#[test]
fn auto_eject_hosts_moves_a_dead_servers_keys_to_the_rest() {
    let mut m = Memcached::start_many(5).unwrap();
    let (alpha, beta) = (free_port(), free_port());
    let dir = server_dir("dropin").unwrap();
    let conf = dir.path().join("nutcracker.yml");
    std::fs::write(&conf, yml(&m, alpha, beta)).unwrap();
    let router = Router::start_file(&conf, alpha).unwrap();
    let mut c = McClient::connect(&format!("127.0.0.1:{alpha}")).unwrap();
    let keys = keys("alpha");
    for k in &keys {
        c.set(k, b"before").unwrap();
    }
    // Which keys live on cache-a (m[0]).
    let mut a = McClient::connect(&m[0].addr()).unwrap();
    let on_a: Vec<&String> = keys
        .iter()
        .filter(|k| a.get(k).unwrap().is_some())
        .collect();
    assert!(!on_a.is_empty() && on_a.len() < keys.len());
    drop(a);
    m[0].kill();

    // Failures until the limit (3), then the key is served by cache-b.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let k = on_a[0];
    loop {
        c.send(format!("set {k} 0 0 5\r\nafter\r\n").as_bytes())
            .unwrap();
        if c.line().unwrap() == "STORED" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ejected");
    }
    for k in &on_a {
        c.set(k, b"after").unwrap();
        assert_eq!(c.get(k).unwrap().as_deref(), Some(&b"after"[..]), "{k}");
    }
    // The live server's keys did not move: they still read their first value.
    let mut b = McClient::connect(&m[1].addr()).unwrap();
    for k in keys.iter().filter(|k| !on_a.contains(k)) {
        assert_eq!(
            b.get(k).unwrap().as_deref(),
            Some(&b"before"[..]),
            "{k} moved"
        );
    }
    let stats = router.stats().unwrap();
    let rehashes: usize = stats
        .iter()
        .find(|(k, _)| k == "route_eject_rehashes")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    assert!(rehashes >= on_a.len(), "{rehashes} rehashes counted");
}

/// systemd's `Type=notify`: the router says `READY=1` on `$NOTIFY_SOCKET` once it serves.
#[test]
fn the_router_tells_systemd_when_it_is_ready() {
    let m = Memcached::start().unwrap();
    let port = free_port();
    let dir = server_dir("dropin").unwrap();
    let conf = dir.path().join("router.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{}\"\nroute = \"main\"\n[pools.main]\nservers = [\"{}\"]\n",
            free_port(),
            m.addr()
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut cmd = std::process::Command::new(harness::project::bin("squeal-router"));
    cmd.arg("--config")
        .arg(&conf)
        .env("NOTIFY_SOCKET", &sock_path);
    let _router = harness::Server::spawn(
        "router",
        server_dir("router").unwrap(),
        cmd,
        harness::process::loopback(port),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
}
