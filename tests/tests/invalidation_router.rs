//! The router's receiving end of invalidations, against real memcached servers and a real
//! tansu broker: fan-out to every cluster, markers to the regional pool, authentication
//! (the handshake, and what unauthenticated or slow peers can make the router hold), the
//! durable spool across stalled servers and router crashes, the warm-up hold-off, the
//! flush frame (from squeal's own sinks), and the Kafka transport.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::memcached::toml_list;
use harness::router::Router;
use harness::{Broker, McClient, Memcached};
use marker::batch::{
    self, Ack, AckStatus, Batch, BatchKind, EntryKind, Refusal, Secret, Session, ACK_LEN,
    HELLO_LEN, REFUSAL_LEN,
};

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
        kind: BatchKind::Deletes,
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

/// Connects to the invalidation port. The router binds it just after its client port
/// (which is what the harness waits for), so a refusal right after start is retried.
fn connect_inv(port: u16) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
}

/// An authenticated connection to the invalidation port (handshake done).
struct Conn {
    stream: TcpStream,
    secret: Secret,
    session: Session,
}

impl Conn {
    fn open(port: u16, secret: &str) -> Result<Conn> {
        let mut stream = connect_inv(port)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let secret = Secret::new(secret.as_bytes());
        let session = batch::client_handshake(&mut stream, &secret)?;
        Ok(Conn {
            stream,
            secret,
            session,
        })
    }

    /// Sends batches pipelined and returns their acks.
    fn send(&mut self, batches: &[Batch]) -> Result<Vec<Ack>> {
        let ctx = self.session.context();
        let mut out = Vec::new();
        for b in batches {
            b.encode(&self.secret, &ctx, &mut out)?;
        }
        self.stream.write_all(&out)?;
        let mut acks = Vec::new();
        for _ in batches {
            let mut buf = [0u8; ACK_LEN];
            self.stream.read_exact(&mut buf).context("reading ack")?;
            acks.push(
                Ack::decode(&buf, &self.secret, &ctx)?
                    .context("whole ack")?
                    .0,
            );
        }
        Ok(acks)
    }
}

/// Sends batches on a new connection and returns their acks.
fn send(port: u16, secret: &str, batches: &[Batch]) -> Result<Vec<Ack>> {
    Conn::open(port, secret)?.send(batches)
}

