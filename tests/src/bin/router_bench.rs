//! Router benchmark: memcached direct vs squeal-router vs twemproxy, in one run, over the
//! same memcached server, driven by memcaslap with the same settings. Prints ops/s and mean
//! latency per target and the ratios router/twemproxy and router/direct.
//!
//! Run with `bash tests/bench/router_bench.sh` (builds in release first). Options:
//! `--seconds N` per measurement (5), `--rounds N` (3, median reported), `--conns N` (50),
//! `--sizes 32,4096` value sizes, `--threads N` memcaslap threads (2).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use harness::router::Router;
use harness::twemproxy::{Twemproxy, TwemproxyPool};
use harness::Memcached;

struct Opts {
    seconds: u64,
    rounds: usize,
    conns: usize,
    threads: usize,
    sizes: Vec<usize>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        seconds: 5,
        rounds: 3,
        conns: 50,
        threads: 2,
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
    let router = Router::start(&[mc.addr()], "", "")?;
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
    if !ok {
        println!("\nrouter slower than twemproxy in this run");
    }
    Ok(())
}
