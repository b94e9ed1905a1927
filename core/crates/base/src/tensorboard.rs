//! TensorBoard event files: every numeric field of a run's metrics lines as a scalar, readable
//! by TensorBoard and by `wandb sync --sync-tensorboard`.
//!
//! The format is TFRecord framing (length, masked CRC-32C of the length, payload, masked CRC-32C
//! of the payload) around `tensorflow.Event` protocol buffers: a first event with the file
//! version, then one event per metrics line carrying a `Summary` of `simple_value`s. The few
//! protobuf fields needed are written by hand; no protobuf or TensorFlow dependency.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// CRC-32C (Castagnoli), bitwise-table implementation.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1, step = 2, (file_version = 3 | summary = 5) }`.
fn event(wall_time: f64, step: i64, file_version: Option<&str>, scalars: &[(String, f32)]) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // field 1, 64-bit
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(0x10); // field 2, varint
    varint(step as u64, &mut e);
    if let Some(v) = file_version {
        bytes_field(3, v.as_bytes(), &mut e);
    }
    if !scalars.is_empty() {
        // Summary { repeated Value value = 1 }, Value { tag = 1, simple_value = 2 (float) }.
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::new();
            bytes_field(1, tag.as_bytes(), &mut value);
            value.push(0x15); // field 2, 32-bit
            value.extend_from_slice(&v.to_le_bytes());
            bytes_field(1, &value, &mut summary);
        }
        bytes_field(5, &summary, &mut e);
    }
    e
}

fn record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

/// The numeric fields of a metrics line as (tag, value), nested objects joined with `/`; the
/// step, and values that are not finite numbers, are left out.
pub fn scalars(line: &Value) -> Vec<(String, f32)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, f32)>) {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                    out.push((prefix.to_string(), x as f32));
                }
            }
            Value::Bool(b) => out.push((prefix.to_string(), *b as u8 as f32)),
            Value::Object(m) => {
                for (k, v) in m {
                    let tag = if prefix.is_empty() { k.clone() } else { format!("{prefix}/{k}") };
                    if tag != "step" {
                        walk(&tag, v, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", line, &mut out);
    out
}

/// One run's event file in `dir` (`events.out.tfevents.<unix time>.medrl`).
pub struct EventWriter {
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl EventWriter {
    /// Start a new event file in `dir` holding `lines` (the metrics so far), replacing the
    /// folder's older event files: after a resume truncated the metrics, TensorBoard shows one
    /// uninterrupted run, as metrics.jsonl does.
    pub fn create(dir: &Path, lines: &[Value]) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let t = now();
        let path = dir.join(format!("events.out.tfevents.{}.medrl", t as u64));
        let mut buf = Vec::new();
        record(&event(t, 0, Some("brain.Event:2"), &[]), &mut buf);
        for l in lines {
            let step = l.get("step").and_then(Value::as_i64).unwrap_or(0);
            let s = scalars(l);
            if !s.is_empty() {
                record(&event(t, step, None, &s), &mut buf);
            }
        }
        crate::fsutil::write_atomic(&path, &buf)?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            if p != path && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents.")) {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(Self { path })
    }

    /// Append one metrics line's scalars (flushed: TensorBoard shows it at once).
    pub fn write(&mut self, line: &Value) -> std::io::Result<()> {
        let s = scalars(line);
        if s.is_empty() {
            return Ok(());
        }
        let step = line.get("step").and_then(Value::as_i64).unwrap_or(0);
        let mut buf = Vec::new();
        record(&event(now(), step, None, &s), &mut buf);
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        f.write_all(&buf)?;
        f.flush()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720's test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn scalars_flatten_and_skip() {
        let v = serde_json::json!({"step": 3, "loss": 1.5, "reward": {"a": 2}, "name": "x", "ok": true, "nan": null});
        let mut s = scalars(&v);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(s, vec![("loss".into(), 1.5), ("ok".into(), 1.0), ("reward/a".into(), 2.0)]);
    }

    #[test]
    fn records_frame_their_payload() {
        let d = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(d.path(), &[serde_json::json!({"step": 1, "loss": 2.0})]).unwrap();
        w.write(&serde_json::json!({"step": 2, "loss": 1.0})).unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let mut at = 0;
        let mut n = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc(&bytes[at..at + 8]));
            let payload = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc(payload));
            at += 16 + len;
            n += 1;
        }
        assert_eq!(n, 3, "version + 2 lines");
        // A second writer replaces the first file.
        EventWriter::create(d.path(), &[]).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
