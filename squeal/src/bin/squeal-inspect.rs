use clap::Parser;

use squeal::inspect::config::InspectConfig;
use squeal::inspect::{run, Until};

/// Measures cache consistency: follows the binlog with squeal's extraction rules, samples
/// committed keys and, at a few horizons after each commit, reads them from every cache
/// that should have lost them. Reports stale copies per table and horizon, and the nines.
#[derive(Debug, Parser)]
#[command(name = "squeal-inspect", version, about, long_about = None)]
struct Cli {
    /// Path of the TOML configuration file.
    #[arg(short, long, default_value = "/etc/squeal/squeal-inspect.toml")]
    config: std::path::PathBuf,
    /// One-shot: sample for this many seconds, wait for the last horizon, print the
    /// summary table and exit.
    #[arg(long)]
    seconds: Option<f64>,
    /// One-shot: stop after this many samples, wait for the last horizon, print the
    /// summary table and exit.
    #[arg(long)]
    samples: Option<u64>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("squeal-inspect: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    squeal::logging::init(cli.log_json);
    let cfg = InspectConfig::load(&cli.config)?;
    if cli.check {
        println!("{}: ok", cli.config.display());
        return Ok(());
    }
    if cli.seconds.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
        anyhow::bail!("--seconds must be a positive number");
    }
    let until = Until {
        duration: cli.seconds.map(std::time::Duration::from_secs_f64),
        samples: cli.samples,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        squeal::metrics::install(cfg.metrics.listen)?;
        let report = run(cfg, until).await?;
        print!("{}", report.tally.table());
        let dropped: Vec<String> = report
            .dropped
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        println!(
            "samples {} dropped {}",
            report.samples,
            if dropped.is_empty() {
                "0".into()
            } else {
                dropped.join(" ")
            }
        );
        anyhow::Ok(())
    })
}
