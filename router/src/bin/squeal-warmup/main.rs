//! `squeal-warmup`: warms a cold memcached cluster from a warm one.
//!
//! For each warm server: list its keys (`lru_crawler metadump all`), then, chunk by chunk
//! and at a bounded rate, read each item with its remaining TTL and flags (`mg k v t f`) and
//! `add` it to the cold side (a cold server, or the router in front of the cold cluster).
//! `add` never overwrites, and a key invalidated moments ago holds a hold-off tombstone in
//! the cold cluster (see `marker::holdoff`), so a value fetched before its invalidation
//! reached the warm cluster is never written back.

mod copy;
mod dump;
mod state;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

/// Warms a cold memcached cluster from a warm one with `add`, so that a key an invalidation
/// has just removed (and the router holds off) is never written back.
#[derive(Debug, Parser)]
#[command(name = "squeal-warmup", version, about, long_about = None)]
struct Cli {
    /// Warm cluster servers, host:port, comma separated (their keys are enumerated).
    #[arg(long, value_delimiter = ',', required = true)]
    warm: Vec<String>,
    /// The cold side: one memcache endpoint, normally the router in front of the cold
    /// cluster (so keys land where the cold pool's hashing puts them), or a single server.
    #[arg(long)]
    cold: String,
    /// Keys per second at most, across all warm servers (0: unlimited).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Keys per pipelined round trip.
    #[arg(long, default_value_t = 100)]
    chunk: usize,
    /// Directory to keep progress in; rerunning with it resumes an interrupted warm-up.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Network timeout for each round trip, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
    /// No progress bar (logs, CI).
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.chunk > 0, "--chunk must be at least 1");
    let timeout = Duration::from_millis(cli.timeout_ms);
    let state = cli.state.as_deref().map(state::State::open).transpose()?;

    // Key lists first, so the progress bar knows the total.
    let mut plans = Vec::new();
    for server in &cli.warm {
        let (keys, done) = match state
            .as_ref()
            .map(|s| s.load(server))
            .transpose()?
            .flatten()
        {
            Some(saved) => {
                eprintln!(
                    "{server}: resuming at {} of {} keys",
                    saved.1,
                    saved.0.len()
                );
                saved
            }
            None => {
                let keys = dump::keys(server, timeout * 5)?;
                if let Some(s) = &state {
                    s.save_keys(server, &keys)?;
                    s.save_done(server, 0)?;
                }
                (keys, 0)
            }
        };
        plans.push((server.clone(), keys, done));
    }
    let total: usize = plans
        .iter()
        .map(|(_, k, d)| k.len().saturating_sub(*d))
        .sum();
    let bar = if cli.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} keys {per_sec} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );

    let started = Instant::now();
    let mut summary = copy::Outcome::default();
    let mut cold = copy::Conn::connect(&cli.cold, timeout)?;
    for (server, keys, mut done) in plans {
        let mut warm = copy::Conn::connect(&server, timeout)?;
        while done < keys.len() {
            let end = (done + cli.chunk).min(keys.len());
            let outcome = copy::chunk(&mut warm, &mut cold, &keys[done..end])
                .with_context(|| format!("copying from {server} to {}", cli.cold))?;
            summary.add(outcome);
            done = end;
            if let Some(s) = &state {
                s.save_done(&server, done)?;
            }
            bar.inc(outcome.total());
            bar.set_message(format!(
                "copied {} held-off {}",
                summary.copied, summary.held_off
            ));
            // Rate limit: never ahead of `rate` keys per second since the start.
            if cli.rate > 0 {
                let due = Duration::from_secs_f64(summary.total() as f64 / cli.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "warm-up done in {:.1}s: {} keys: copied {}, skipped (present) {}, refused by hold-off {}, gone {}, failed {}",
        started.elapsed().as_secs_f64(),
        summary.total(),
        summary.copied,
        summary.present,
        summary.held_off,
        summary.gone,
        summary.failed
    );
    Ok(())
}
