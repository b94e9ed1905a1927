//! Build HF `tokenizer.json` / `tokenizer_config.json` / `special_tokens_map.json`
//! from the GGUF `tokenizer.*` metadata.
//!
//! Supported `tokenizer.ggml.model` values:
//! * `gpt2` — byte-level BPE. The pre-tokenizer is chosen from `tokenizer.ggml.pre`
//!   (see [`gpt2_pre_tokenizer`]); unknown pre types are an error rather than a guess,
//!   because a wrong pre-tokenizer silently changes token ids.
//! * `llama` — SentencePiece BPE with byte fallback (Llama 1/2 style); merges are
//!   rebuilt from the token scores the way HF's SentencePiece converter does.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Value as Json};

use super::meta::{self, Metadata};
use super::{GgufImportError, LlamaHParams};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The JSON documents for the tokenizer files.
pub(crate) struct TokenizerFiles {
    pub tokenizer_json: Json,
    pub tokenizer_config_json: Json,
    pub special_tokens_map_json: Json,
}

/// Llama 3's split regex (HF tokenizer.json `Split` pattern; llama.cpp pre type `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// HF pre-tokenizer equivalent to llama.cpp's `tokenizer.ggml.pre` for byte-level BPE.
///
/// * `smollm` / `starcoder`: llama.cpp splits on `\p{N}` (every digit alone), then the
///   GPT-2 regex. HF's SmolLM2/StarCoder tokenizer.json say the same thing as
///   `Sequence[Digits(individual_digits), ByteLevel(use_regex)]`.
/// * `gpt2` / `default` (and a missing key, which llama.cpp treats as default): plain
///   ByteLevel with the GPT-2 regex.
/// * `llama3` / `llama-bpe`: the Llama 3 split regex, then ByteLevel without regex.
pub fn gpt2_pre_tokenizer(pre: &str) -> Option<Json> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]
        }),
        "llama3" | "llama-bpe" | "llama-v3" => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]
        }),
        _ => return None,
    })
}

fn tok_err(path: &Path, reason: impl Into<String>) -> GgufImportError {
    GgufImportError::Tokenizer {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn int_array(md: &Metadata, key: &str, path: &Path) -> Result<Vec<i32>, GgufImportError> {
    meta::get_array(md, key, path)?
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            Value::I32(x) => Ok(x),
            Value::U32(x) if x <= i32::MAX as u32 => Ok(x as i32),
            Value::I8(x) => Ok(x as i32),
            Value::U8(x) => Ok(x as i32),
            ref v => Err(GgufImportError::BadMetadata {
                path: path.to_path_buf(),
                key: format!("{key}[{i}]"),
                expected: "int32".into(),
                found: format!("{v:?}"),
            }),
        })
        .collect()
}

fn float_array(md: &Metadata, key: &str, path: &Path) -> Result<Vec<f32>, GgufImportError> {
    meta::get_array(md, key, path)?
        .iter()
        .enumerate()
        .map(|(i, v)| match *v {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            ref v => Err(GgufImportError::BadMetadata {
                path: path.to_path_buf(),
                key: format!("{key}[{i}]"),
                expected: "float32".into(),
                found: format!("{v:?}"),
            }),
        })
        .collect()
}

