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
    /// tensor name -> shape, from the headers.
    shapes: HashMap<String, Vec<usize>>,
    used: BTreeSet<String>,
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderEntry {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    pub offsets: (usize, usize),
}

fn file_err(path: &Path, msg: String) -> ModelError {
    ModelError::WeightsFile { path: path.into(), msg }
}

/// Read and check the header of a safetensors file without mapping its data: the header length,
/// its JSON, every tensor's byte size against its dtype and shape, and that the file holds all
/// the data the header describes. A truncated file (an interrupted download or copy) is reported
/// as such, with the sizes, instead of as a generic parse error.
pub fn read_safetensors_header(path: &Path) -> Result<std::collections::BTreeMap<String, HeaderEntry>, ModelError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
    let len = f.metadata().map_err(|e| ModelError::Io { path: path.into(), source: e })?.len();
    if len < 8 {
        return Err(file_err(path, format!("truncated safetensors file: {len} bytes, too short for the 8-byte header length")));
    }
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
    let n = u64::from_le_bytes(n);
    // safetensors caps headers at 100 MB; a larger length is not a safetensors file at all.
    if n > 100_000_000 {
        return Err(file_err(path, format!("not a safetensors file (header length {n} bytes)")));
    }
    if 8 + n > len {
        return Err(file_err(path, format!("truncated safetensors file: the header is {n} bytes but only {} follow the length prefix", len - 8)));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| ModelError::Io { path: path.into(), source: e })?;
    let json: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| file_err(path, format!("not a safetensors file: the header is not valid JSON ({e})")))?;
    let obj = json.as_object().ok_or_else(|| file_err(path, "not a safetensors file: the header is not a JSON object".into()))?;
    let mut out = std::collections::BTreeMap::new();
    let mut data_end = 0usize;
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |msg: String| ModelError::Weights { path: path.into(), tensor: name.clone(), msg };
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("header entry has no dtype".into()))?.to_string();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| bad("header entry has no valid shape".into()))?;
        let offsets = v
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|a| Some((a.first()?.as_u64()? as usize, a.get(1)?.as_u64()? as usize)))
            .filter(|(a, b)| a <= b)
            .ok_or_else(|| bad("header entry has no valid data_offsets".into()))?;
        // Sizes of the dtypes medrl reads; others (sub-byte formats) are left to the loader.
        let bits: Option<usize> = match dtype.as_str() {
            "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => Some(8),
            "U16" | "I16" | "F16" | "BF16" => Some(16),
            "U32" | "I32" | "F32" => Some(32),
            "U64" | "I64" | "F64" => Some(64),
            _ => None,
        };
        if let Some(bits) = bits {
            let elems = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
            if elems.checked_mul(bits).map(|b| b / 8) != Some(offsets.1 - offsets.0) {
                return Err(bad(format!("shape {shape:?} of {dtype} does not match its {} data bytes", offsets.1 - offsets.0)));
            }
        }
        data_end = data_end.max(offsets.1);
        out.insert(name.clone(), HeaderEntry { dtype, shape, offsets });
    }
    let have = len - 8 - n;
    if (data_end as u64) > have {
        return Err(file_err(path, format!("truncated safetensors file: the header describes {data_end} bytes of tensor data but the file holds {have}")));
    }
    Ok(out)
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
        // Check each header first (a truncated file is named as such), and build the
        // name -> file and name -> shape tables from them.
        let mut owner = HashMap::new();
        let mut shapes = HashMap::new();
        for p in paths {
            for (name, entry) in read_safetensors_header(p)? {
                owner.insert(name.clone(), p.clone());
                shapes.insert(name, entry.shape);
            }
        }
        // SAFETY: the files are mapped read-only; medrl never writes a checkpoint in place
        // (writes go to a temporary file that is renamed), so the mapping cannot change under us.
        let files = unsafe { MmapedSafetensors::multi(paths) }
            .map_err(|e| file_err(paths.first().map(PathBuf::as_path).unwrap_or(Path::new("")), format!("cannot read safetensors: {e}")))?;
        Ok(Self { files, owner, shapes, used: BTreeSet::new() })
    }

    /// Check, from the headers alone (no tensor data is read), that every tensor of `expected`
    /// is present with its shape.
    pub fn check_shapes(&self, expected: &[(String, Vec<usize>)]) -> Result<(), ModelError> {
        for (name, shape) in expected {
            let found = self.shapes.get(name).ok_or_else(|| ModelError::MissingTensor {
                tensor: name.clone(),
                path: self.owner.values().next().cloned().unwrap_or_default(),
            })?;
            if found != shape {
                return Err(ModelError::ShapeMismatch { path: self.owner[name].clone(), tensor: name.clone(), expected: shape.clone(), found: found.clone() });
            }
        }
        Ok(())
    }

    /// Tensors and files in the checkpoint.
    pub fn counts(&self) -> (usize, usize) {
        (self.shapes.len(), self.owner.values().collect::<BTreeSet<_>>().len())
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
        .map_err(|e| file_err(path, e.to_string()))?;
    let written = candle_core::safetensors::save(&cpu, &tmp)
        .map_err(|e| file_err(&tmp, e.to_string()))
        .and_then(|_| medrl_base::fsutil::sync_and_rename(&tmp, path).map_err(|e| ModelError::Io { path: path.into(), source: e }));
    if written.is_err() {
        // A failed write (a full disk) leaves no temporary behind for the next attempt to pile on.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Hugging Face's default shard size (`save_pretrained(max_shard_size="5GB")`).
pub const DEFAULT_SHARD_BYTES: usize = 5_000_000_000;

/// Write a model's tensors into `dir` as Hugging Face lays them out: one `model.safetensors`
/// when they total at most `max_shard_bytes`, else shards `model-00001-of-0000N.safetensors`
/// (tensors in the given order, a shard closed when the next tensor would take it past the
/// limit; a tensor larger than the limit gets a shard of its own) and
/// `model.safetensors.index.json` (`metadata.total_size`, `weight_map`). Every file is written
/// atomically and the index last, so an index names only complete shards; the files of an
/// earlier save in the other layout are removed (a stale `model.safetensors` would shadow the
/// index). Tensors reach the host one shard at a time.
pub fn save_model_safetensors(tensors: &[(String, Tensor)], dir: &Path, max_shard_bytes: usize) -> Result<Vec<PathBuf>, ModelError> {
    let plan: Vec<(String, Vec<usize>, DType)> = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec(), t.dtype())).collect();
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    save_model_safetensors_streamed(&plan, &mut |name| Ok(by_name[name].clone()), dir, max_shard_bytes)
}

