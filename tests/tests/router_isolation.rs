//! Cross-client isolation on shared backend connections (issue 16): a reply reaches a
//! client only if it answers that client's request, whatever other clients send.
//!
//! `hostile_traffic_never_reaches_well_behaved_clients`: 8 well-behaved clients
//! ([`harness::checked::Checker`]) run get-and-verify through the router, every reply
//! checked against exactly what it must be (their keys are theirs alone, values encode key
//! and version), while 3 hostile clients send, one phase per group, the corpus of
//! [`harness::hostile::corpus`] (every case of issue 16: `ms` with 17 `O` flags followed by
//! a value that is a command, `incr ... noreply\0`, `mg k v q q`, 150-key and 17.5 KB
//! `gat`s, a 400 KB `get`, tab/0x01/0x7f keys, `version foo`, `quit foo`, `+1` numbers,
//! oversized values and huge lengths, unterminated lines, NULs, base64 keys, meta flags of
//! every kind, `ms` in every mode over the item size), then a seeded mutation fuzz of valid
//! commands. Asserts 0 wrong, 0 lost (each request answered within 3 s) and 0 error
//! replies for the well-behaved clients, that a final read of every key finds what its
//! owner wrote, and that no backend connection was reset. Failures are reported per phase
//! by the phase a request was sent in, each failure also naming the phase it was found in
//! when that differs (damage can show up to the router's `read_ms` later); a phase
//! lasts until the well-behaved clients made 200 requests in it, so none goes untested.
//!
//! Duration: `SQUEAL_ISOLATION_SECONDS` (default 8: a CI run); set it to e.g. 120 for a
//! soak. The fuzz seed is printed; `SQUEAL_ISOLATION_SEED` replays one.
//!
//! `ordinary_clients_with_big_gats_reset_no_backend`: 6 well-behaved clients each doing 40
//! pipelined sets then one `gat`/`gats`/`get` over 100 to 2,000 of their keys (lines up to
//! about 50 KB, well over memcached's 2,048-byte rule for `gat`), every reply checked, for
//! `SQUEAL_LOAD_SECONDS` (default 4): 0 failed requests, 0 backend resets, 0 router-made
//! errors.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use harness::checked::{run_checkers, Checker, Profile, Tally};
use harness::hostile::{corpus, fuzz_case, send_and_drop, Case};
use harness::router::{BackendCounters, Router};
use harness::Memcached;

fn seconds(var: &str, default: f64) -> Duration {
    let s = std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0 && *s <= 24.0 * 3600.0)
        .unwrap_or(default);
    Duration::from_secs_f64(s)
}

