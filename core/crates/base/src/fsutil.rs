//! Small filesystem helpers shared by everything that writes run artifacts.

use std::io::Write;
use std::path::Path;

/// fsync `tmp`, rename it to `dest`, then fsync the folder so the rename itself is durable.
pub fn sync_and_rename(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::File::open(tmp)?.sync_all()?;
    std::fs::rename(tmp, dest)?;
    if let Some(dir) = dest.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Write `bytes` to `dest` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|_| sync_and_rename(&tmp, dest));
    if written.is_err() {
        // A failed write (a full disk) leaves no temporary behind for the next attempt to pile on.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Write a value as pretty JSON, atomically.
pub fn write_json_atomic(dest: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomic(dest, text.as_bytes())
}

/// The process id in the name of a temporary that medrl writes (`.NAME.tmp-PID`, a file or a
/// folder), or `None` for any other name.
pub fn temp_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, pid) = rest.rsplit_once(".tmp-")?;
    pid.parse().ok()
}

/// Whether process `pid` is running. Where that cannot be known (no `/proc`), it is assumed to
/// be, so that nothing another process may still be writing is removed.
pub fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Remove the temporaries (`.NAME.tmp-PID`) in `dir` left by processes that died mid-write
/// (`kill -9`, a full disk). With `all`, the caller holds the folder's run lock, so no other
/// writer can exist and every temporary is stale (a PID may have been reused since the crash,
/// which is common in containers); without it only those whose process is gone are removed.
/// Returns what was removed.
pub fn remove_stale_temps(dir: &Path, all: bool) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(pid) = temp_owner(&entry.file_name().to_string_lossy()) else { continue };
        if !all && pid_alive(pid) {
            continue;
        }
        let path = entry.path();
        // Not following links: a temporary is always a plain file or folder medrl created.
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(path);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognized_and_only_dead_writers_temps_are_removed() {
        assert_eq!(temp_owner(".step-00000040.tmp-1234"), Some(1234));
        assert_eq!(temp_owner(".model.safetensors.tmp-7"), Some(7));
        assert_eq!(temp_owner("step-00000040"), None);
        assert_eq!(temp_owner("model.safetensors"), None);
        assert_eq!(temp_owner(".hidden"), None);
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join(format!(".a.tmp-{}", std::process::id()));
        // Far above any pid_max (2^22 on Linux): no such process.
        let dead = d.path().join(".b.tmp-999999999");
        let dead_dir = d.path().join(".step-00000001.tmp-999999998");
        std::fs::write(&mine, b"x").unwrap();
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir_all(dead_dir.join("inner")).unwrap();
        std::fs::write(d.path().join("keep.txt"), b"x").unwrap();
        let mut removed = remove_stale_temps(d.path(), false).unwrap();
        removed.sort();
        assert_eq!(removed, vec![dead, dead_dir]);
        assert!(mine.exists() && d.path().join("keep.txt").exists());
        // Under the run lock every temporary is stale, a live PID included.
        assert_eq!(remove_stale_temps(d.path(), true).unwrap(), vec![mine]);
        assert!(d.path().join("keep.txt").exists());
        assert!(remove_stale_temps(&d.path().join("absent"), true).unwrap().is_empty());
    }
}