pub(crate) fn build_tokenizer_files(
    md: &Metadata,
    hp: &LlamaHParams,
    path: &Path,
) -> Result<TokenizerFiles, GgufImportError> {
    let model = meta::get_string(md, "tokenizer.ggml.model", path)?;
    let tokens = meta::string_array(md, "tokenizer.ggml.tokens", path)?;
    if tokens.is_empty() || tokens.len() > hp.vocab_size {
        return Err(GgufImportError::BadMetadata {
            path: path.to_path_buf(),
            key: "tokenizer.ggml.tokens".into(),
            expected: format!("1..={} tokens (rows of token_embd.weight)", hp.vocab_size),
            found: format!("{} tokens", tokens.len()),
        });
    }
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(_) => int_array(md, "tokenizer.ggml.token_type", path)?,
        None => vec![token_type::NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(GgufImportError::BadMetadata {
            path: path.to_path_buf(),
            key: "tokenizer.ggml.token_type".into(),
            expected: format!("{} entries (one per token)", tokens.len()),
            found: format!("{} entries", types.len()),
        });
    }
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if vocab.insert(t.to_string(), json!(id)).is_some() {
            return Err(tok_err(path, format!("duplicate token {t:?} (id {id})")));
        }
    }
    let add_bos = meta::opt_bool(md, "tokenizer.ggml.add_bos_token", path)?;
    let add_eos = meta::opt_bool(md, "tokenizer.ggml.add_eos_token", path)?.unwrap_or(false);
    let name_of = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).map(|s| s.to_string()));
    let unk_id = meta::opt_u64(md, "tokenizer.ggml.unknown_token_id", path)?
        .filter(|&i| (i as usize) < tokens.len())
        .map(|i| i as u32);
    let bos = name_of(hp.bos_token_id);
    let eos = name_of(hp.eos_token_id);
    let pad = name_of(hp.pad_token_id);
    let unk = name_of(unk_id);

    // Control/unknown tokens are HF "special" added tokens; user-defined ones are added
    // (matched verbatim before the model) but not special.
    let added_tokens: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, &ty)| {
            matches!(
                ty,
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN
            )
        })
        .map(|(id, &ty)| {
            json!({
                "id": id,
                "content": tokens[id],
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": ty != token_type::USER_DEFINED,
            })
        })
        .collect();

    let (add_bos, normalizer, pre_tokenizer, decoder, model_json) = match model {
        "gpt2" => {
            let pre = meta::opt_string(md, "tokenizer.ggml.pre", path)?.unwrap_or("default");
            let pre_tok = gpt2_pre_tokenizer(pre).ok_or_else(|| {
                tok_err(
                    path,
                    format!("unsupported tokenizer.ggml.pre {pre:?} for a gpt2 (byte-level BPE) tokenizer"),
                )
            })?;
            let merges = meta::string_array(md, "tokenizer.ggml.merges", path)?
                .iter()
                .enumerate()
                .map(|(i, m)| match m.split_once(' ') {
                    Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                        Ok(json!([a, b]))
                    }
                    _ => Err(tok_err(
                        path,
                        format!("tokenizer.ggml.merges[{i}] = {m:?} is not \"a b\""),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ignore_merges = matches!(pre, "llama3" | "llama-bpe" | "llama-v3");
            let model_json = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            });
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            // llama.cpp defaults add_bos to false for BPE vocabularies.
            (
                add_bos.unwrap_or(false),
                Json::Null,
                pre_tok,
                decoder,
                model_json,
            )
        }
        "llama" => {
            let scores = float_array(md, "tokenizer.ggml.scores", path)?;
            if scores.len() != tokens.len() {
                return Err(GgufImportError::BadMetadata {
                    path: path.to_path_buf(),
                    key: "tokenizer.ggml.scores".into(),
                    expected: format!("{} entries (one per token)", tokens.len()),
                    found: format!("{} entries", scores.len()),
                });
            }
            let merges = spm_merges(&tokens, &types, &scores);
            let model_json = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": unk,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            });
            let normalizer = json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            ]});
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]});
            // llama.cpp defaults add_bos to true for SentencePiece vocabularies.
            (
                add_bos.unwrap_or(true),
                normalizer,
                Json::Null,
                decoder,
                model_json,
            )
        }
        other => {
            return Err(tok_err(
                path,
                format!("unsupported tokenizer.ggml.model {other:?} (supported: gpt2, llama)"),
            ))
        }
    };

    let post_processor = if add_bos || add_eos {
        let bos_tok = bos
            .clone()
            .filter(|_| add_bos)
            .map(|b| (b, hp.bos_token_id.unwrap_or(0)));
        if add_bos && bos_tok.is_none() {
            return Err(tok_err(
                path,
                "add_bos_token is set but there is no bos_token_id",
            ));
        }
        let eos_tok = eos
            .clone()
            .filter(|_| add_eos)
            .map(|e| (e, hp.eos_token_id.unwrap_or(0)));
        if add_eos && eos_tok.is_none() {
            return Err(tok_err(
                path,
                "add_eos_token is set but there is no eos_token_id",
            ));
        }
        template_processing(bos_tok, eos_tok)
    } else if model == "gpt2" {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    } else {
        Json::Null
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model_json,
    });
    // Fail here, naming the GGUF file, rather than later in whoever loads the folder.
    let text = serde_json::to_string(&tokenizer_json).map_err(|e| tok_err(path, e.to_string()))?;
    tokenizers::Tokenizer::from_bytes(text.as_bytes())
        .map_err(|e| tok_err(path, format!("generated tokenizer.json does not load: {e}")))?;

    let chat_template = meta::opt_string(md, "tokenizer.chat_template", path)?;
    let mut added_decoder = serde_json::Map::new();
    for t in &added_tokens {
        added_decoder.insert(
            t["id"].to_string(),
            json!({
                "content": t["content"],
                "lstrip": false, "normalized": false, "rstrip": false,
                "single_word": false, "special": t["special"],
            }),
        );
    }
    let tokenizer_config_json = json!({
        "tokenizer_class": if model == "gpt2" { "GPT2Tokenizer" } else { "LlamaTokenizer" },
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": unk,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": false,
        "model_max_length": hp.max_position_embeddings,
        "added_tokens_decoder": added_decoder,
    });
    let mut special_tokens_map = serde_json::Map::new();
    for (k, v) in [
        ("bos_token", &bos),
        ("eos_token", &eos),
        ("pad_token", &pad),
        ("unk_token", &unk),
    ] {
        if let Some(v) = v {
            special_tokens_map.insert(k.into(), json!(v));
        }
    }
    Ok(TokenizerFiles {
        tokenizer_json,
        tokenizer_config_json,
        special_tokens_map_json: Json::Object(special_tokens_map),
    })
}

fn template_processing(bos: Option<(String, u32)>, eos: Option<(String, u32)>) -> Json {
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut special = serde_json::Map::new();
    let sp = |s: &str| json!({"SpecialToken": {"id": s, "type_id": 0}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    // single: [bos] $A [eos]; pair: [bos] $A [eos] [bos] $B [eos] (HF Llama convention).
    for (i, part) in ["A", "B"].iter().enumerate() {
        let mut v = Vec::new();
        if let Some((b, _)) = &bos {
            v.push(sp(b));
        }
        v.push(seq(part, i as u32));
        if let Some((e, _)) = &eos {
            v.push(sp(e));
        }
        if i == 0 {
            single.extend(v.clone());
        }
        pair.extend(v);
    }
    for (tok, id) in bos.iter().chain(eos.iter()) {
        special.insert(
            tok.clone(),
            json!({"id": tok, "ids": [id], "tokens": [tok]}),
        );
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special})
}

/// Rebuild BPE merges from SentencePiece scores: every split of a token into two
/// tokens is a merge, ordered by the merged token's score (higher first), then by
/// the merged token's id, then by the pieces' ids.
fn spm_merges(tokens: &[&str], types: &[i32], scores: &[f32]) -> Vec<Json> {
    let mergeable = |id: usize| matches!(types[id], token_type::NORMAL | token_type::USER_DEFINED);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| mergeable(*i))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if !mergeable(id) {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&t[..k]), ids.get(&t[k..])) {
                merges.push((scores[id], id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges
        .into_iter()
        .map(|(_, _, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}
