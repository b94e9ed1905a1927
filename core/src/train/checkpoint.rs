//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint is a folder `checkpoints/step-00000040/` holding the trainable f32 masters
//! (`trainable.safetensors`), the optimizer moments (`optimizer.safetensors`) and
//! `trainer_state.json` (step, data position, RNG position, how many metrics lines belong to the
//! run so far). It is written as a hidden temporary folder and renamed into place, so a crash
//! mid-write leaves the previous checkpoints untouched and never a half checkpoint; only then
//! are checkpoints beyond `keep_last` removed.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

/// The non-tensor state of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Data position: the epoch and the index of the next micro-batch in its plan.
    pub epoch: u64,
    pub next_micro_batch: usize,
    /// Position of the run's RNG stream (LoRA dropout), as a decimal u128.
    pub rng_word_pos: String,
    pub optimizer_steps: u64,
    /// Lines of `metrics.jsonl` written up to this checkpoint (a resume truncates the rest).
    pub metrics_lines: usize,
    pub skipped_steps: u64,
    pub tokens_seen: u64,
    /// What kind of run wrote it (`sft`, `grpo`, ...) and its config hash, checked on resume.
    pub kind: String,
    pub config_hash: String,
}

impl TrainerState {
    /// The state of a run before its first step.
    pub fn start(kind: &str, config_hash: String) -> Self {
        Self {
            step: 0,
            epoch: 0,
            next_micro_batch: 0,
            rng_word_pos: "0".into(),
            optimizer_steps: 0,
            metrics_lines: 0,
            skipped_steps: 0,
            tokens_seen: 0,
            kind: kind.into(),
            config_hash,
        }
    }
}

pub fn checkpoints_dir(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

/// Complete checkpoints, oldest first.
pub fn list(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let dir = checkpoints_dir(output_dir);
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("trainer_state.json").exists().then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

pub fn latest(output_dir: &Path) -> Option<PathBuf> {
    list(output_dir).pop().map(|(_, p)| p)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.into(), source }
}

/// Write a checkpoint atomically and prune to `keep_last` (0 keeps all).
pub fn save(
    output_dir: &Path,
    state: &TrainerState,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
    keep_last: usize,
) -> Result<PathBuf, CheckpointError> {
    let dir = checkpoints_dir(output_dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = format!("step-{:08}", state.step);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dest = dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let save_tensors = |map: &HashMap<String, Tensor>, file: &str| -> Result<(), CheckpointError> {
        let path = tmp.join(file);
        let cpu: HashMap<String, Tensor> = map
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
            .collect::<candle_core::Result<_>>()
            .map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
        candle_core::safetensors::save(&cpu, &path).map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
        std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))
    };
    save_tensors(trainable, "trainable.safetensors")?;
    save_tensors(optimizer, "optimizer.safetensors")?;
    let state_path = tmp.join("trainer_state.json");
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    std::fs::write(&state_path, text).map_err(io(&state_path))?;
    std::fs::File::open(&state_path).and_then(|f| f.sync_all()).map_err(io(&state_path))?;
    if dest.exists() {
        // Re-saving the same step (a resumed run's final save): replace it whole.
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    if keep_last > 0 {
        let all = list(output_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(dest)
}

/// A loaded checkpoint.
pub struct Loaded {
    pub state: TrainerState,
    pub trainable: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

pub fn load(dir: &Path, device: &Device) -> Result<Loaded, CheckpointError> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid { path: state_path.clone(), msg: e.to_string() })?;
    let load_tensors = |file: &str| -> Result<HashMap<String, Tensor>, CheckpointError> {
        let path = dir.join(file);
        candle_core::safetensors::load(&path, device).map_err(|e| CheckpointError::Invalid { path, msg: e.to_string() })
    };
    Ok(Loaded { trainable: load_tensors("trainable.safetensors")?, optimizer: load_tensors("optimizer.safetensors")?, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            epoch: 0,
            next_micro_batch: 3,
            rng_word_pos: "0".into(),
            optimizer_steps: step,
            metrics_lines: 0,
            skipped_steps: 0,
            tokens_seen: 0,
            kind: "sft".into(),
            config_hash: "x".into(),
        }
    }

    #[test]
    fn saves_atomically_keeps_last_k_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let t: HashMap<String, Tensor> = [("w".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())].into();
        for step in [10, 20, 30] {
            save(d.path(), &state(step), &t, &HashMap::new(), 2).unwrap();
        }
        let steps: Vec<u64> = list(d.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        // A leftover temporary folder (a crash mid-write) is not a checkpoint.
        std::fs::create_dir_all(checkpoints_dir(d.path()).join(".step-00000040.tmp-1")).unwrap();
        let l = load(&latest(d.path()).unwrap(), &Device::Cpu).unwrap();
        assert_eq!(l.state, state(30));
        assert_eq!(l.trainable["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