/// [`save_model_safetensors`] for tensors that do not exist yet: `plan` lists each tensor's
/// name, shape and dtype in file order, and `fetch` makes one when its shard is written (a
/// merged export computes each weight from the base checkpoint and the adapter here), so at
/// most one shard's tensors are alive at once, whatever the model's size. `fetch` must return
/// the planned shape and dtype.
pub fn save_model_safetensors_streamed(
    plan: &[(String, Vec<usize>, DType)],
    fetch: &mut dyn FnMut(&str) -> Result<Tensor, ModelError>,
    dir: &Path,
    max_shard_bytes: usize,
) -> Result<Vec<PathBuf>, ModelError> {
    let bytes = |(_, shape, dtype): &(String, Vec<usize>, DType)| shape.iter().product::<usize>() * dtype.size_in_bytes();
    let total: usize = plan.iter().map(bytes).sum();
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0usize;
    for (i, entry) in plan.iter().enumerate() {
        let b = bytes(entry);
        if size + b > max_shard_bytes && !shards.last().expect("one shard").is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        shards.last_mut().expect("one shard").push(i);
        size += b;
    }
    let mut shard_tensors = |idx: &[usize], file: &Path| -> Result<HashMap<String, Tensor>, ModelError> {
        idx.iter()
            .map(|&i| {
                let (name, shape, dtype) = &plan[i];
                let t = fetch(name)?;
                if t.dims() != shape.as_slice() || t.dtype() != *dtype {
                    return Err(file_err(file, format!("tensor {name}: made as {:?} {:?}, planned as {dtype:?} {shape:?}", t.dtype(), t.dims())));
                }
                Ok((name.clone(), t))
            })
            .collect()
    };
    let n = shards.len();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut files = Vec::with_capacity(n + 1);
    if n == 1 {
        save_safetensors_atomic(&shard_tensors(&shards[0], &single)?, &single)?;
        files.push(single.clone());
    } else {
        let mut weight_map = serde_json::Map::new();
        for (k, idx) in shards.iter().enumerate() {
            let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
            let path = dir.join(&name);
            save_safetensors_atomic(&shard_tensors(idx, &path)?, &path)?;
            for &i in idx {
                weight_map.insert(plan[i].0.clone(), name.clone().into());
            }
            files.push(dir.join(name));
        }
        let v = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        medrl_base::fsutil::write_json_atomic(&index, &v).map_err(|e| ModelError::Io { path: index.clone(), source: e })?;
        files.push(index.clone());
    }
    // Weight files of an earlier save that this one did not write.
    let ours: BTreeSet<&PathBuf> = files.iter().collect();
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::Io { path: dir.into(), source: e })?;
    for p in entries.flatten().map(|e| e.path()) {
        let shard = p.file_name().and_then(|f| f.to_str()).is_some_and(|f| f.starts_with("model-") && f.ends_with(".safetensors"));
        if (shard || p == single || p == index) && !ours.contains(&p) {
            std::fs::remove_file(&p).map_err(|e| ModelError::Io { path: p.clone(), source: e })?;
        }
    }
    Ok(files)
}

