//! Resumable progress: the key list of each warm server and how far the copy got, so an
//! interrupted warm-up continues where it stopped instead of starting over.
//!
//! In the state directory, per warm server: `<server>.keys` (the metadump snapshot, one
//! hex-encoded key per line) and `<server>.done` (keys processed), the latter replaced
//! atomically after each chunk.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct State {
    dir: PathBuf,
}

impl State {
    pub fn open(dir: &Path) -> Result<State> {
        fs::create_dir_all(dir).with_context(|| format!("creating state dir {}", dir.display()))?;
        Ok(State { dir: dir.into() })
    }

    fn path(&self, server: &str, ext: &str) -> PathBuf {
        let name: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{name}.{ext}"))
    }

    /// The saved key list and progress for `server`, if an earlier run left them.
    pub fn load(&self, server: &str) -> Result<Option<(Vec<Vec<u8>>, usize)>> {
        let keys_path = self.path(server, "keys");
        let Ok(text) = fs::read_to_string(&keys_path) else {
            return Ok(None);
        };
        let keys = text
            .lines()
            .map(|l| hex_decode(l).with_context(|| format!("corrupt {}", keys_path.display())))
            .collect::<Result<Vec<_>>>()?;
        let done = fs::read_to_string(self.path(server, "done"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        Ok(Some((keys, done)))
    }

    pub fn save_keys(&self, server: &str, keys: &[Vec<u8>]) -> Result<()> {
        let mut text = String::new();
        for key in keys {
            for b in key {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
        }
        write_atomically(&self.path(server, "keys"), text.as_bytes())
    }

    pub fn save_done(&self, server: &str, done: usize) -> Result<()> {
        write_atomically(&self.path(server, "done"), done.to_string().as_bytes())
    }
}

/// Replaces `path`'s contents durably: a crash leaves the old or the new progress
/// (`marker::durable`: write, fsync, rename, fsync the directory).
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    marker::durable::write_atomically(path, data)
        .with_context(|| format!("writing {}", path.display()))
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
