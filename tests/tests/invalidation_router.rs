//! The router's receiving end of invalidations, against real memcached servers and a real
//! tansu broker: fan-out to every cluster, markers to the regional pool, authentication,
//! the durable spool across stalled servers and router crashes, the warm-up hold-off, and
//! the Kafka transport.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::memcached::toml_list;
use harness::router::Router;
use harness::{Broker, McClient, Memcached};
use marker::batch::{Ack, AckStatus, Batch, EntryKind, Secret, ACK_LEN};

const SECRET: &str = "test-secret";

/// Two front-end clusters (`a`: ketama over two servers, `b`: a replicated pair) and a
/// regional pool, a router serving `a` with invalidation on.
struct Region {
    a: Vec<Memcached>,
    b: Vec<Memcached>,
    regional: Memcached,
    router: Router,
    inv_port: u16,
    _spool: tempfile::TempDir,
}

fn region(extra_invalidation: &str) -> Result<Region> {
    let a = Memcached::start_many(2)?;
    let b = Memcached::start_many(2)?;
    let regional = Memcached::start()?;
    let inv_port = harness::free_port();
    let spool = tempfile::tempdir()?;
    let config = format!(
        "workers = 2\nroute = \"a\"\n\
         [pools.a]\nservers = [{}]\n\
         [pools.b]\nservers = [{}]\ndistribution = \"random\"\n\
         [pools.regional]\nservers = [{:?}]\n\
         [invalidation]\nlisten = \"127.0.0.1:{inv_port}\"\nsecret = \"{SECRET}\"\n\
         clusters = [\"a\", \"b\"]\nmarker_pools = [\"regional\"]\n\
         spool_dir = {:?}\ntimeout_ms = 300\nreplay_interval_ms = 100\n{extra_invalidation}\n",
        toml_list(&a),
        toml_list(&b),
        regional.addr(),
        spool.path().display().to_string(),
    );
    let router = Router::start_config(&config)?;
    Ok(Region {
        a,
        b,
        regional,
        router,
        inv_port,
        _spool: spool,
    })
}

fn batch(seq: u64, keys: &[&str], markers: &[&str]) -> Batch {
    Batch {
        source: "test".into(),
        seq,
        commit_time_us: 0,
        entries: keys
            .iter()
            .map(|k| (EntryKind::Key, k.as_bytes().to_vec()))
            .chain(
                markers
                    .iter()
                    .map(|k| (EntryKind::Marker, k.as_bytes().to_vec())),
            )
            .collect(),
    }
}

/// Sends batches on one connection and returns their acks.
fn send(port: u16, secret: &str, batches: &[Batch]) -> Result<Vec<Ack>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let secret = Secret::new(secret.as_bytes());
    let mut out = Vec::new();
    for b in batches {
        b.encode(&secret, &mut out)?;
    }
    stream.write_all(&out)?;
    let mut acks = Vec::new();
    for _ in batches {
        let mut buf = [0u8; ACK_LEN];
        stream.read_exact(&mut buf).context("reading ack")?;
        acks.push(Ack::decode(&buf, &secret)?.context("whole ack")?.0);
    }
    Ok(acks)
}

fn set_everywhere(servers: &[&Memcached], key: &str) -> Result<()> {
    for s in servers {
        McClient::connect(&s.addr())?.set(key, b"stale")?;
    }
    Ok(())
}

