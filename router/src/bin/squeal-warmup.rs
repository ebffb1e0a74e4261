use clap::Parser;

/// Warms a cold memcached cluster from a warm one with `add`, so that a key an invalidation
/// has just removed (and the router holds off) is never written back.
#[derive(Debug, Parser)]
#[command(name = "squeal-warmup", version, about, long_about = None)]
struct Cli {
    /// Warm cluster servers, host:port, comma separated.
    #[arg(long, value_delimiter = ',')]
    warm: Vec<String>,
    /// Cold cluster servers (or a router in front of them), host:port, comma separated.
    #[arg(long, value_delimiter = ',')]
    cold: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!(
        "squeal-warmup: warming {:?} from {:?} is not built yet (see issue 8)",
        cli.cold,
        cli.warm
    )
}
