//! Reading, validating, dequantizing and renaming the GGUF tensors.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};

use super::{GgufImportError, LlamaHParams};

/// GGML types candle 0.11 can dequantize (Q8_1 and Q8_K parse but cannot be loaded).
pub const SUPPORTED_TYPES: &[GgmlDType] = &[
    GgmlDType::F32,
    GgmlDType::F16,
    GgmlDType::BF16,
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q2K,
    GgmlDType::Q3K,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// llama.cpp's name for a GGML type id (ggml.h `enum ggml_type`).
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2",
        5 => "Q4_3",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return format!("unknown type id {id}"),
    };
    name.to_string()
}

fn dtype_name(t: GgmlDType) -> String {
    let id = match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::BF16 => 30,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
    };
    ggml_type_name(id)
}

fn supported_list() -> String {
    SUPPORTED_TYPES
        .iter()
        .map(|t| dtype_name(*t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse the GGUF header with candle; on failure, try to say which tensor has a
/// type candle does not know (candle's own message omits the tensor name).
pub(crate) fn read_content<R: Read + Seek>(
    reader: &mut R,
    path: &Path,
) -> Result<Content, GgufImportError> {
    match Content::read(reader) {
        Ok(c) => Ok(c),
        Err(e) => {
            if let Some((tensor, id)) = find_unknown_type_tensor(reader) {
                return Err(GgufImportError::UnsupportedTensorType {
                    path: path.to_path_buf(),
                    tensor,
                    ggml_type: ggml_type_name(id),
                    supported: supported_list(),
                });
            }
            Err(GgufImportError::Malformed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    }
}

/// Minimal independent walk over the GGUF header (diagnostics only): returns the
/// first tensor whose type id candle cannot parse. Any read problem gives None.
fn find_unknown_type_tensor<R: Read + Seek>(r: &mut R) -> Option<(String, u32)> {
    fn u32_<R: Read>(r: &mut R) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn u64_<R: Read>(r: &mut R) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn len<R: Read>(r: &mut R, v1: bool) -> Option<u64> {
        if v1 {
            u32_(r).map(u64::from)
        } else {
            u64_(r)
        }
    }
    fn skip<R: Seek>(r: &mut R, n: u64) -> Option<()> {
        r.seek(SeekFrom::Current(i64::try_from(n).ok()?))
            .ok()
            .map(|_| ())
    }
    fn skip_value<R: Read + Seek>(r: &mut R, ty: u32, v1: bool, depth: usize) -> Option<()> {
        match ty {
            0 | 1 | 7 => skip(r, 1),
            2 | 3 => skip(r, 2),
            4..=6 => skip(r, 4),
            10..=12 => skip(r, 8),
            8 => {
                let n = len(r, v1)?;
                skip(r, n)
            }
            9 if depth < 8 => {
                let elem = u32_(r)?;
                let n = len(r, v1)?;
                if n > (1 << 30) {
                    return None;
                }
                for _ in 0..n {
                    skip_value(r, elem, v1, depth + 1)?;
                }
                Some(())
            }
            _ => None,
        }
    }
    r.seek(SeekFrom::Start(0)).ok()?;
    let _magic = u32_(r)?;
    let v1 = u32_(r)? == 1;
    let n_tensors = len(r, v1)?;
    let n_kv = len(r, v1)?;
    for _ in 0..n_kv.min(1 << 20) {
        let klen = len(r, v1)?;
        skip(r, klen)?;
        let ty = u32_(r)?;
        skip_value(r, ty, v1, 0)?;
    }
    const KNOWN: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];
    for _ in 0..n_tensors.min(1 << 20) {
        let nlen = len(r, v1)?;
        if nlen > 1 << 16 {
            return None;
        }
        let mut name = vec![0u8; nlen as usize];
        r.read_exact(&mut name).ok()?;
        let n_dims = u32_(r)?;
        if n_dims > 4 {
            return None;
        }
        skip(r, n_dims as u64 * if v1 { 4 } else { 8 })?;
        let ty = u32_(r)?;
        if !KNOWN.contains(&ty) {
            return Some((String::from_utf8_lossy(&name).into_owned(), ty));
        }
        skip(r, 8)?;
    }
    None
}

/// Role of a tensor in the HF Llama layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q,
    K,
    Plain,
}

/// GGUF name, HF name, expected HF shape, kind.
fn expected_tensors(hp: &LlamaHParams) -> Vec<(String, String, Vec<usize>, Kind)> {
    let h = hp.hidden_size;
    let q_rows = hp.num_attention_heads * hp.head_dim;
    let kv_rows = hp.num_key_value_heads * hp.head_dim;
    let ffn = hp.intermediate_size;
    let mut v = vec![(
        "token_embd.weight".to_string(),
        "model.embed_tokens.weight".to_string(),
        vec![hp.vocab_size, h],
        Kind::Plain,
    )];
    for i in 0..hp.num_hidden_layers {
        let b = |g: &str| format!("blk.{i}.{g}.weight");
        let m = |n: &str| format!("model.layers.{i}.{n}.weight");
        v.push((b("attn_norm"), m("input_layernorm"), vec![h], Kind::Plain));
        v.push((b("attn_q"), m("self_attn.q_proj"), vec![q_rows, h], Kind::Q));
        v.push((
            b("attn_k"),
            m("self_attn.k_proj"),
            vec![kv_rows, h],
            Kind::K,
        ));
        v.push((
            b("attn_v"),
            m("self_attn.v_proj"),
            vec![kv_rows, h],
            Kind::Plain,
        ));
        v.push((
            b("attn_output"),
            m("self_attn.o_proj"),
            vec![h, q_rows],
            Kind::Plain,
        ));
        v.push((
            b("ffn_norm"),
            m("post_attention_layernorm"),
            vec![h],
            Kind::Plain,
        ));
        v.push((b("ffn_gate"), m("mlp.gate_proj"), vec![ffn, h], Kind::Plain));
        v.push((b("ffn_up"), m("mlp.up_proj"), vec![ffn, h], Kind::Plain));
        v.push((b("ffn_down"), m("mlp.down_proj"), vec![h, ffn], Kind::Plain));
    }
    v.push((
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        Kind::Plain,
    ));
    if !hp.tie_word_embeddings {
        v.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![hp.vocab_size, h],
            Kind::Plain,
        ));
    }
    v
}

/// Undo llama.cpp's `LlamaModel.permute` on a Q or K projection weight `[rows, cols]`.
///
/// llama.cpp stores each head's rows reordered so that rotary pairs are adjacent
/// (row `2*j + i` in GGUF holds HF row `i*half + j`, `half = head_dim/2`, `i ∈ {0,1}`).
/// `n_head` is the number of heads of this projection (KV heads for `attn_k`).
pub fn unpermute_qk(t: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = t.dims2()?;
    if n_head == 0 || rows % (2 * n_head) != 0 {
        candle_core::bail!("{rows} rows cannot be split into {n_head} heads of even size");
    }
    t.reshape((n_head, rows / n_head / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// One output tensor: where it comes from and what it must look like.
pub(crate) struct PlannedTensor {
    gguf_name: String,
    hf_name: String,
    shape: Vec<usize>,
    kind: Kind,
}

/// Validated conversion plan: every tensor present, supported, well-shaped and
/// inside the file. Nothing has been dequantized yet.
pub(crate) struct Plan {
    /// Sorted by HF name (the order written to model.safetensors).
    tensors: Vec<PlannedTensor>,
    pub tensor_types: BTreeMap<String, usize>,
    pub n_params: u64,
}

impl Plan {
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
}

pub(crate) fn plan<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    hp: &LlamaHParams,
    path: &Path,
) -> Result<Plan, GgufImportError> {
    let expected = expected_tensors(hp);
    let expected_names: HashSet<&str> = expected.iter().map(|e| e.0.as_str()).collect();
    let mut extra: Vec<&String> = content
        .tensor_infos
        .keys()
        .filter(|k| !expected_names.contains(k.as_str()))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(GgufImportError::UnexpectedTensor {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            reason: format!(
                "{} layers, tied embeddings: {}",
                hp.num_hidden_layers, hp.tie_word_embeddings
            ),
        });
    }
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|source| GgufImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;

    let mut tensor_types = BTreeMap::new();
    let mut n_params = 0u64;
    let mut tensors = Vec::with_capacity(expected.len());
    for (gguf_name, hf_name, shape, kind) in expected {
        let ti =
            content
                .tensor_infos
                .get(&gguf_name)
                .ok_or_else(|| GgufImportError::MissingTensor {
                    path: path.to_path_buf(),
                    tensor: gguf_name.clone(),
                })?;
        if !SUPPORTED_TYPES.contains(&ti.ggml_dtype) {
            return Err(GgufImportError::UnsupportedTensorType {
                path: path.to_path_buf(),
                tensor: gguf_name.clone(),
                ggml_type: dtype_name(ti.ggml_dtype),
                supported: supported_list(),
            });
        }
        if ti.shape.dims() != shape.as_slice() {
            return Err(GgufImportError::TensorShape {
                path: path.to_path_buf(),
                tensor: gguf_name.clone(),
                expected: shape.clone(),
                actual: ti.shape.dims().to_vec(),
            });
        }
        // Checked arithmetic: dims come from the file and could overflow.
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let bytes = elems
            .map(|n| n / ti.ggml_dtype.block_size() as u64)
            .and_then(|blocks| blocks.checked_mul(ti.ggml_dtype.type_size() as u64));
        let end = bytes.and_then(|b| {
            b.checked_add(content.tensor_data_offset)
                .and_then(|x| x.checked_add(ti.offset))
        });
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufImportError::TensorData {
                path: path.to_path_buf(),
                tensor: gguf_name.clone(),
                reason: format!(
                    "data at offset {} extends past the end of the file ({file_len} bytes); truncated?",
                    ti.offset
                ),
            });
        }
        n_params += elems.unwrap_or(0);
        *tensor_types.entry(dtype_name(ti.ggml_dtype)).or_insert(0) += 1;
        tensors.push(PlannedTensor {
            gguf_name,
            hf_name,
            shape,
            kind,
        });
    }
    tensors.sort_by(|a, b| a.hf_name.cmp(&b.hf_name));
    Ok(Plan {
        tensors,
        tensor_types,
        n_params,
    })
}

