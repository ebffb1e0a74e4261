use clap::Parser;

use squeal::config::Config;
use squeal::run::{run, Mode};

/// Tails the local MySQL/MariaDB binlog and delivers the memcache invalidations of every
/// committed transaction, at least once.
#[derive(Debug, Parser)]
#[command(name = "squeal", version, about, long_about = None)]
struct Cli {
    /// Path of the TOML configuration file.
    #[arg(short, long, default_value = "/etc/squeal/squeal.toml")]
    config: std::path::PathBuf,
    /// Stop once the position the server had at start is processed and acknowledged, and
    /// print what was done (rows/s, keys/s) as one JSON line.
    #[arg(long)]
    until_current: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Decode binlog files offline with the configured rules and print their keys.
    #[arg(long, num_args = 1..)]
    read_file: Vec<std::path::PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() {
    // One clear line (with its causes), never a backtrace that buries it.
    if let Err(e) = real_main() {
        eprintln!("squeal: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    squeal::logging::init(cli.log_json);
    let cfg = Config::load(&cli.config)?;
    if cli.check {
        return check(&cli.config, &cfg);
    }
    if !cli.read_file.is_empty() {
        return read_files(&cfg, &cli.read_file);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        squeal::metrics::install(cfg.metrics.listen)?;
        let mode = if cli.until_current {
            Mode::UntilCurrent
        } else {
            Mode::Follow
        };
        let s = run(cfg, mode).await?;
        if cli.until_current {
            println!(
                "{{\"seconds\":{:.3},\"events\":{},\"transactions\":{},\"rows\":{},\"keys\":{},\"delivered_keys\":{},\"rows_per_sec\":{:.0},\"keys_per_sec\":{:.0},\"end\":\"{}\"}}",
                s.seconds,
                s.stats.events,
                s.stats.txns,
                s.stats.rows,
                s.stats.keys,
                s.delivered_keys,
                s.stats.rows as f64 / s.seconds,
                s.stats.keys as f64 / s.seconds,
                s.end.map(|p| p.to_string()).unwrap_or_default()
            );
        }
        anyhow::Ok(())
    })
}

fn read_files(cfg: &Config, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    use squeal::extract::process::Processor;
    use squeal::source::schema::NoSchema;
    let mut p = Processor::new(&cfg.extract, Box::new(NoSchema)).map_err(anyhow::Error::msg)?;
    for f in files {
        squeal::extract::file::read_file(f, &mut p, |c| {
            let pos = c.pos.clone();
            let _ = c
                .keys
                .for_each(|k| println!("{pos} {}", String::from_utf8_lossy(k)));
        })?;
    }
    for problem in &p.problems {
        eprintln!("{problem}");
    }
    eprintln!("{:?}", p.stats);
    Ok(())
}

/// `--check`: problems (each naming its line) fail; what could not be checked is said.
fn check(path: &std::path::Path, cfg: &Config) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(squeal::check::check(path, &text, cfg));
    for n in &report.notes {
        println!("{n}");
    }
    for p in &report.problems {
        println!("{p}");
    }
    if report.problems.is_empty() {
        println!("{}: ok", path.display());
        Ok(())
    } else {
        anyhow::bail!(
            "{}: {} problem(s), see above",
            path.display(),
            report.problems.len()
        )
    }
}
