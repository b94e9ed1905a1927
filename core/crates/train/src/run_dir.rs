//! A run folder's lock and the leftovers of crashed writers.
//!
//! A run holds an exclusive lock on `output_dir/run.lock` for its whole life (an OS file lock,
//! released by the kernel when the process ends, even under `kill -9`, so a crash never leaves
//! a stale lock). A second run into the same folder fails at once with the holder's pid, host
//! and command, which the holder writes into the lock file; without the lock both runs would
//! interleave `metrics.jsonl` and overwrite each other's checkpoints.
//!
//! With the lock held, every temporary (`.NAME.tmp-PID`) in the run's own folders is a leftover
//! of a writer that died mid-write (a checkpoint or the final export under `kill -9`, a full
//! disk), so the run removes them when it starts.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file in a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// The run's own subfolders that may hold temporaries (besides the run folder itself).
const RUN_SUBDIRS: [&str; 5] = ["checkpoints", "final", "adapter", "final_critic", "plots"];

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir} is in use by another run ({holder}); wait for it to end or choose another output_dir (lock: {lock})")]
    Busy { dir: PathBuf, lock: PathBuf, holder: String },
}

/// The exclusive lock on a run folder, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    file: std::fs::File,
    dir: PathBuf,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".into())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The holder's details as the lock file has them, in words.
fn describe_holder(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return "holder unknown: it has not written its details yet".into();
    };
    let mut s = format!("pid {} on {}", v["pid"], v["host"].as_str().unwrap_or("?"));
    if let Some(t) = v["started_unix"].as_u64() {
        s.push_str(&format!(", started {} s ago", unix_now().saturating_sub(t)));
    }
    if let Some(c) = v["command"].as_str() {
        s.push_str(&format!(", command: {c}"));
    }
    s
}

impl RunLock {
    /// Take the lock on `dir` (created if needed) without waiting, and write this process's
    /// pid, host and command into it.
    pub fn acquire(dir: &Path) -> Result<Self, RunDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                // The holder writes its details right after locking; give it a moment.
                let mut text = String::new();
                for _ in 0..20 {
                    text.clear();
                    file.rewind().and_then(|_| file.read_to_string(&mut text).map(|_| ())).map_err(io(&path))?;
                    if !text.trim().is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                return Err(RunDirError::Busy { dir: dir.into(), lock: path, holder: describe_holder(&text) });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        let holder = serde_json::json!({
            "pid": std::process::id(),
            "host": hostname(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "started_unix": unix_now(),
        });
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{holder}"))
            .and_then(|_| file.flush())
            .map_err(io(&path))?;
        Ok(Self { file, dir: dir.into() })
    }

    /// Remove the temporaries crashed writers left in the run folder and its own subfolders
    /// (checkpoints, final, adapter, final_critic, plots). Holding the lock, every one is
    /// stale. Returns what was removed.
    pub fn remove_stale_temps(&self) -> Result<Vec<PathBuf>, RunDirError> {
        let mut removed = Vec::new();
        for dir in std::iter::once(self.dir.clone()).chain(RUN_SUBDIRS.iter().map(|s| self.dir.join(s))) {
            removed.extend(medrl_base::fsutil::remove_stale_temps(&dir, true).map_err(|source| RunDirError::Io { path: dir.clone(), source })?);
        }
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "removed temporaries left by an interrupted write, e.g. {}", removed[0].display());
        }
        Ok(removed)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // The details describe a holder; once released there is none. The lock itself goes
        // with the file handle.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(d.path()).unwrap();
        let e = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())) && e.contains("in use by another run") && e.contains("command: "), "{e}");
        assert!(e.contains(&hostname()), "{e}");
        drop(first);
        let again = RunLock::acquire(d.path()).unwrap();
        // Temporaries of the run's folders go; other files and folders stay.
        std::fs::create_dir_all(d.path().join("checkpoints/.step-00000004.tmp-4242")).unwrap();
        std::fs::create_dir_all(d.path().join("final")).unwrap();
        std::fs::write(d.path().join("final/.model.safetensors.tmp-4242"), b"x").unwrap();
        std::fs::write(d.path().join("final/model.safetensors"), b"x").unwrap();
        std::fs::create_dir_all(d.path().join("checkpoints/step-00000002")).unwrap();
        assert_eq!(again.remove_stale_temps().unwrap().len(), 2);
        assert!(d.path().join("final/model.safetensors").exists() && d.path().join("checkpoints/step-00000002").exists());
        assert!(!d.path().join("checkpoints/.step-00000004.tmp-4242").exists());
    }
}
