//! TrialPanorama rows (VERL layout, as its parquet files have them) to examples, for both RL
//! tasks: `{"data_source", "prompt": [{role, content}], "ability", "reward_model": {"style",
//! "ground_truth"}, "extra_info": {"split", "index", ...}}`.
//! - The task is `config.task` (`sample_size` / `study_search`), or found from `ability` /
//!   `data_source`, or from the ground truth's keys (`target` vs `relevant_pmids`).
//! - A row without `prompt` may carry the question in `question` or `extra_info.question`.
//! - The ground truth may be an object or a JSON string holding one (both occur in VERL data).
//! - Sample size: `target` must be a positive number (or numeric string). Study search:
//!   `relevant_pmids` must be a non-empty list (a review without relevant trials cannot be
//!   learned from). Anything else is rejected with the reason.
//!
//! `metadata` is `extra_info` plus `ability`.

use medrl_reward_sdk::{export_adapter, serde_json, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct TrialPanorama;

fn task_of(c: &Value, r: &Value, gt: &Value) -> Result<&'static str, String> {
    let name = c.get("task").and_then(Value::as_str).unwrap_or("auto");
    let hint = format!(
        "{} {}",
        r.get("ability").and_then(Value::as_str).unwrap_or(""),
        r.get("data_source").and_then(Value::as_str).unwrap_or("")
    );
    match name {
        "sample_size" => Ok("sample_size"),
        "study_search" => Ok("study_search"),
        "auto" if hint.contains("sample_size") => Ok("sample_size"),
        "auto" if hint.contains("study_search") || hint.contains("search") => Ok("study_search"),
        "auto" if gt.get("target").is_some() => Ok("sample_size"),
        "auto" if gt.get("relevant_pmids").is_some() => Ok("study_search"),
        "auto" => Err("cannot tell the task (no ability/data_source naming it, no `target` or `relevant_pmids`); set config.task".into()),
        other => Err(format!("config.task must be sample_size, study_search or auto, got {other:?}")),
    }
}

impl Adapter for TrialPanorama {
    fn manifest() -> Manifest {
        Manifest::new("trialpanorama-adapter", env!("CARGO_PKG_VERSION"), "TrialPanorama VERL rows (sample size, study search) -> examples")
            .config_schema(json!({"type": "object", "properties": {
                "task": {"enum": ["auto", "sample_size", "study_search"], "default": "auto"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let mut messages = Vec::new();
        match r.get("prompt") {
            Some(Value::Array(ms)) => {
                for (i, m) in ms.iter().enumerate() {
                    let role = m.get("role").and_then(Value::as_str).ok_or(format!("prompt[{i}]: missing `role`"))?;
                    let content = m.get("content").and_then(Value::as_str).ok_or(format!("prompt[{i}]: missing `content`"))?;
                    if !matches!(role, "system" | "user" | "assistant") {
                        return Err(format!("prompt[{i}]: unknown role {role:?}"));
                    }
                    messages.push(Message { role: role.into(), content: content.into() });
                }
            }
            Some(Value::String(s)) => messages.push(Message { role: "user".into(), content: s.clone() }),
            None | Some(Value::Null) => {
                let q = r
                    .get("question")
                    .or_else(|| r.get("extra_info").and_then(|e| e.get("question")))
                    .and_then(Value::as_str)
                    .ok_or("missing `prompt` (and no `question`)")?;
                messages.push(Message { role: "user".into(), content: q.into() });
            }
            Some(other) => return Err(format!("`prompt` must be a list of messages, got {other}")),
        }
        if !messages.iter().any(|m| m.role == "user" && !m.content.trim().is_empty()) {
            return Err("prompt has no non-empty user message".into());
        }
        let gt = match r.get("reward_model").and_then(|m| m.get("ground_truth")) {
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| format!("reward_model.ground_truth is a string but not JSON: {e}"))?,
            Some(v @ Value::Object(_)) => v.clone(),
            Some(other) => return Err(format!("reward_model.ground_truth must be an object, got {other}")),
            None => return Err("missing reward_model.ground_truth".into()),
        };
        let task = task_of(c, r, &gt)?;
        match task {
            "sample_size" => {
                let t = match gt.get("target") {
                    Some(Value::Number(n)) => n.as_f64(),
                    Some(Value::String(s)) => s.trim().replace(',', "").parse::<f64>().ok(),
                    _ => None,
                };
                if !t.is_some_and(|t| t.is_finite() && t > 0.0) {
                    return Err(format!("sample size: ground_truth.target must be a positive number, got {}", gt.get("target").unwrap_or(&Value::Null)));
                }
            }
            _ => {
                let ok = gt.get("relevant_pmids").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
                if !ok {
                    return Err("study search: ground_truth.relevant_pmids must be a non-empty list".into());
                }
            }
        }
        let mut metadata = r.get("extra_info").cloned().filter(Value::is_object).unwrap_or(json!({}));
        metadata["task"] = json!(task);
        if let Some(a) = r.get("ability") {
            metadata["ability"] = a.clone();
        }
        Ok(Example {
            messages,
            ground_truth: gt,
            metadata,
            data_source: r.get("data_source").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| format!("trialpanorama_{task}")),
        })
    }
}

export_adapter!(TrialPanorama);