/// Reads until the peer closes (or `timeout`): what it sent, and whether it closed.
fn read_to_close(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too (the router closed with our bytes unread).
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

/// The router process's resident memory (VmRSS), in KiB.
fn rss_kib(router: &Router) -> Result<u64> {
    let pid = router.server.pid().context("router running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS in /proc/pid/status")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
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

    // Wrong secret: the handshake is refused with a reason, nothing deleted.
    let err = match Conn::open(r.inv_port, "wrong") {
        Ok(_) => bail!("a squeal with the wrong secret was let in"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("secrets differ"), "{err}");
    // Garbage, and a v1-style batch frame sent without a handshake: the hello, a refusal,
    // and the connection closed.
    for (bytes, refusal) in [
        (b"delete victim\r\n".to_vec(), Refusal::Malformed),
        (
            {
                let mut f = batch::BATCH_MAGIC.to_vec();
                f.extend_from_slice(&100u32.to_be_bytes());
                f.extend_from_slice(&[0; 132]);
                f
            },
            Refusal::Malformed,
        ),
    ] {
        let mut raw = connect_inv(r.inv_port)?;
        raw.write_all(&bytes)?;
        let (got, closed) = read_to_close(&mut raw, Duration::from_secs(5));
        assert!(closed, "garbage closes the connection");
        assert_eq!(got.len(), HELLO_LEN + REFUSAL_LEN, "{got:?}");
        assert_eq!(got[HELLO_LEN..], refusal.encode());
    }
    // A handshake with a forged MAC.
    let mut raw = connect_inv(r.inv_port)?;
    let mut hello = [0u8; HELLO_LEN];
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    raw.read_exact(&mut hello)?;
    let mut forged = batch::AUTH_MAGIC.to_vec();
    forged.extend_from_slice(&[0x5a; batch::AUTH_LEN - 4]);
    raw.write_all(&forged)?;
    let (got, closed) = read_to_close(&mut raw, Duration::from_secs(5));
    assert!(closed && got == Refusal::Auth.encode(), "{got:?}");
    assert_eq!(client.get("victim")?.as_deref(), Some(&b"v"[..]));

    // The port still serves honest senders.
    let acks = send(r.inv_port, SECRET, &[batch(3, &["victim"], &[])])?;
    assert_eq!(acks[0].status, AckStatus::Applied);
    assert_eq!(client.get("victim")?, None);
    // Every rejection is counted, by reason.
    wait_until("rejections to be counted", Duration::from_secs(5), || {
        let m = |reason: &str| {
            r.router.metric(&format!(
                "squeal_router_invalidation_frames_rejected_total{{reason=\"{reason}\"}}"
            ))
        };
        Ok(m("auth") >= 2.0 && m("magic") >= 2.0)
    })
}

/// A squeal of protocol version 1 sends its frame at once, without a handshake: the router
/// refuses it with a reason (what a v1 squeal reads where it expects an ack fails its magic
/// check, so it errors rather than hangs), counts it, and logs what to do.
#[test]
fn an_old_format_frame_gets_a_clear_error() -> Result<()> {
    let r = region("")?;
    let mut v1 = b"SQB1".to_vec();
    v1.extend_from_slice(&40u32.to_be_bytes());
    v1.extend_from_slice(&[0; 40 + 32]);
    let mut raw = connect_inv(r.inv_port)?;
    raw.write_all(&v1)?;
    let (got, closed) = read_to_close(&mut raw, Duration::from_secs(5));
    assert!(closed, "the connection is closed, not left hanging");
    assert_eq!(got[..4], *batch::HELLO_MAGIC);
    assert_eq!(got[HELLO_LEN..], Refusal::Version.encode());
    // What the v1 squeal's ack decoder says about the hello.
    let v1_sees = Ack::decode(&got, &Secret::new(SECRET.as_bytes()), &[]).unwrap_err();
    assert!(v1_sees.to_string().contains("bad magic"), "{v1_sees}");
    wait_until(
        "the old version to be counted",
        Duration::from_secs(5),
        || {
            Ok(r.router
                .metric("squeal_router_invalidation_frames_rejected_total{reason=\"old_version\"}")
                >= 1.0)
        },
    )?;
    let log = std::fs::read_to_string(&r.router.server.log)?;
    assert!(
        log.contains("wire protocol version 1") && log.contains("upgrade squeal"),
        "the router's log says what to change:\n{log}"
    );
    Ok(())
}

/// The attack of issue 16: many unauthenticated connections each declaring a 4 MB frame,
/// old-format frames, slowloris handshakes that trickle a byte at a time, silent
/// connections, and an authenticated peer that stalls mid-frame. The router holds a few
/// hundred bytes for each, closes them after the timeouts, counts every one, and an honest
/// sender keeps getting its keys deleted meanwhile.
#[test]
fn unauthenticated_floods_hold_little_time_out_and_are_counted() -> Result<()> {
    let r =
        region("handshake_timeout_ms = 1500\nframe_timeout_ms = 1500\nmax_unauthenticated = 200")?;
    let mut client = McClient::connect(&r.router.addr())?;
    let mut honest = Conn::open(r.inv_port, SECRET)?;
    // Warm the router's allocations with real traffic first, then take the baseline.
    for i in 0..20 {
        client.set(&format!("warm:{i}"), b"v")?;
    }
    honest.send(&[batch(1, &["warm:0", "warm:1"], &[])])?;
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(&r.router)?;

    let port = r.inv_port;
    let frame_of = |magic: &[u8; 4]| {
        let mut frame = magic.to_vec();
        frame.extend_from_slice(&(4u32 << 20).to_be_bytes());
        frame.resize(8 + (4 << 20), 0xab);
        std::sync::Arc::new(frame)
    };
    let (v2, v1) = (frame_of(batch::BATCH_MAGIC), frame_of(b"SQB1"));
    let declare_4mb = |frame: std::sync::Arc<Vec<u8>>| {
        std::thread::spawn(move || -> Result<TcpStream> {
            let mut s = connect_inv(port)?;
            s.set_write_timeout(Some(Duration::from_secs(3)))?;
            // The router stops reading long before 4 MB: a failed or partial write is the
            // expected outcome, not an error.
            let _ = s.write_all(&frame);
            Ok(s)
        })
    };
    let mut floods = Vec::new();
    for _ in 0..30 {
        floods.push(declare_4mb(v2.clone()));
        floods.push(declare_4mb(v1.clone()));
    }
    // Slowloris: the auth magic and then a byte every 100 ms, never finishing in time.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || -> Result<(TcpStream, bool)> {
                let mut s = connect_inv(port)?;
                s.write_all(batch::AUTH_MAGIC)?;
                let started = Instant::now();
                let mut closed = false;
                while started.elapsed() < Duration::from_secs(4) {
                    if s.write_all(&[0x11]).is_err() {
                        closed = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok((s, closed))
            })
        })
        .collect();
    let mut silent: Vec<TcpStream> = (0..20)
        .map(|_| connect_inv(port))
        .collect::<std::io::Result<_>>()?;
    // An authenticated peer that sends a header and part of a body, then stalls.
    let mut stalled = Conn::open(r.inv_port, SECRET)?;
    let mut partial = Vec::new();
    batch(9, &["never"], &[]).encode(&stalled.secret, &stalled.session.context(), &mut partial)?;
    stalled.stream.write_all(&partial[..partial.len() - 10])?;

    // Meanwhile the honest sender, old connection and new ones alike, keeps deleting.
    std::thread::sleep(Duration::from_millis(300));
    let mut peak = rss_kib(&r.router)?;
    for i in 2..20u64 {
        let key = format!("warm:{i}");
        let acks = if i % 2 == 0 {
            honest.send(&[batch(i, &[&key], &[])])?
        } else {
            send(r.inv_port, SECRET, &[batch(i, &[&key], &[])])?
        };
        assert_eq!(acks[0].status, AckStatus::Applied);
        assert_eq!(client.get(&key)?, None, "{key} deleted during the flood");
        peak = peak.max(rss_kib(&r.router)?);
    }
    let mut flooders = Vec::new();
    for f in floods {
        flooders.push(f.join().expect("flood thread")?);
    }
    for (s, closed) in slow
        .into_iter()
        .map(|t| t.join().expect("slow thread"))
        .collect::<Result<Vec<_>>>()?
    {
        let mut s = s;
        assert!(
            closed || read_to_close(&mut s, Duration::from_secs(3)).1,
            "slowloris closed"
        );
    }
    peak = peak.max(rss_kib(&r.router)?);
    for s in silent.iter_mut() {
        let (got, closed) = read_to_close(s, Duration::from_secs(5));
        assert!(
            closed,
            "a silent connection is closed after the handshake timeout"
        );
        assert_eq!(got.get(HELLO_LEN..), Some(&Refusal::Timeout.encode()[..]));
    }
    for s in flooders.iter_mut() {
        assert!(
            read_to_close(s, Duration::from_secs(5)).1,
            "a flooder is closed"
        );
    }
    let (_, closed) = read_to_close(&mut stalled.stream, Duration::from_secs(5));
    assert!(
        closed,
        "a frame stalled mid-way is closed after the frame timeout"
    );
    let grew = peak.saturating_sub(before);
    eprintln!(
        "router VmRSS before the flood {before} KiB, peak during it {peak} KiB (+{grew} KiB) \
         with 60 x 4 MB declared frames, 20 slowloris and 20 silent connections"
    );
    assert!(
        grew < 4 * 1024,
        "the flood raised the router's RSS by {grew} KiB"
    );
    let m = |reason: &str| {
        r.router.metric(&format!(
            "squeal_router_invalidation_frames_rejected_total{{reason=\"{reason}\"}}"
        ))
    };
    wait_until(
        "every rejection to be counted",
        Duration::from_secs(5),
        || {
            Ok(m("magic") >= 30.0
                && m("old_version") >= 30.0
                && m("handshake_timeout") >= 40.0
                && m("frame_timeout") >= 1.0)
        },
    )
    .with_context(|| {
        format!(
            "magic {} old_version {} handshake_timeout {} frame_timeout {}",
            m("magic"),
            m("old_version"),
            m("handshake_timeout"),
            m("frame_timeout")
        )
    })?;
    // Nothing of the flood stays behind, and the port still serves.
    assert_eq!(
        r.router
            .metric("squeal_router_invalidation_unauthenticated_connections"),
        0.0
    );
    assert_eq!(
        honest.send(&[batch(30, &["warm:0"], &[])])?[0].status,
        AckStatus::Applied
    );
    Ok(())
}

