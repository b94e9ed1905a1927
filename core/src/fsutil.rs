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
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
    }
    sync_and_rename(&tmp, dest)
}

/// Write a value as pretty JSON, atomically.
pub fn write_json_atomic(dest: &Path, value: &serde_json::Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomic(dest, text.as_bytes())
}
