//! The checkpoint: the binlog position (file:pos, and the GTID position when known) up to
//! which every key has been acknowledged by every sink. Written atomically: to a temporary
//! file, fsynced, renamed over the old one, and the directory fsynced. After a crash squeal
//! resumes there and re-sends what followed (at least once, never a skip).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Position;

/// What the checkpoint file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub file: String,
    pub pos: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl Checkpoint {
    pub fn position(&self) -> Position {
        Position {
            file: self.file.clone(),
            pos: self.pos,
        }
    }
}

/// Reads the checkpoint; `Ok(None)` if there is none yet.
pub fn load(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let cp: Checkpoint = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", path.display()))?;
            if cp.file.is_empty() || cp.pos < 4 {
                anyhow::bail!("checkpoint {}: no valid position", path.display());
            }
            Ok(Some(cp))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => anyhow::bail!("reading checkpoint {}: {e}", path.display()),
    }
}

/// Writes the checkpoint atomically (write, fsync, rename, fsync the directory).
pub fn store(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "checkpoint".into())
    ));
    let text = toml::to_string(cp).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.toml");
        assert_eq!(load(&path).unwrap(), None);
        let a = Checkpoint {
            file: "bin.000001".into(),
            pos: 1234,
            gtid: Some("0-1-7".into()),
        };
        store(&path, &a).unwrap();
        assert_eq!(load(&path).unwrap(), Some(a));
        let b = Checkpoint {
            file: "bin.000002".into(),
            pos: 4,
            gtid: None,
        };
        store(&path, &b).unwrap();
        assert_eq!(load(&path).unwrap(), Some(b));
        std::fs::write(&path, "garbage").unwrap();
        assert!(load(&path).is_err());
    }
}