/// Past `max_unauthenticated` connections in their handshake, new ones are refused at once
/// (and counted); an established squeal connection carries on regardless.
#[test]
fn connections_past_the_unauthenticated_cap_are_refused() -> Result<()> {
    let r = region("max_unauthenticated = 8\nhandshake_timeout_ms = 3000")?;
    let mut client = McClient::connect(&r.router.addr())?;
    let mut honest = Conn::open(r.inv_port, SECRET)?;
    let mut held: Vec<TcpStream> = (0..20)
        .map(|_| connect_inv(r.inv_port))
        .collect::<std::io::Result<_>>()?;
    let mut refused = 0;
    for s in held.iter_mut() {
        let (got, closed) = read_to_close(s, Duration::from_millis(500));
        if closed && got == Refusal::Busy.encode() {
            refused += 1;
        }
    }
    assert_eq!(refused, 12, "20 connections, 8 allowed in their handshake");
    client.set("capped", b"v")?;
    assert_eq!(
        honest.send(&[batch(1, &["capped"], &[])])?[0].status,
        AckStatus::Applied
    );
    assert_eq!(client.get("capped")?, None);
    assert!(
        r.router.metric(
            "squeal_router_invalidation_frames_rejected_total{reason=\"unauthenticated_limit\"}"
        ) >= 12.0
    );
    // Once the held ones time out, new squeals get in again.
    drop(held);
    wait_until(
        "a new connection to be let in",
        Duration::from_secs(10),
        || Ok(Conn::open(r.inv_port, SECRET).is_ok()),
    )
}