fn seed() -> u64 {
    std::env::var("SQUEAL_ISOLATION_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// Counters after the router had time to reconnect whatever was reset.
fn counters_after(router: &Router) -> BackendCounters {
    std::thread::sleep(Duration::from_millis(1500));
    router.backend_counters().expect("router stats at the end")
}

fn print_counters(router: &Router, before: &BackendCounters, after: &BackendCounters) {
    println!(
        "router backend counters: resets={} (connects {} -> {}, connections up {} -> {}), \
         backend_errors {} -> {}, server errors {} -> {}, timeouts {} -> {}, client_errors {} -> {}",
        after.resets_since(before),
        before.connects,
        after.connects,
        before.connections_up,
        after.connections_up,
        before.backend_errors,
        after.backend_errors,
        before.server_errors,
        after.server_errors,
        before.timeouts,
        after.timeouts,
        before.client_errors,
        after.client_errors
    );
    if after.reset_metrics.is_empty() {
        println!("router metrics: no sample named *reset* or *desync* exported");
    }
    for m in &after.reset_metrics {
        println!("router metric: {m}");
    }
    for (reason, n) in router.backend_down_reasons() {
        println!("router log: backend connection down {n}x, reason={reason}");
    }
}

/// How long a well-behaved request may wait for its reply: the router's default `read_ms`
/// (1 s) plus margin for a debug build on a busy machine.
const REPLY_DEADLINE: Duration = Duration::from_secs(3);

/// Well-behaved requests each phase must see before it ends.
const MIN_REQUESTS_PER_PHASE: u64 = 200;

/// One stretch of the run: which hostile traffic is sent during it.
struct Phase {
    name: String,
    cases: Vec<Case>,
    fuzz: bool,
    length: Duration,
    sent: AtomicU64,
}

#[test]
fn hostile_traffic_never_reaches_well_behaved_clients() {
    let servers = Memcached::start_many(2).unwrap();
    let addrs: Vec<String> = servers.iter().map(|m| m.addr()).collect();
    let item_size = 1 << 20;
    let router = Router::start(
        &addrs,
        "",
        &format!("[limits]\nmax_item_size = {item_size}\n"),
    )
    .unwrap();
    let total = seconds("SQUEAL_ISOLATION_SECONDS", 8.0);
    isolation_run(&router.addr(), Some(&router), item_size, total);
}

/// The control: the same run straight against one memcached, where connections share
/// nothing. It must find nothing wrong, or the checkers or the corpus are at fault (e.g. a
/// hostile case that writes a well-behaved key), not the router.
#[test]
fn the_isolation_run_finds_nothing_against_memcached_itself() {
    let server = Memcached::start().unwrap();
    let total = seconds("SQUEAL_ISOLATION_SECONDS", 8.0) / 2;
    isolation_run(&server.addr(), None, 1 << 20, total);
}

/// Well-behaved clients against `addr` while hostile ones send the corpus then the fuzz
/// for about `total`; panics with what went wrong. With a `router`, its backend connections
/// must not have been reset either.
fn isolation_run(addr: &str, router: Option<&Router>, item_size: usize, total: Duration) {
    let addr = addr.to_string();
    let seed = seed();
    println!("isolation run against {addr}: {total:?}, fuzz seed {seed} (SQUEAL_ISOLATION_SEED={seed} replays it)");

    let all = corpus(item_size, "iso:0:00005");
    let mut groups: Vec<&'static str> = Vec::new();
    for c in &all {
        if !groups.contains(&c.group) {
            groups.push(c.group);
        }
    }
    let per_group = (total / 2) / groups.len() as u32;
    let mut phases = vec![Phase {
        name: "warm-up (no hostile traffic)".into(),
        cases: Vec::new(),
        fuzz: false,
        length: Duration::from_millis(500),
        sent: AtomicU64::new(0),
    }];
    for g in &groups {
        phases.push(Phase {
            name: format!("corpus: {g}"),
            cases: all.iter().filter(|c| c.group == *g).cloned().collect(),
            fuzz: false,
            length: per_group.max(Duration::from_millis(150)),
            sent: AtomicU64::new(0),
        });
    }
    phases.push(Phase {
        name: "mutation fuzz".into(),
        cases: Vec::new(),
        fuzz: true,
        length: total / 2,
        sent: AtomicU64::new(0),
    });
    let tallies: Vec<Tally> = phases.iter().map(|_| Tally::default()).collect();
    let final_tally = Tally::default();
    let phase = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let checkers: Vec<Checker> = (0..8)
        .map(|i| {
            let mut c = Checker::new(i, &addr, "iso", Profile::Mixed, seed);
            c.deadline = REPLY_DEADLINE;
            c
        })
        .collect();
    let before = router.map(|r| r.backend_counters().unwrap());
    let started = Instant::now();

    std::thread::scope(|s| {
        s.spawn(|| {
            run_checkers(
                checkers,
                &tallies,
                &phase,
                &|| done.load(Ordering::Relaxed),
                &final_tally,
            )
        });
        for h in 0..3u64 {
            let (phases, phase, done, addr) = (&phases, &phase, &done, &addr);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(h));
                let mut turn = h as usize;
                for _ in 0..10_000_000u64 {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    let p = &phases[phase.load(Ordering::Relaxed).min(phases.len() - 1)];
                    let bytes = if p.fuzz {
                        fuzz_case(&mut rng)
                    } else if p.cases.is_empty() {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    } else {
                        turn += 1;
                        p.cases[turn % p.cases.len()].bytes.clone()
                    };
                    send_and_drop(addr, &bytes, Duration::from_millis(300));
                    p.sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // A phase lasts its length, until each of its cases was sent and until the
        // well-behaved clients made enough requests in it (they may be stuck waiting for
        // lost replies); at most 4 times its length plus 10 s.
        for (i, p) in phases.iter().enumerate() {
            phase.store(i, Ordering::Relaxed);
            let start = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let elapsed = start.elapsed();
                let every_case_sent = p.sent.load(Ordering::Relaxed) >= p.cases.len() as u64;
                if elapsed >= p.length
                    && every_case_sent
                    && tallies[i].requests() >= MIN_REQUESTS_PER_PHASE
                {
                    break;
                }
                if elapsed >= p.length * 4 + Duration::from_secs(10) {
                    break;
                }
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let after = router.map(counters_after);

    println!("ran {elapsed:?}");
    let mut failures = Vec::new();
    for (i, (p, t)) in phases.iter().zip(&tallies).enumerate() {
        println!(
            "phase {i:>2} {:<30} hostile inputs sent {:>6}  well-behaved requests: {}",
            p.name,
            p.sent.load(Ordering::Relaxed),
            t.summary()
        );
        if t.failures() > 0 {
            failures.push(format!(
                "requests sent during phase {i} {} ({}):\n    {}",
                p.name,
                t.summary(),
                t.samples().join("\n    ")
            ));
        }
    }
    println!("final read of every key: {}", final_tally.summary());
    if final_tally.failures() > 0 {
        failures.push(format!(
            "final read of every key ({}):\n    {}",
            final_tally.summary(),
            final_tally.samples().join("\n    ")
        ));
    }
    let requests: u64 = tallies.iter().map(Tally::requests).sum();
    assert!(
        requests > 100,
        "the well-behaved clients barely ran: {requests} requests"
    );
    if let (Some(router), Some(before), Some(after)) = (router, &before, &after) {
        print_counters(router, before, after);
        let resets = after.resets_since(before);
        if resets > 0 {
            failures.push(format!(
                "{resets} backend connection reset(s): hostile traffic must never reset a connection others share"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "well-behaved clients were harmed (seed {seed}):\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn ordinary_clients_with_big_gats_reset_no_backend() {
    let servers = Memcached::start_many(2).unwrap();
    let addrs: Vec<String> = servers.iter().map(|m| m.addr()).collect();
    let router = Router::start(&addrs, "", "").unwrap();
    let total = seconds("SQUEAL_LOAD_SECONDS", 4.0);
    let seed = seed();
    let checkers: Vec<Checker> = (0..6)
        .map(|i| Checker::new(i, &router.addr(), "ldg", Profile::BigMultiGet, seed))
        .collect();
    let tally = [Tally::default()];
    let final_tally = Tally::default();
    let phase = AtomicUsize::new(0);
    let before = router.backend_counters().unwrap();
    let end = Instant::now() + total;
    run_checkers(
        checkers,
        &tally,
        &phase,
        &|| Instant::now() >= end,
        &final_tally,
    );
    let after = counters_after(&router);
    println!(
        "{total:?} of 40 sets + one 100..2000-key gat/gats/get per round, 6 clients: {}; final read: {}",
        tally[0].summary(),
        final_tally.summary()
    );
    print_counters(&router, &before, &after);
    assert!(
        tally[0].requests() > 100,
        "barely ran: {}",
        tally[0].summary()
    );
    let mut problems = Vec::new();
    for t in [&tally[0], &final_tally] {
        if t.failures() > 0 {
            problems.push(format!(
                "{}:\n    {}",
                t.summary(),
                t.samples().join("\n    ")
            ));
        }
    }
    let resets = after.resets_since(&before);
    if resets > 0 {
        problems.push(format!(
            "{resets} backend connection reset(s) under ordinary load"
        ));
    }
    let made = after.backend_errors - before.backend_errors;
    if made > 0 {
        problems.push(format!(
            "{made} requests failed by the router (backend_errors)"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n  "));
}