fn holders(servers: &[&Memcached], key: &str) -> Result<usize> {
    let mut n = 0;
    for s in servers {
        if McClient::connect(&s.addr())?.get(key)?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

#[test]
fn batches_reach_every_cluster_and_markers_the_regional_pool() -> Result<()> {
    let r = region("")?;
    let all: Vec<&Memcached> = r.a.iter().chain(&r.b).chain([&r.regional]).collect();
    let mut client = McClient::connect(&r.router.addr())?;
    let keys: Vec<String> = (0..50).map(|i| format!("user:{i}")).collect();
    for k in &keys {
        // Cluster a through the router (ketama places it), b and regional everywhere.
        client.set(k, b"stale")?;
        set_everywhere(&[&r.b[0], &r.b[1], &r.regional], k)?;
    }
    set_everywhere(&[&r.regional], "r_user:1")?;
    set_everywhere(&[&r.a[0], &r.a[1], &r.b[0], &r.b[1]], "r_user:1")?;

    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let acks = send(
        r.inv_port,
        SECRET,
        &[
            batch(1, &refs[..25], &[]),
            batch(2, &refs[25..], &["r_user:1"]),
        ],
    )?;
    assert_eq!(
        acks.iter().map(|a| (a.seq, a.status)).collect::<Vec<_>>(),
        [(1, AckStatus::Applied), (2, AckStatus::Applied)]
    );
    for k in &keys {
        assert_eq!(client.get(k)?, None, "{k} via the router");
        // Cache keys go to the clusters only: the regional pool keeps its copy.
        assert_eq!(
            holders(&all[..4], k)?,
            0,
            "{k} is gone from every cluster server"
        );
        assert_eq!(
            holders(&[&r.regional], k)?,
            1,
            "{k} stays in the regional pool"
        );
    }
    assert_eq!(holders(&[&r.regional], "r_user:1")?, 0, "marker cleared");
    assert_eq!(
        holders(&all[..4], "r_user:1")?,
        4,
        "markers are not deleted in clusters"
    );

    // A retried batch (same seq) is harmless and acked again.
    let again = send(r.inv_port, SECRET, &[batch(2, &refs[25..], &["r_user:1"])])?;
    assert_eq!(again[0].status, AckStatus::Applied);
    Ok(())
}

#[test]
fn unauthenticated_or_garbage_frames_delete_nothing() -> Result<()> {
    let r = region("")?;
    let mut client = McClient::connect(&r.router.addr())?;
    client.set("victim", b"v")?;

    // Wrong secret: no ack, connection closed, nothing deleted.
    let err = send(r.inv_port, "wrong", &[batch(1, &["victim"], &[])]);
    assert!(err.is_err(), "a forged batch gets no ack");
    // Garbage.
    let mut raw = TcpStream::connect(("127.0.0.1", r.inv_port))?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    raw.write_all(b"delete victim\r\n")?;
    let mut buf = [0u8; 16];
    assert_eq!(raw.read(&mut buf)?, 0, "garbage closes the connection");
    assert_eq!(client.get("victim")?.as_deref(), Some(&b"v"[..]));

    // The port still serves honest senders.
    let acks = send(r.inv_port, SECRET, &[batch(3, &["victim"], &[])])?;
    assert_eq!(acks[0].status, AckStatus::Applied);
    assert_eq!(client.get("victim")?, None);
    // Both rejections are counted: the forged frame and the garbage.
    wait_until("rejections to be counted", Duration::from_secs(5), || {
        Ok(r.router
            .metric("squeal_router_invalidation_frames_rejected_total")
            >= 2.0)
    })
}

/// SIGSTOP freezes a server with its data intact: deletes time out and are spooled; once it
/// resumes, the replayer deletes the stale values.
#[test]
fn a_stalled_server_gets_its_deletes_from_the_spool() -> Result<()> {
    let r = region("")?;
    let b0 = &r.b[0];
    let keys: Vec<String> = (0..200).map(|i| format!("item:{i}")).collect();
    for k in &keys {
        set_everywhere(&[b0], k)?;
    }
    b0.server.signal("STOP");
    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    let started = Instant::now();
    let acks = send(r.inv_port, SECRET, &[batch(1, &refs, &[])])?;
    assert_eq!(
        acks[0].status,
        AckStatus::Applied,
        "spooled counts as applied"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout bounds the ack"
    );
    let spooled = r
        .router
        .metric("squeal_router_invalidation_keys_total{outcome=\"spooled\"}");
    assert!(spooled >= 200.0, "200 deletes spooled, saw {spooled}");
    b0.server.signal("CONT");
    wait_until(
        "replay to clear the stalled server",
        Duration::from_secs(20),
        || holders(&[b0], "item:199").map(|n| n == 0),
    )?;
    for k in &keys {
        assert_eq!(holders(&[b0], k)?, 0, "{k} replayed");
    }
    // Deletes buffered in the stopped server's socket may also have run on SIGCONT; the
    // replay counter shows the spool did its part regardless.
    wait_until("the replay counter", Duration::from_secs(10), || {
        Ok(r.router.metric("squeal_router_spool_replayed_total") >= 200.0)
    })?;
    Ok(())
}

/// The spool is on disk: a router killed while holding spooled deletes replays them after
/// it restarts.
#[test]
fn spooled_deletes_survive_a_router_crash() -> Result<()> {
    let mut r = region("")?;
    let b1_addr = r.b[1].addr();
    set_everywhere(&[&r.b[1]], "survivor")?;
    r.b[1].server.signal("STOP");
    let acks = send(r.inv_port, SECRET, &[batch(1, &["survivor"], &[])])?;
    assert_eq!(acks[0].status, AckStatus::Applied);
    r.router.restart()?; // SIGKILL, then start again with the same spool dir
    r.b[1].server.signal("CONT");
    wait_until(
        "the restarted router to replay its spool",
        Duration::from_secs(20),
        || {
            Ok(McClient::connect(&b1_addr)?.get("survivor")?.is_none()
                && r.router.metric("squeal_router_spool_replayed_total") >= 1.0)
        },
    )
}

/// A cluster being warmed gets tombstones instead of deletes: an `add` of a just-invalidated
/// key fails for the hold-off, then succeeds.
#[test]
fn deletes_in_a_warming_cluster_hold_off_adds() -> Result<()> {
    let r = region("warming = [\"b\"]\nholdoff_secs = 2")?;
    set_everywhere(&[&r.b[0], &r.b[1]], "cold:1")?;
    let acks = send(r.inv_port, SECRET, &[batch(1, &["cold:1"], &[])])?;
    assert_eq!(acks[0].status, AckStatus::Applied);
    let mut b0 = McClient::connect(&r.b[0].addr())?;
    assert!(!b0.add("cold:1", b"old value from warm", 0)?, "held off");
    std::thread::sleep(Duration::from_millis(2200));
    assert!(b0.add("cold:1", b"fresh", 0)?, "hold-off over");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_from_kafka_are_applied_then_committed() -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start()?;
    broker.create_topic("inv", 2)?;
    let r = region(&format!(
        "[invalidation.kafka]\nbrokers = \"{}\"\ntopic = \"inv\"\ngroup = \"region-a\"\n\
         librdkafka = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }}",
        broker.bootstrap()
    ))?;
    let mut client = McClient::connect(&r.router.addr())?;
    for i in 0..20 {
        client.set(&format!("k:{i}"), b"stale")?;
    }
    let producer: FutureProducer = broker.producer_config().create()?;
    let secret = Secret::new(SECRET.as_bytes());
    let mut forged = Vec::new();
    batch(0, &["k:0"], &[]).encode(&Secret::new(b"forged"), &mut forged)?;
    producer
        .send(
            FutureRecord::to("inv").key("x").payload(&forged),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    for i in 1..20u64 {
        let mut frame = Vec::new();
        batch(i, &[&format!("k:{i}")], &[]).encode(&secret, &mut frame)?;
        producer
            .send(
                FutureRecord::to("inv").key("x").payload(&frame),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<usize> = (1..20)
            .filter(|i| client.get(&format!("k:{i}")).unwrap().is_some())
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keys not invalidated via Kafka: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        client.get("k:0")?.is_some(),
        "a forged Kafka message deletes nothing"
    );
    Ok(())
}

/// Operators can see what a stopped router left in its spool and replay it by hand.
#[test]
fn operators_inspect_and_replay_the_spool_from_the_cli() -> Result<()> {
    let mut r = region("")?;
    let keys: Vec<String> = (0..30).map(|i| format!("cli:{i}")).collect();
    for k in &keys {
        set_everywhere(&[&r.b[0]], k)?;
    }
    r.b[0].server.signal("STOP");
    let refs: Vec<&str> = keys.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(1, &refs, &[])])?[0].status,
        AckStatus::Applied
    );
    r.router.server.kill();
    r.b[0].server.signal("CONT");

    let cli = |flag: &str| -> Result<(bool, String)> {
        let out = std::process::Command::new(harness::project::bin("squeal-router"))
            .arg(flag)
            .arg("--config")
            .arg(&r.router.config)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (ok, inspect) = cli("--spool-inspect")?;
    assert!(ok, "{inspect}");
    assert!(
        inspect.contains(&format!("{}  30 deletes", r.b[0].addr())),
        "{inspect}"
    );
    // The deletes written before the timeout may still sit in the stopped server's socket
    // and run on SIGCONT: the spool cannot know, so it replays them (deletes are idempotent).

    let (ok, replay) = cli("--spool-replay")?;
    assert!(ok, "{replay}");
    assert!(replay.contains("replayed 30 deletes"), "{replay}");
    for k in &keys {
        assert_eq!(holders(&[&r.b[0]], k)?, 0, "{k} deleted by the replay");
    }
    let (_, after) = cli("--spool-inspect")?;
    assert!(
        after.contains("0 server(s) with deletes waiting"),
        "{after}"
    );
    Ok(())
}
