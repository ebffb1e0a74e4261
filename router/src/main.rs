use clap::Parser;

/// Regional memcache router: speaks memcached's text and meta protocols to clients, routes
/// over pools of memcached servers, and applies squeal's invalidation batches.
#[derive(Debug, Parser)]
#[command(name = "squeal-router", version, about, long_about = None)]
struct Cli {
    /// Path of the TOML configuration file.
    #[arg(short, long, default_value = "/etc/squeal/router.toml")]
    config: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "squeal-router: {}: the data path is not built yet (see issue 3)",
        cli.config.display()
    )
}
