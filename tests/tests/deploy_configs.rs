//! Every example config under deploy/ is accepted by the program it is for, so the docs
//! cannot drift from the code. Compose files name hosts that only resolve inside compose's
//! network; they are checked with those names pointed at loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

fn tomls(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            tomls(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_deploy_config_passes_its_programs_check() -> Result<()> {
    let mut files = Vec::new();
    tomls(&harness::project::root().join("deploy"), &mut files);
    assert!(files.len() >= 4, "deploy/ configs found: {files:?}");
    let scratch = tempfile::tempdir()?;
    for file in files {
        let mut text = std::fs::read_to_string(&file)?;
        // Compose service names resolve only inside compose: point them at loopback.
        // Compose service names resolve only inside compose: give each its own loopback
        // address (all of 127.0.0.0/8 is loopback).
        let hosts = [
            "memcached-a1",
            "memcached-a2",
            "memcached-b1",
            "memcached-b2",
            "memcached-regional",
        ];
        for (i, host) in hosts.iter().enumerate() {
            text = text.replace(&format!("\"{host}:"), &format!("\"127.0.0.{}:", i + 2));
        }
        let checked = scratch.path().join(file.file_name().unwrap());
        std::fs::write(&checked, &text)?;
        let program = if text.contains("[[target]]") {
            "squeal-inspect"
        } else if text.contains("[source]") {
            "squeal"
        } else {
            "squeal-router"
        };
        let out = Command::new(harness::project::bin(program))
            .arg("--check")
            .arg("--config")
            .arg(&checked)
            .output()?;
        assert!(
            out.status.success(),
            "{} rejects {}:\n{}{}",
            program,
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