/// A tokio runtime and a squeal router sink to `port`, as squeal builds it.
fn squeal_sink(port: u16) -> (tokio::runtime::Runtime, squeal::sink::router::RouterSink) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = {
        let _guard = rt.enter();
        squeal::sink::router::RouterSink::new(
            vec![format!("127.0.0.1:{port}")],
            "flush-test".into(),
            Secret::new(SECRET.as_bytes()),
            marker::remote::MarkerPrefix(Some("r_".into())),
            Duration::from_secs(5),
            4,
            None,
        )
    };
    (rt, sink)
}

#[test]
fn squeal_flush_empties_every_cluster_and_marker_pool() -> Result<()> {
    use squeal::sink::Sink;
    let r = region("")?;
    let all: Vec<&Memcached> = r.a.iter().chain(&r.b).chain([&r.regional]).collect();
    let keys: Vec<String> = (0..20).map(|i| format!("flush:{i}")).collect();
    for k in &keys {
        set_everywhere(&all, k)?;
    }
    let (rt, sink) = squeal_sink(r.inv_port);
    rt.block_on(sink.flush_all())
        .map_err(|e| anyhow::anyhow!("flush_all: {e}"))?;
    for k in &keys {
        assert_eq!(holders(&all, k)?, 0, "{k} flushed from every server");
    }
    assert_eq!(
        r.router
            .metric("squeal_router_invalidation_flush_servers_total{outcome=\"flushed\"}"),
        5.0,
        "a, b (two servers each) and the regional pool"
    );
    Ok(())
}

