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
    /// A tensor with NaN or infinite values, found when writing or reading a checkpoint.
    #[error("{path}: tensor `{tensor}` holds NaN or infinite values{}", if *.writing { "; refusing to write this checkpoint (the previous ones are unchanged)" } else { "" })]
    NonFinite { path: PathBuf, tensor: String, writing: bool },
    /// `--resume` found checkpoints but none of them loads.
    #[error("{dir}: no checkpoint can be resumed from: {}", .errors.join("; "))]
    NoneIntact { dir: PathBuf, errors: Vec<String> },
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
    let name = format!("step-{:08}", state.step);
    let dest = dir.join(&name);
    // A checkpoint with NaN weights would be resumed from and exported as if it were fine.
    for (map, file) in [(trainable, "trainable.safetensors"), (optimizer, "optimizer.safetensors")] {
        let bad = medrl_lm::model::weights::first_nonfinite(map.iter().map(|(k, v)| (k.as_str(), v)))
            .map_err(|e| CheckpointError::Invalid { path: dest.join(file), msg: e.to_string() })?;
        if let Some(tensor) = bad {
            return Err(CheckpointError::NonFinite { path: dest.join(file), tensor, writing: true });
        }
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let written = write_into(&tmp, &dest, &dir, state, trainable, optimizer);
    if written.is_err() {
        // A failed write (a full disk) leaves no temporary behind for the next attempt to pile on.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    if keep_last > 0 {
        let all = list(output_dir);
        for (_, old) in all.iter().take(all.len().saturating_sub(keep_last)) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
    }
    Ok(dest)
}

/// The body of [`save`]: write the files into `tmp`, then rename it to `dest`.
fn write_into(
    tmp: &Path,
    dest: &Path,
    dir: &Path,
    state: &TrainerState,
    trainable: &HashMap<String, Tensor>,
    optimizer: &HashMap<String, Tensor>,
) -> Result<(), CheckpointError> {
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
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(tmp, dest).map_err(io(dest))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
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
        // The header check names a truncated file as such (candle's error would not).
        medrl_lm::model::weights::read_safetensors_header(&path).map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
        let map = candle_core::safetensors::load(&path, device).map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
        let bad = medrl_lm::model::weights::first_nonfinite(map.iter().map(|(k, v)| (k.as_str(), v))).map_err(|e| CheckpointError::Invalid { path: path.clone(), msg: e.to_string() })?;
        match bad {
            Some(tensor) => Err(CheckpointError::NonFinite { path, tensor, writing: false }),
            None => Ok(map),
        }
    };
    Ok(Loaded { trainable: load_tensors("trainable.safetensors")?, optimizer: load_tensors("optimizer.safetensors")?, state })
}

/// The checkpoint `--resume` continues from.
pub struct Resumed {
    pub dir: PathBuf,
    pub loaded: Loaded,
    /// Newer checkpoints that did not load: where each was moved, and why it was refused.
    pub set_aside: Vec<(PathBuf, String)>,
}

/// Load the newest checkpoint that loads. Newer ones that do not (a truncated file, NaN
/// weights, a broken trainer_state.json) are renamed to `step-N.unreadable` with a warning
/// naming them: kept for inspection, but out of `list`, so neither a later resume nor
/// `keep_last` counts them (pruning to `keep_last` could otherwise delete every good
/// checkpoint and keep the bad one). `None` when there is no checkpoint; an error, with
/// nothing moved, when none loads.
pub fn load_latest_intact(output_dir: &Path, device: &Device) -> Result<Option<Resumed>, CheckpointError> {
    let mut bad: Vec<(PathBuf, String)> = Vec::new();
    for (_, dir) in list(output_dir).into_iter().rev() {
        match load(&dir, device) {
            Ok(loaded) => {
                let mut set_aside = Vec::new();
                for (b, why) in bad {
                    let aside = aside_name(&b);
                    std::fs::rename(&b, &aside).map_err(io(&b))?;
                    tracing::warn!("checkpoint {} is unreadable ({why}); moved it to {} and resuming from {}", b.display(), aside.display(), dir.display());
                    set_aside.push((aside, why));
                }
                return Ok(Some(Resumed { dir, loaded, set_aside }));
            }
            Err(e) => bad.push((dir, e.to_string())),
        }
    }
    if bad.is_empty() {
        return Ok(None);
    }
    Err(CheckpointError::NoneIntact { dir: checkpoints_dir(output_dir), errors: bad.into_iter().map(|(_, e)| e).collect() })
}

