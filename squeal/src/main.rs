use clap::Parser;

/// Tails the local MySQL/MariaDB binlog and delivers the memcache invalidations of every
/// committed transaction, at least once.
#[derive(Debug, Parser)]
#[command(name = "squeal", version, about, long_about = None)]
struct Cli {
    /// Path of the TOML configuration file.
    #[arg(short, long, default_value = "/etc/squeal/squeal.toml")]
    config: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "squeal: {}: the binlog tailer is not built yet (see issue 5)",
        cli.config.display()
    )
}
