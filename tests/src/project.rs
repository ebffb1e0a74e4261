//! Where the project's own files and built programs are.

use std::path::{Path, PathBuf};

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
}

/// `../shared/fixtures/mysql-binlogs`, with a clear message when it is missing.
pub fn binlog_fixtures() -> PathBuf {
    let dir = root().join("../shared/fixtures/mysql-binlogs");
    assert!(
        dir.is_dir(),
        "binlog fixtures not found at {} (shared/ must sit beside the checkout)",
        dir.display()
    );
    dir
}

/// Path of one of the workspace's programs (`squeal`, `squeal-router`, `squeal-warmup`),
/// built in the same profile as the running test. The test command builds them first
/// (`cargo build --workspace --bins`); a missing one is a clear failure, not a hang.
pub fn bin(name: &str) -> PathBuf {
    // A test executable lives in target/<profile>/deps/, a program (the demo, a bench) in
    // target/<profile>/ itself.
    let exe = std::env::current_exe().expect("current_exe");
    let mut profile_dir = exe.parent().expect("executable has a directory");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("deps/ has a parent");
    }
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (the README's test command does)",
        path.display()
    );
    path
}
