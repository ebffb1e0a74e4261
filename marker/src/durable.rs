//! Durable file replacement: a crash (of the process or of the machine) leaves either the
//! old contents or the new ones, never a mix, and once the call returns the new contents
//! survive a power loss. squeal's checkpoint, the router's spool cursors and the warm-up
//! tool's progress files are all written this way.
//!
//! The steps: write a temporary file next to the target (same directory, so the rename
//! stays on one file system), fsync it, rename it over the target, fsync the directory (the
//! rename itself is only durable once the directory entry is on disk).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces the contents of `path` with `data`, durably and atomically. On an error the
/// old file is untouched (and the temporary file removed).
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = directory_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let written = write_synced(&tmp, data).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(&dir)?.sync_all()
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "marker-durable-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_then_replaces_and_leaves_no_temporary_file() {
        let dir = scratch("replace");
        let path = dir.join("state");
        write_atomically(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomically(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        write_atomically(&path, b"").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        assert_eq!(entries(&dir), ["state"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_intact() {
        let dir = scratch("fail");
        let path = dir.join("cp.toml");
        write_atomically(&path, b"old").unwrap();
        // A directory where the temporary file must go: creating it fails.
        fs::create_dir(dir.join(".cp.toml.tmp")).unwrap();
        assert!(write_atomically(&path, b"new").is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        fs::remove_dir(dir.join(".cp.toml.tmp")).unwrap();
        // A rename that fails (the target is a directory): the temporary file is removed.
        let target = dir.join("sub");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"x").unwrap();
        assert!(write_atomically(&target, b"new").is_err());
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"x");
        assert_eq!(entries(&dir), ["cp.toml", "sub"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_not_a_panic() {
        let dir = scratch("missing");
        let path = dir.join("nope").join("state");
        assert!(write_atomically(&path, b"x").is_err());
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