/// The first tensor (by name) that holds a NaN or an infinity, with one device read for all of
/// them. `t - t` is 0 for every finite value and NaN otherwise, so its sum flags exactly the
/// non-finite tensors (a plain sum could overflow on large finite weights).
pub fn first_nonfinite<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> candle_core::Result<Option<String>> {
    let mut named: Vec<(&str, &Tensor)> = tensors.into_iter().filter(|(_, t)| t.dtype().is_float() && t.elem_count() > 0).collect();
    named.sort_by_key(|(n, _)| *n);
    let mut sums = Vec::with_capacity(named.len());
    for (_, t) in &named {
        let t = t.detach();
        sums.push((&t - &t)?.sum_all()?.to_dtype(DType::F32)?);
    }
    let Some(first) = sums.first() else { return Ok(None) };
    let vals: Vec<f32> = if sums.iter().all(|s| s.device().same_device(first.device())) {
        Tensor::stack(&sums, 0)?.to_vec1()?
    } else {
        sums.iter().map(|s| s.to_scalar::<f32>()).collect::<candle_core::Result<_>>()?
    };
    Ok(named.iter().zip(vals).find(|(_, v)| !v.is_finite()).map(|((n, _), _)| n.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn save(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn truncated_files_are_named_with_their_sizes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.safetensors");
        save(&p, &[("a.weight", Tensor::ones((4, 8), DType::F32, &Device::Cpu).unwrap())]);
        let header = read_safetensors_header(&p).unwrap();
        assert_eq!(header["a.weight"].shape, vec![4, 8]);
        let bytes = std::fs::read(&p).unwrap();
        for cut in [bytes.len() - 10, 20, 4] {
            std::fs::write(&p, &bytes[..cut]).unwrap();
            for e in [read_safetensors_header(&p).unwrap_err().to_string(), SafetensorsSource::open_files(&[p.clone()]).err().unwrap().to_string()] {
                assert!(e.contains("w.safetensors") && e.contains("truncated") && !e.contains("tensor ``"), "{e}");
            }
        }
    }

    #[test]
    fn nonfinite_tensors_are_found_by_name() {
        let dev = Device::Cpu;
        let ok = Tensor::new(&[1.0f32, 3.0e38, -3.0e38], &dev).unwrap();
        let nan = Tensor::new(&[1.0f32, f32::NAN], &dev).unwrap();
        let inf = Tensor::new(&[f32::NEG_INFINITY], &dev).unwrap().to_dtype(DType::BF16).unwrap();
        assert_eq!(first_nonfinite([("a", &ok)]).unwrap(), None, "large finite values are finite");
        assert_eq!(first_nonfinite([("a", &ok), ("z", &nan), ("m", &inf)]).unwrap().as_deref(), Some("m"));
        assert_eq!(first_nonfinite([("a", &ok), ("z", &nan)]).unwrap().as_deref(), Some("z"));
    }
}