/// A flush for a stopped server is spooled and replayed in order with that server's spooled
/// deletes. The cluster is warming, so a delete leaves a tombstone, which shows the order:
/// the tombstone of a delete spooled before the flush is gone (superseded), that of a
/// delete spooled after it is still there.
#[test]
fn a_flush_for_a_stopped_server_is_spooled_in_order_with_its_deletes() -> Result<()> {
    use squeal::sink::Sink;
    let r = region("warming = [\"b\"]\nholdoff_secs = 120")?;
    let b0 = &r.b[0];
    set_everywhere(&[b0, &r.b[1], &r.regional], "other")?;
    b0.server.signal("STOP");
    // The first delete times out on the stopped server (its bytes may still sit in the
    // socket); from then on b0 has spooled deletes, so everything for it goes to the spool.
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(1, &["first"], &[])])?[0].status,
        AckStatus::Applied
    );
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(2, &["before"], &[])])?[0].status,
        AckStatus::Applied
    );
    let (rt, sink) = squeal_sink(r.inv_port);
    rt.block_on(sink.flush_all())
        .map_err(|e| anyhow::anyhow!("flush_all: {e}"))?;
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(3, &["after"], &[])])?[0].status,
        AckStatus::Applied
    );
    assert_eq!(
        r.router
            .metric("squeal_router_invalidation_flush_servers_total{outcome=\"spooled\"}"),
        1.0
    );
    assert_eq!(
        holders(&[&r.b[1], &r.regional], "other")?,
        0,
        "the running servers are flushed"
    );
    b0.server.signal("CONT");
    wait_until(
        "the spooled flush to replay",
        Duration::from_secs(20),
        || {
            Ok(r.router
                .metric("squeal_router_spool_replayed_flushes_total")
                >= 1.0
                && r.router.metric("squeal_router_spool_pending_keys") == 0.0)
        },
    )?;
    let mut c = McClient::connect(&b0.addr())?;
    assert_eq!(c.get("other")?, None, "flushed on its return");
    assert!(
        c.add("before", b"x", 0)?,
        "the delete spooled before the flush is superseded"
    );
    assert!(
        !c.add("after", b"x", 0)?,
        "the delete spooled after the flush is applied after it"
    );
    Ok(())
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
    // "survivor" and 299 more keys: pool b is replicated, so all are spooled for b[1].
    let mut keys = vec!["survivor".to_string()];
    keys.extend((0..299).map(|i| format!("item:{i}")));
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let acks = send(r.inv_port, SECRET, &[batch(1, &refs, &[])])?;
    assert_eq!(acks[0].status, AckStatus::Applied);
    r.router.restart()?; // SIGKILL, then start again with the same spool dir
    r.b[1].server.signal("CONT");
    wait_until(
        "the restarted router to replay its spool",
        Duration::from_secs(20),
        || {
            Ok(McClient::connect(&b1_addr)?.get("survivor")?.is_none()
                && r.router.metric("squeal_router_spool_replayed_total") >= 300.0)
        },
    )?;
    // Every replayed delete is counted, also those replayed before the first scrape.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(r.router.metric("squeal_router_spool_replayed_total"), 300.0);
    Ok(())
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
    batch(0, &["k:0"], &[]).encode(&Secret::new(b"forged"), batch::KAFKA_CONTEXT, &mut forged)?;
    producer
        .send(
            FutureRecord::to("inv").key("x").payload(&forged),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    for i in 1..20u64 {
        let mut frame = Vec::new();
        batch(i, &[&format!("k:{i}")], &[]).encode(&secret, batch::KAFKA_CONTEXT, &mut frame)?;
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

    // squeal's Kafka sink flushes every cluster and marker pool: one flush message per
    // partition, applied once by this router (the one consumer of both partitions).
    use squeal::sink::Sink;
    let all: Vec<&Memcached> = r.a.iter().chain(&r.b).chain([&r.regional]).collect();
    set_everywhere(&all, "kflush")?;
    let sink = squeal::sink::kafka::KafkaSink::new(
        &broker.bootstrap(),
        "inv".into(),
        &Default::default(),
        "kafka-flush".into(),
        secret,
        marker::remote::MarkerPrefix(None),
        Duration::from_secs(10),
    )?;
    sink.flush_all()
        .await
        .map_err(|e| anyhow::anyhow!("flush_all: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while holders(&all, "kflush")? + holders(&all, "k:0")? > 0 {
        assert!(
            Instant::now() < deadline,
            "the Kafka flush did not empty the pools"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        r.router
            .metric("squeal_router_invalidation_flushes_total{transport=\"kafka\"}"),
        1.0,
        "the copy on the second partition is recognised"
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

/// A killed server gets its flush from the spool when it comes back, followed by the
/// deletes spooled after the flush (tombstones again, in this warming cluster).
#[test]
fn a_flush_for_a_killed_server_is_applied_when_it_returns() -> Result<()> {
    use squeal::sink::Sink;
    let mut r = region("warming = [\"b\"]\nholdoff_secs = 120")?;
    r.b[1].kill();
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(1, &["before"], &[])])?[0].status,
        AckStatus::Applied
    );
    let (rt, sink) = squeal_sink(r.inv_port);
    rt.block_on(sink.flush_all())
        .map_err(|e| anyhow::anyhow!("flush_all: {e}"))?;
    assert_eq!(
        send(r.inv_port, SECRET, &[batch(2, &["after"], &[])])?[0].status,
        AckStatus::Applied
    );
    assert_eq!(
        r.router
            .metric("squeal_router_invalidation_flush_servers_total{outcome=\"spooled\"}"),
        1.0,
        "only the killed server's flush is spooled"
    );
    r.b[1].restart()?;
    wait_until(
        "the spooled flush to replay",
        Duration::from_secs(20),
        || {
            Ok(r.router
                .metric("squeal_router_spool_replayed_flushes_total")
                >= 1.0
                && r.router.metric("squeal_router_spool_pending_keys") == 0.0)
        },
    )?;
    let mut c = McClient::connect(&r.b[1].addr())?;
    assert!(c.add("before", b"x", 0)?, "superseded by the flush");
    assert!(!c.add("after", b"x", 0)?, "applied after the flush");
    Ok(())
}
