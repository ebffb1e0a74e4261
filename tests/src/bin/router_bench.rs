//! Router benchmark: memcached direct vs squeal-router vs twemproxy, in one run, over the
//! same memcached server, in two load shapes:
//!
//! 1. memcaslap (pipelined, many requests in flight per connection): ops/s and mean latency.
//! 2. closed loop, as memtier_benchmark's default: `--conns` connections, each with exactly
//!    one request outstanding, set:get 1:10, from a few load threads: ops/s, p50 / p99 /
//!    p99.9 latency (hdrhistogram) and each proxy's **CPU microseconds per request**
//!    (utime+stime from /proc over the run). This shape leaves a proxy nothing to batch,
//!    so it shows the per-request cost the pipelined shape hides.
//!
//! Both print the ratios router/twemproxy and router/direct.
//!
//! Run with `bash tests/bench/router_bench.sh` (builds in release first). Options:
//! `--seconds N` per measurement (5), `--rounds N` (3, median reported), `--conns N` (50),
//! `--sizes 32,4096` value sizes, `--threads N` memcaslap threads (2), `--router-workers N` the router's threads (2).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use harness::router::Router;
use harness::twemproxy::{Twemproxy, TwemproxyPool};
use harness::Memcached;

struct Opts {
    seconds: u64,
    rounds: usize,
    conns: usize,
    threads: usize,
    router_workers: usize,
    sizes: Vec<usize>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        seconds: 5,
        rounds: 3,
        conns: 50,
        threads: 2,
        router_workers: 2,
        sizes: vec![32, 4096],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).context("option needs a value")?;
        match args[i].as_str() {
            "--seconds" => o.seconds = v.parse()?,
            "--rounds" => o.rounds = v.parse()?,
            "--conns" => o.conns = v.parse()?,
            "--threads" => o.threads = v.parse()?,
            "--router-workers" => o.router_workers = v.parse()?,
            "--sizes" => o.sizes = v.split(',').map(|s| s.parse()).collect::<Result<_, _>>()?,
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    Ok(o)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    ops: f64,
    avg_us: f64,
}

/// One memcaslap run: 1:10 set:get, fixed value size.
fn memcaslap(addr: &str, cfg: &std::path::Path, o: &Opts) -> Result<Sample> {
    let out = Command::new("memcaslap")
        .args(["-s", addr])
        .args(["-T", &o.threads.to_string()])
        .args(["-c", &o.conns.to_string()])
        .args(["-t", &format!("{}s", o.seconds)])
        .args(["-S", &format!("{}s", o.seconds)])
        .arg("-F")
        .arg(cfg)
        .output()
        .context("running memcaslap (apt-get install libmemcached-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .rev()
        .find_map(|l| l.split("TPS: ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse::<f64>().ok())
        .with_context(|| format!("no TPS in memcaslap output:\n{text}"))?;
    let total = text
        .rfind("Total Statistics")
        .map(|i| &text[i..])
        .unwrap_or("");
    let avg = total
        .lines()
        .find_map(|l| l.trim().strip_prefix("Avg:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    Ok(Sample {
        ops: tps,
        avg_us: avg,
    })
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|a, b| a.ops.total_cmp(&b.ops));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let o = opts()?;
    let mc = Memcached::start()?;
    let proxy = Twemproxy::start(&TwemproxyPool::ketama(&[mc.addr()]))?;
    let router = Router::start_workers(&[mc.addr()], o.router_workers, "", "")?;
    let dir = tempfile::tempdir()?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "router benchmark: memcaslap -T {} -c {} -t {}s, set:get 1:10, {} rounds (median), {} CPUs",
        o.threads, o.conns, o.seconds, o.rounds, cpus
    );
    println!(
        "memcached {} | squeal-router {} | twemproxy {}",
        mc.addr(),
        router.addr(),
        proxy.addr()
    );
    let targets = [
        ("direct", mc.addr()),
        ("router", router.addr()),
        ("twemproxy", proxy.addr()),
    ];
    let mut ok = true;
    for &size in &o.sizes {
        let cfg = dir.path().join(format!("memcaslap-{size}.cfg"));
        std::fs::write(
            &cfg,
            format!("key\n32 32 1\nvalue\n{size} {size} 1\ncmd\n0 0.0909\n1 0.9091\n"),
        )?;
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); targets.len()];
        for _ in 0..o.rounds {
            // Interleaved, so drift (thermal, neighbours) hits all targets alike.
            for (i, (_, addr)) in targets.iter().enumerate() {
                samples[i].push(memcaslap(addr, &cfg, &o)?);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        let m: Vec<Sample> = samples.into_iter().map(median).collect();
        println!();
        println!("value {size} bytes");
        println!(
            "  {:<10} {:>12} {:>14}",
            "target", "ops/s", "avg latency us"
        );
        for (i, (name, _)) in targets.iter().enumerate() {
            println!("  {:<10} {:>12.0} {:>14.0}", name, m[i].ops, m[i].avg_us);
        }
        let vs_proxy = m[1].ops / m[2].ops;
        let vs_direct = m[1].ops / m[0].ops;
        println!(
            "  router/twemproxy throughput {vs_proxy:.2}x, latency {:.2}x",
            m[1].avg_us / m[2].avg_us
        );
        println!(
            "  router/direct    throughput {vs_direct:.2}x, latency {:.2}x",
            m[1].avg_us / m[0].avg_us
        );
        ok &= vs_proxy >= 1.0;
    }
    let pids = [mc.server.pid(), router.server.pid(), proxy.server.pid()];
    for &size in &o.sizes {
        closed_loop_report(&targets, &pids, size, &o)?;
    }
    if !ok {
        println!("\nrouter slower than twemproxy in this run");
    }
    Ok(())
}

/// utime + stime of a process, in microseconds (`/proc/<pid>/stat`, clock ticks).
fn cpu_us(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc_sysconf_clk_tck() };
    Some(ticks * 1e6 / hz)
}

extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// `sysconf(_SC_CLK_TCK)` (2 on Linux).
unsafe fn libc_sysconf_clk_tck() -> f64 {
    let v = sysconf(2);
    if v > 0 {
        v as f64
    } else {
        100.0
    }
}

struct Closed {
    ops: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu_per_req: Option<f64>,
    errors: u64,
}

/// One closed-loop run against `addr`: every connection sends one request and waits for
/// its reply, set:get 1:10 over 1,000 keys, for `o.seconds`.
fn closed_loop(addr: &str, pid: Option<u32>, size: usize, o: &Opts) -> Result<Closed> {
    let value = vec![b'v'; size];
    let hist = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu0 = cpu_us(pid);
    let started = Instant::now();
    let threads: Vec<_> = (0..o.conns)
        .map(|c| {
            let (addr, value, hist, stop, errors, done) = (
                addr.to_string(),
                value.clone(),
                hist.clone(),
                stop.clone(),
                errors.clone(),
                done.clone(),
            );
            std::thread::spawn(move || -> Result<()> {
                let mut s = TcpStream::connect(&addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut local = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut buf = vec![0u8; size + 256];
                let mut i: u64 = c as u64 * 7919;
                let mut req = Vec::with_capacity(size + 64);
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("bench:{:04}", i % 1000);
                    req.clear();
                    let is_set = i.is_multiple_of(11);
                    if is_set {
                        req.extend_from_slice(format!("set {key} 0 0 {size}\r\n").as_bytes());
                        req.extend_from_slice(&value);
                        req.extend_from_slice(b"\r\n");
                    } else {
                        req.extend_from_slice(format!("get {key}\r\n").as_bytes());
                    }
                    let t = Instant::now();
                    s.write_all(&req)?;
                    // Read to the end of this one reply.
                    let mut got = 0;
                    loop {
                        if got == buf.len() {
                            buf.resize(buf.len() * 2, 0);
                        }
                        let n = s.read(&mut buf[got..])?;
                        if n == 0 {
                            anyhow::bail!("connection closed");
                        }
                        got += n;
                        let r = &buf[..got];
                        if (is_set && r.ends_with(b"\r\n"))
                            || r.ends_with(b"END\r\n")
                            || r.starts_with(b"SERVER_ERROR")
                            || r.starts_with(b"CLIENT_ERROR")
                        {
                            if !(r.starts_with(b"STORED")
                                || r.starts_with(b"VALUE")
                                || r == b"END\r\n")
                            {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                    }
                    let _ = local.record(t.elapsed().as_micros().max(1) as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                hist.lock().unwrap().add(&local)?;
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(o.seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = cpu_us(pid);
    let n = done.load(Ordering::Relaxed) as f64;
    let h = hist.lock().unwrap();
    Ok(Closed {
        ops: n / elapsed,
        p50: h.value_at_quantile(0.5) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        cpu_per_req: match (cpu0, cpu1) {
            (Some(a), Some(b)) if n > 0.0 => Some((b - a) / n),
            _ => None,
        },
        errors: errors.load(Ordering::Relaxed),
    })
}

fn closed_loop_report(
    targets: &[(&str, String)],
    pids: &[Option<u32>],
    size: usize,
    o: &Opts,
) -> Result<()> {
    let mut runs: Vec<Vec<Closed>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..o.rounds {
        for (i, (_, addr)) in targets.iter().enumerate() {
            runs[i].push(closed_loop(addr, pids[i], size, o)?);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let m: Vec<Closed> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.ops.total_cmp(&b.ops));
            r.swap_remove(r.len() / 2)
        })
        .collect();
    println!();
    println!(
        "closed loop, {} connections x 1 outstanding request, value {size} bytes (median of {})",
        o.conns, o.rounds
    );
    println!(
        "  {:<10} {:>10} {:>9} {:>9} {:>10} {:>16} {:>7}",
        "target", "ops/s", "p50 us", "p99 us", "p99.9 us", "CPU us/request", "errors"
    );
    for (i, (name, _)) in targets.iter().enumerate() {
        let c = &m[i];
        println!(
            "  {:<10} {:>10.0} {:>9.0} {:>9.0} {:>10.0} {:>16} {:>7}",
            name,
            c.ops,
            c.p50,
            c.p99,
            c.p999,
            c.cpu_per_req.map_or("-".into(), |v| format!("{v:.1}")),
            c.errors
        );
    }
    println!(
        "  router/twemproxy throughput {:.2}x, p99 {:.2}x, CPU/request {}",
        m[1].ops / m[2].ops,
        m[1].p99 / m[2].p99,
        match (m[1].cpu_per_req, m[2].cpu_per_req) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        }
    );
    println!(
        "  router/direct    throughput {:.2}x, p99 {:.2}x",
        m[1].ops / m[0].ops,
        m[1].p99 / m[0].p99
    );
    Ok(())
}