/// `step-N.unreadable`, or `step-N.unreadable-K` when that exists already.
fn aside_name(dir: &Path) -> PathBuf {
    let base = format!("{}.unreadable", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let parent = dir.parent().unwrap_or(Path::new("."));
    let mut candidate = parent.join(&base);
    let mut k = 1;
    while candidate.exists() {
        k += 1;
        candidate = parent.join(format!("{base}-{k}"));
    }
    candidate
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
    fn nonfinite_tensors_are_never_written_and_refused_on_load() {
        let d = tempfile::tempdir().unwrap();
        let good: HashMap<String, Tensor> = [("w".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())].into();
        save(d.path(), &state(10), &good, &HashMap::new(), 0).unwrap();
        let nan: HashMap<String, Tensor> = [("model.layers.0.w".to_string(), Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap())].into();
        let e = save(d.path(), &state(20), &nan, &HashMap::new(), 0).unwrap_err().to_string();
        assert!(e.contains("model.layers.0.w") && e.contains("step-00000020") && e.contains("refusing"), "{e}");
        let e = save(d.path(), &state(20), &good, &nan, 0).unwrap_err().to_string();
        assert!(e.contains("optimizer.safetensors") && e.contains("model.layers.0.w"), "{e}");
        assert_eq!(list(d.path()).len(), 1, "nothing written for step 20");
        assert_eq!(std::fs::read_dir(checkpoints_dir(d.path())).unwrap().count(), 1, "no temporary left");
        // One written by an older medrl is refused on load, naming the tensor.
        let dir = latest(d.path()).unwrap();
        candle_core::safetensors::save(&nan, dir.join("trainable.safetensors")).unwrap();
        let e = load(&dir, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("trainable.safetensors") && e.contains("model.layers.0.w") && e.contains("NaN"), "{e}");
    }

    #[test]
    fn resume_falls_back_past_unreadable_checkpoints() {
        let d = tempfile::tempdir().unwrap();
        let t: HashMap<String, Tensor> = [("w".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())].into();
        assert!(load_latest_intact(d.path(), &Device::Cpu).unwrap().is_none());
        for step in [10, 20, 30] {
            save(d.path(), &state(step), &t, &HashMap::new(), 0).unwrap();
        }
        let ck = checkpoints_dir(d.path());
        // step 30: a truncated weights file; step 20: a broken trainer_state.json.
        let w = ck.join("step-00000030/trainable.safetensors");
        let bytes = std::fs::read(&w).unwrap();
        std::fs::write(&w, &bytes[..bytes.len() - 3]).unwrap();
        std::fs::write(ck.join("step-00000020/trainer_state.json"), "{").unwrap();
        let r = load_latest_intact(d.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(r.loaded.state.step, 10);
        assert_eq!(r.set_aside.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>(), ["step-00000030.unreadable", "step-00000020.unreadable"]);
        assert!(r.set_aside[0].1.contains("truncated"), "{:?}", r.set_aside);
        // Kept, but no longer checkpoints: keep_last cannot prune the good one in their favour.
        assert!(ck.join("step-00000030.unreadable/trainable.safetensors").exists());
        assert_eq!(list(d.path()).iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![10]);
        // When none loads, nothing is moved and the error names each.
        std::fs::write(ck.join("step-00000010/trainer_state.json"), "").unwrap();
        let e = load_latest_intact(d.path(), &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("step-00000010") && e.contains("no checkpoint can be resumed"), "{e}");
        assert!(ck.join("step-00000010").exists());
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