/// Dequantize, un-permute and stream the planned tensors into an F32 safetensors
/// file, one tensor in memory at a time (the header is computable from the plan).
/// Writes `out` via a `.partial` file renamed at the end.
pub(crate) fn write_safetensors<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    plan: &Plan,
    hp: &LlamaHParams,
    out: &Path,
    gguf: &Path,
) -> Result<(), GgufImportError> {
    let werr = |reason: String| GgufImportError::Write {
        path: gguf.to_path_buf(),
        file: out.to_path_buf(),
        reason,
    };
    let mut header = serde_json::Map::new();
    // transformers expects format=pt in the header metadata.
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for t in &plan.tensors {
        let n = t.shape.iter().map(|&d| d as u64).product::<u64>() * 4;
        header.insert(
            t.hf_name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| werr(e.to_string()))?;
    // Pad with spaces so the data starts 8-byte aligned (as the safetensors crate does).
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let partial = out.with_extension("safetensors.partial");
    let file = std::fs::File::create(&partial).map_err(|e| werr(e.to_string()))?;
    let w = std::io::BufWriter::with_capacity(1 << 20, file);
    let res = write_data(content, reader, plan, hp, &header, w, gguf, &werr)
        .and_then(|()| std::fs::rename(&partial, out).map_err(|e| werr(e.to_string())));
    if res.is_err() {
        // Do not leave a half-written model behind.
        let _ = std::fs::remove_file(&partial);
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn write_data<R: Read + Seek, W: std::io::Write>(
    content: &Content,
    reader: &mut R,
    plan: &Plan,
    hp: &LlamaHParams,
    header: &[u8],
    mut w: W,
    gguf: &Path,
    werr: &dyn Fn(String) -> GgufImportError,
) -> Result<(), GgufImportError> {
    let io = |e: std::io::Error| werr(e.to_string());
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(header).map_err(io)?;
    for t in &plan.tensors {
        let data_err = |e: candle_core::Error| GgufImportError::TensorData {
            path: gguf.to_path_buf(),
            tensor: t.gguf_name.clone(),
            reason: e.to_string(),
        };
        let q = content
            .tensor(reader, &t.gguf_name, &Device::Cpu)
            .map_err(data_err)?;
        let mut x = q
            .dequantize(&Device::Cpu)
            .and_then(|x| x.to_dtype(candle_core::DType::F32))
            .map_err(data_err)?;
        x = match t.kind {
            Kind::Q => unpermute_qk(&x, hp.num_attention_heads).map_err(data_err)?,
            Kind::K => unpermute_qk(&x, hp.num_key_value_heads).map_err(data_err)?,
            Kind::Plain => x,
        };
        if x.dims() != t.shape.as_slice() {
            return Err(GgufImportError::TensorShape {
                path: gguf.to_path_buf(),
                tensor: t.gguf_name.clone(),
                expected: t.shape.clone(),
                actual: x.dims().to_vec(),
            });
        }
        let v: Vec<f32> = x
            .flatten_all()
            .and_then(|x| x.to_vec1())
            .map_err(data_err)?;
        let mut bytes = Vec::with_capacity(v.len() * 4);
        for f in v {
            bytes.extend_from_slice(&f.to_le_bytes());
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)
}
