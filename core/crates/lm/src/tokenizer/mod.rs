//! Tokenizers (Hugging Face `tokenizer.json`), chat templates and generation defaults.

pub mod chat;
pub mod tools;
pub mod train;

use serde_json::Value;
use std::path::{Path, PathBuf};

pub use chat::{ChatMessage, ChatTemplate};


#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: missing file ({hint})")]
    Missing { path: PathBuf, hint: String },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("chat template of {path}: {msg}")]
    Template { path: PathBuf, msg: String },
}

/// A special token as `tokenizer_config.json` stores it: a string or `{"content": ...}`.
fn special_token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// Text <-> token ids, with the model's special tokens and chat template.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    pub chat_template: Option<ChatTemplate>,
    /// Whether plain (non-chat) encoding prepends the BOS token (`add_bos_token`).
    pub add_bos_token: bool,
    path: PathBuf,
}

impl TextTokenizer {
    /// Load `tokenizer.json` and (if present) `tokenizer_config.json` from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(TokenizerError::Missing { path, hint: "medrl needs a fast tokenizer (tokenizer.json)".into() });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Invalid { path: path.clone(), msg: e.to_string() })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| TokenizerError::Invalid { path: cfg_path.clone(), msg: e.to_string() })?;
            serde_json::from_str(&text)
                .map_err(|e| TokenizerError::Invalid { path: cfg_path.clone(), msg: format!("not valid JSON: {e}") })?
        } else {
            Value::Null
        };
        let bos_token = special_token(cfg.get("bos_token"));
        let eos_token = special_token(cfg.get("eos_token"));
        let pad_token = special_token(cfg.get("pad_token"));
        let unk_token = special_token(cfg.get("unk_token"));
        let template_src = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // Some tokenizers ship several named templates; "default" is what transformers uses.
            Some(Value::Array(items)) => items
                .iter()
                .find(|i| i.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| items.first())
                .and_then(|i| i.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from),
            _ => None,
        };
        // Newer checkpoints keep the template in a separate file.
        let template_src = template_src.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        let mut specials = serde_json::Map::new();
        for (k, v) in [("bos_token", &bos_token), ("eos_token", &eos_token), ("pad_token", &pad_token), ("unk_token", &unk_token)] {
            if let Some(v) = v {
                specials.insert(k.into(), Value::String(v.clone()));
            }
        }
        let chat_template = template_src
            .map(|src| ChatTemplate::new(&src, specials, &cfg_path))
            .transpose()?;
        let add_bos_token = cfg.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Self { inner, bos_token, eos_token, pad_token, unk_token, chat_template, add_bos_token, path })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encode text. `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS);
    /// rendered chat templates already contain their special tokens and use `false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Render `messages` with the chat template (as `apply_chat_template(tokenize=False)`).
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let t = self.chat_template.as_ref().ok_or_else(|| TokenizerError::Template {
            path: self.path.clone(),
            msg: "this tokenizer has no chat_template; drop --chat or add one to tokenizer_config.json".into(),
        })?;
        t.render(messages, add_generation_prompt)
    }

    /// [`TextTokenizer::apply_chat_template`] with `tools` given to the template.
    pub fn apply_chat_template_with_tools(&self, messages: &[ChatMessage], tools: Option<&Value>, add_generation_prompt: bool) -> Result<String, TokenizerError> {
        let t = self.chat_template.as_ref().ok_or_else(|| TokenizerError::Template {
            path: self.path.clone(),
            msg: "this tokenizer has no chat_template; multi-turn rollouts need one".into(),
        })?;
        t.render_with_tools(messages, tools, add_generation_prompt)
    }

    /// Render and tokenize a conversation the way transformers does (no extra special tokens).
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>, TokenizerError> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

/// Defaults from `generation_config.json` (falling back to `config.json` and the tokenizer).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationDefaults {
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<usize>,
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

impl GenerationDefaults {
    /// Read `generation_config.json` of `dir`; `config_eos` / `config_bos` are the model
    /// config's ids, used where that file is absent or silent (the tokenizer knows no model).
    pub fn from_dir(dir: &Path, config_eos: &[u32], config_bos: Option<u32>, tok: &TextTokenizer) -> Result<Self, TokenizerError> {
        let path = dir.join("generation_config.json");
        let g: Value = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| TokenizerError::Invalid { path: path.clone(), msg: e.to_string() })?;
            serde_json::from_str(&text).map_err(|e| TokenizerError::Invalid { path: path.clone(), msg: format!("not valid JSON: {e}") })?
        } else {
            Value::Null
        };
        let mut eos = ids(g.get("eos_token_id"));
        if eos.is_empty() {
            eos = config_eos.to_vec();
        }
        if let Some(id) = tok.eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let f = |k: &str| g.get(k).and_then(|v| v.as_f64());
        Ok(Self {
            eos_token_ids: eos,
            pad_token_id: ids(g.get("pad_token_id")).first().copied().or_else(|| tok.pad_token.as_deref().and_then(|t| tok.token_to_id(t))),
            bos_token_id: ids(g.get("bos_token_id")).first().copied().or(config_bos),
            do_sample: g.get("do_sample").and_then(|v| v.as_bool()).unwrap_or(false),
            temperature: f("temperature"),
            top_p: f("top_p"),
            top_k: g.get("top_k").and_then(|v| v.as_u64()).map(|v| v as usize),
            repetition_penalty: f("repetition_penalty"),
            max_new_tokens: g.get("max_new_tokens").and_then(|v| v.as_u64()).map(|v| v as usize),
        })
    }
}
