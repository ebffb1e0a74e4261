//! The router's memory is bounded per client and in total (issue 16): reply bytes held for
//! a client that does not read count against `[limits] max_client_output`, and all of them
//! together against the process-wide `[limits] max_buffered_output`; memory goes back
//! after such clients leave.
//!
//! Each test configures both limits and computes its bound from them:
//! `rss_before + min(clients × 2 × max_client_output, 2 × max_buffered_output) + SLACK`
//! (twice the limits: the allocator may hold a freed buffer while the next one fills;
//! `SLACK` covers per-connection read buffers, backend read buffers holding one large reply
//! each, and allocator fragmentation). The peak resident size (`VmRSS`) is sampled while
//! the clients sit on their pipelines; after they disconnect it must fall back to within
//! `FALLBACK` of where it started. Measured numbers are printed.
//!
//! - `clients_that_never_read_big_values_keep_rss_bounded`: 8 clients each pipeline 2,000
//!   `get` of a 1 MB value (2 GB of replies each) and never read.
//! - `one_client_pipelining_100k_gets_keeps_rss_bounded`: one client pipelines 100,000
//!   `get` of a 512 KB value (51 GB of replies) and never reads.
//!
//! Meanwhile another client must be served normally.

use std::time::{Duration, Instant};

use harness::process::rss_kb;
use harness::router::Router;
use harness::wire::Wire;
use harness::{McClient, Memcached};

const MIB: u64 = 1 << 20;
/// Per-client limit the tests configure.
const MAX_CLIENT_OUTPUT: u64 = 4 * MIB;
/// Process-wide limit the tests configure.
const MAX_BUFFERED_OUTPUT: u64 = 32 * MIB;
/// Buffers that are not reply bytes held for clients, and allocator slack.
const SLACK: u64 = 64 * MIB;
/// How far above its starting point the router may stay once the clients are gone.
const FALLBACK: u64 = 32 * MIB;

fn start(value_len: usize) -> (Memcached, Router) {
    let mc = Memcached::start_with(&["-I", "2m"]).unwrap();
    let router = Router::start(
        &[mc.addr()],
        "",
        &format!(
            "[limits]\nmax_item_size = {}\nmax_client_output = {MAX_CLIENT_OUTPUT}\nmax_buffered_output = {MAX_BUFFERED_OUTPUT}\n",
            2 * MIB
        ),
    )
    .unwrap_or_else(|e| {
        panic!("the router refused the memory limits this test configures ([limits] max_client_output and max_buffered_output): {e:#}")
    });
    let mut c = McClient::connect(&router.addr()).unwrap();
    c.set("big", &vec![b'b'; value_len]).unwrap();
    (mc, router)
}

fn rss_bytes(router: &Router) -> u64 {
    rss_kb(router.server.pid().expect("router running")).expect("router alive") * 1024
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

/// Opens `clients` connections, each writing `gets` pipelined `get big` and never reading;
/// samples the router's RSS for `hold` while a separate client checks it is still served;
/// returns the peak and closes them.
fn hold_unread(router: &Router, clients: usize, gets: usize, hold: Duration) -> u64 {
    let req = b"get big\r\n".repeat(gets);
    let mut conns = Vec::new();
    for _ in 0..clients {
        let mut w = Wire::connect(&router.addr(), Duration::from_secs(2)).unwrap();
        // The router stops reading a client it holds too much for: the write then times
        // out, which is the point.
        let _ = w.send(&req);
        conns.push(w);
    }
    let mut peak = rss_bytes(router);
    let mut other = McClient::connect(&router.addr()).unwrap();
    let end = Instant::now() + hold;
    let mut i = 0;
    while Instant::now() < end {
        peak = peak.max(rss_bytes(router));
        let key = format!("other:{i}");
        other.set(&key, b"x").unwrap_or_else(|e| {
            panic!("a reading client was not served while others sat on their replies: {e:#}")
        });
        assert_eq!(other.get(&key).unwrap().as_deref(), Some(&b"x"[..]));
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    peak = peak.max(rss_bytes(router));
    drop(conns);
    peak
}

/// Waits up to 15 s for the router's RSS to come back to `target`; returns the last value.
fn settle(router: &Router, target: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let now = rss_bytes(router);
        if now <= target || Instant::now() >= end {
            return now;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check(router: &Router, what: &str, clients: u64, before: u64, peak: u64) {
    let held = (clients * 2 * MAX_CLIENT_OUTPUT).min(2 * MAX_BUFFERED_OUTPUT);
    let bound = before + held + SLACK;
    let after = settle(router, before + FALLBACK);
    println!(
        "{what}: RSS before {}, peak {} (bound {} = before + min({clients} x 2 x max_client_output {}, 2 x max_buffered_output {}) + slack {}), after disconnect {} (must fall to {})",
        mib(before),
        mib(peak),
        mib(bound),
        mib(MAX_CLIENT_OUTPUT),
        mib(MAX_BUFFERED_OUTPUT),
        mib(SLACK),
        mib(after),
        mib(before + FALLBACK)
    );
    assert!(
        peak <= bound,
        "{what}: the router's RSS peaked at {} while clients did not read, over the bound of {} (started at {})",
        mib(peak),
        mib(bound),
        mib(before)
    );
    assert!(
        after <= before + FALLBACK,
        "{what}: 15 s after the clients disconnected the router still used {} (started at {}, peak {})",
        mib(after),
        mib(before),
        mib(peak)
    );
}

#[test]
fn clients_that_never_read_big_values_keep_rss_bounded() {
    let (_mc, router) = start(1_000_000);
    let before = rss_bytes(&router);
    let peak = hold_unread(&router, 8, 2000, Duration::from_secs(4));
    check(
        &router,
        "8 clients x 2,000 unread gets of 1 MB",
        8,
        before,
        peak,
    );
}

#[test]
fn one_client_pipelining_100k_gets_keeps_rss_bounded() {
    let (_mc, router) = start(512 * 1024);
    let before = rss_bytes(&router);
    let peak = hold_unread(&router, 1, 100_000, Duration::from_secs(4));
    check(
        &router,
        "1 client x 100,000 unread gets of 512 KB",
        1,
        before,
        peak,
    );
}
