//! Log set-up shared by `squeal` and `squeal-inspect`: `RUST_LOG` filtering (default
//! `info`), to stderr, colour only on a terminal (log files and journald get plain text),
//! JSON lines on request.

pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        sub.json().init();
    } else {
        sub.init();
    }
}
