//! Where model tensors come from: safetensors files (single or sharded), or an in-memory map.
//!
//! Every lookup checks the expected shape and names the file and tensor on failure, so a
//! mismatched checkpoint is reported as "model.safetensors: tensor model.layers.3.mlp.up_proj.weight
//! has shape [..], expected [..]" rather than a panic deep inside a matmul.

use candle_core::{safetensors::MmapedSafetensors, DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::ModelError;

/// A source of named tensors.
pub trait TensorSource {
    /// Fetch `name` with the given shape, converted to `dtype` on `device`.
    fn get(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError>;
    /// Whether the source holds `name` (used for optional tensors such as an untied lm_head).
    fn contains(&self, name: &str) -> bool;
    /// Names never requested so far (reported as a warning: usually a naming mismatch).
    fn unused(&self) -> Vec<String>;
}

/// Memory-mapped safetensors checkpoint: `model.safetensors` or a sharded
/// `model.safetensors.index.json`.
pub struct SafetensorsSource {
    files: MmapedSafetensors,
    /// tensor name -> file holding it, for error messages.
    owner: HashMap<String, PathBuf>,
    used: BTreeSet<String>,
}

impl SafetensorsSource {
    /// Open the weights of a model folder.
    pub fn open_dir(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open_files(&[single])
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io { path: index.clone(), source: e })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: index.clone(),
                key: String::new(),
                msg: format!("not valid JSON: {e}"),
            })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config {
                path: index.clone(),
                key: "weight_map".into(),
                msg: "missing or not an object".into(),
            })?;
            let shards: BTreeSet<PathBuf> =
                map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
            Self::open_files(&shards.into_iter().collect::<Vec<_>>())
        } else {
            Err(ModelError::MissingFile {
                path: single,
                hint: "expected model.safetensors or model.safetensors.index.json".into(),
            })
        }
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self, ModelError> {
        for p in paths {
            if !p.exists() {
                return Err(ModelError::MissingFile { path: p.clone(), hint: "weights shard listed but absent".into() });
            }
        }
        // SAFETY: the files are mapped read-only; medrl never writes a checkpoint in place
        // (writes go to a temporary file that is renamed), so the mapping cannot change under us.
        let files = unsafe { MmapedSafetensors::multi(paths) }.map_err(|e| ModelError::Weights {
            path: paths.first().cloned().unwrap_or_default(),
            tensor: String::new(),
            msg: format!("cannot read safetensors: {e}"),
        })?;
        let mut owner = HashMap::new();
        for p in paths {
            // Read each header once for the name -> file table.
            let st = unsafe { MmapedSafetensors::new(p) }.map_err(|e| ModelError::Weights {
                path: p.clone(),
                tensor: String::new(),
                msg: format!("cannot read safetensors: {e}"),
            })?;
            for (name, _) in st.tensors() {
                owner.insert(name, p.clone());
            }
        }
        Ok(Self { files, owner, used: BTreeSet::new() })
    }
}

impl TensorSource for SafetensorsSource {
    fn get(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let path = self.owner.get(name).cloned().ok_or_else(|| ModelError::MissingTensor {
            tensor: name.into(),
            path: self.owner.values().next().cloned().unwrap_or_default(),
        })?;
        self.used.insert(name.to_string());
        let t = self.files.load(name, &Device::Cpu).map_err(|e| ModelError::Weights {
            path: path.clone(),
            tensor: name.into(),
            msg: e.to_string(),
        })?;
        check_shape(&t, name, shape, &path)?;
        t.to_dtype(dtype)
            .and_then(|t| t.to_device(device))
            .map_err(|e| ModelError::Weights { path, tensor: name.into(), msg: e.to_string() })
    }
    fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }
    fn unused(&self) -> Vec<String> {
        self.owner.keys().filter(|k| !self.used.contains(*k)).cloned().collect()
    }
}

/// Tensors held in memory (random init, tests, merged LoRA weights).
pub struct MapSource {
    pub tensors: HashMap<String, Tensor>,
    pub origin: PathBuf,
    used: BTreeSet<String>,
}

impl MapSource {
    pub fn new(tensors: HashMap<String, Tensor>, origin: impl Into<PathBuf>) -> Self {
        Self { tensors, origin: origin.into(), used: BTreeSet::new() }
    }
}

impl TensorSource for MapSource {
    fn get(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { tensor: name.into(), path: self.origin.clone() })?;
        self.used.insert(name.to_string());
        check_shape(t, name, shape, &self.origin)?;
        t.to_dtype(dtype).and_then(|t| t.to_device(device)).map_err(|e| ModelError::Weights {
            path: self.origin.clone(),
            tensor: name.into(),
            msg: e.to_string(),
        })
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn unused(&self) -> Vec<String> {
        self.tensors.keys().filter(|k| !self.used.contains(*k)).cloned().collect()
    }
}

fn check_shape(t: &Tensor, name: &str, shape: &[usize], path: &Path) -> Result<(), ModelError> {
    if t.dims() != shape {
        return Err(ModelError::ShapeMismatch {
            path: path.into(),
            tensor: name.into(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Write tensors to `path` atomically: a temporary file in the same folder, fsynced, then
/// renamed over the target, so a crash never leaves a truncated checkpoint behind.
pub fn save_safetensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), ModelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io { path: dir.into(), source: e })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("weights"),
        std::process::id()
    ));
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|e| ModelError::Weights { path: path.into(), tensor: String::new(), msg: e.to_string() })?;
    candle_core::safetensors::save(&cpu, &tmp)
        .map_err(|e| ModelError::Weights { path: tmp.clone(), tensor: String::new(), msg: e.to_string() })?;
    crate::fsutil::sync_and_rename(&tmp, path).map_err(|e| ModelError::Io { path: path.into(), source: e })
}
