//! Prompts as RL sees them, and validation of a policy on held-out prompts (shared by every RL
//! algorithm and by SFT's reward validation). Validation scores through `medrl eval`'s code
//! path ([`medrl_eval::run::evaluate`]), so training and evaluation read rewards alike.

use serde::Serialize;

use super::config::EvalSampling;
use crate::error::RunError;
use medrl_data::{Example, Origin};
use medrl_eval::run::{EvalOptions, MetricSettings};
use medrl_reward::{AccuracySpec, RewardSet as Rewards};
use medrl_lm::model::CausalLm;
use medrl_lm::tokenizer::TextTokenizer;

/// A prompt to roll out: rendered ids plus what the rewards need.
#[derive(Debug, Clone)]
pub struct RlPrompt {
    pub ids: Vec<u32>,
    /// The conversation `ids` render (re-rendered when tools are described to the model).
    pub messages: Vec<medrl_lm::tokenizer::ChatMessage>,
    pub text: String,
    pub ground_truth: serde_json::Value,
    pub metadata: serde_json::Value,
    pub data_source: String,
}

/// An example as RL sees it: the trailing assistant turn(s) are removed ([`Example::prompt_messages`])
/// and the last becomes the ground truth
/// when the example has none (a reference answer, as dialogue rewards use); `system` is added to
/// examples without a system message.
pub fn prompt_example(mut ex: Example, system: Option<&str>) -> Example {
    let reference = ex.reference_turn().map(str::to_owned);
    ex.messages.truncate(ex.prompt_messages().len());
    if let (Some(r), true) = (reference, ex.ground_truth.is_null()) {
        ex.ground_truth = serde_json::Value::String(r);
    }
    if let Some(s) = system {
        if ex.messages.first().is_none_or(|m| m.role != "system") {
            ex.messages.insert(0, medrl_lm::tokenizer::ChatMessage::system(s));
        }
    }
    ex
}

/// Turn examples into prompts (see [`prompt_example`]), describing `tools` when given; prompts
/// longer than `max_len` tokens are left out and counted.
pub fn prompts_from_examples(tok: &TextTokenizer, examples: Vec<Example>, system: Option<&str>, max_len: usize, tools: Option<&ToolPrompt>) -> Result<(Vec<RlPrompt>, usize), RunError> {
    let mut out = Vec::new();
    let mut too_long = 0;
    for ex in examples {
        let ex = prompt_example(ex, system);
        let ids = render_prompt(tok, &ex.messages, tools)?;
        if ids.len() > max_len {
            too_long += 1;
            continue;
        }
        let user_text = ex.messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()).unwrap_or_default();
        out.push(RlPrompt { ids, messages: ex.messages, text: user_text, ground_truth: ex.ground_truth, metadata: ex.metadata, data_source: ex.data_source });
    }
    Ok((out, too_long))
}

/// How tools are described in prompts: `(name, description, parameters)` of each, and the
/// format the model calls them in.
pub struct ToolPrompt<'a> {
    pub specs: &'a [(String, String, serde_json::Value)],
    pub format: medrl_lm::tokenizer::tools::ToolCallFormat,
}

/// The token ids of a conversation with the generation prompt. With tools, a template that
/// renders `tools` itself gets them (as `apply_chat_template(tools=...)`); for one that does
/// not, the format's tool instructions are appended to the system message (or form one).
pub fn render_prompt(tok: &TextTokenizer, messages: &[medrl_lm::tokenizer::ChatMessage], tools: Option<&ToolPrompt>) -> Result<Vec<u32>, RunError> {
    let model_err = |e: medrl_lm::tokenizer::TokenizerError| RunError::Model(e.into());
    let text = match tools {
        None => tok.apply_chat_template(messages, true).map_err(model_err)?,
        Some(t) => medrl_lm::agent::prompt_with_tools(tok, messages, t.specs, t.format).map_err(model_err)?,
    };
    tok.encode(&text, false).map_err(model_err)
}

/// Results of validating a policy on held-out prompts.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    pub mean_reward: f64,
    pub accuracy: Option<f64>,
    pub scored: usize,
    pub dropped: usize,
}

impl Validation {
    /// Add to a metrics line (`val_reward`, `val_accuracy`, `val_scored`, `val_dropped`).
    pub fn record(&self, line: &mut serde_json::Value) {
        line["val_reward"] = self.mean_reward.into();
        line["val_accuracy"] = self.accuracy.into();
        line["val_scored"] = self.scored.into();
        line["val_dropped"] = self.dropped.into();
    }

    /// Read back what [`Validation::record`] wrote (`None` for a line without validation;
    /// counts missing from lines of older runs read as 0).
    pub fn from_record(line: &serde_json::Value) -> Option<Self> {
        let count = |k: &str| line.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Some(Self {
            mean_reward: line.get("val_reward")?.as_f64()?,
            accuracy: line.get("val_accuracy").and_then(|v| v.as_f64()),
            scored: count("val_scored"),
            dropped: count("val_dropped"),
        })
    }
}

/// Greedy responses to the validation examples, scored through `eval::evaluate` (the code path
/// of `medrl eval`); [`validate_with`] draws them as an [`EvalSampling`] says. `threshold`: accuracy is the share of responses whose plugin score reaches it.
#[allow(clippy::too_many_arguments)]
pub fn validate(
    model: &CausalLm,
    tok: &TextTokenizer,
    examples: &[(Origin, Example)],
    rewards: &Rewards,
    max_new_tokens: usize,
    stop: &[String],
    eos: &[u32],
    pad: u32,
    threshold: Option<f64>,
) -> Result<Validation, RunError> {
    let accuracy = threshold.map(|t| AccuracySpec { plugin: None, component: "score".into(), threshold: t });
    validate_with(model, tok, examples, rewards, &EvalSampling::default(), max_new_tokens, stop, eos, pad, accuracy)
}

/// [`validate`] with any accuracy spec (a task's component and threshold).
#[allow(clippy::too_many_arguments)]
pub fn validate_with(
    model: &CausalLm,
    tok: &TextTokenizer,
    examples: &[(Origin, Example)],
    rewards: &Rewards,
    sampling: &EvalSampling,
    max_new_tokens: usize,
    stop: &[String],
    eos: &[u32],
    pad: u32,
    accuracy: Option<AccuracySpec>,
) -> Result<Validation, RunError> {
    let responder = medrl_eval::run::LocalModel { model, tokenizer: tok };
    validate_by(&responder, examples, rewards, sampling, max_new_tokens, stop, eos, pad, accuracy)
}

/// [`validate_with`] answering through any responder (a multi-turn agent with tools).
#[allow(clippy::too_many_arguments)]
pub fn validate_by(
    responder: &dyn medrl_eval::run::Responder,
    examples: &[(Origin, Example)],
    rewards: &Rewards,
    sampling: &EvalSampling,
    max_new_tokens: usize,
    stop: &[String],
    eos: &[u32],
    pad: u32,
    accuracy: Option<AccuracySpec>,
) -> Result<Validation, RunError> {
    let settings = MetricSettings { accuracy, ..Default::default() };
    let opts = EvalOptions {
        sampling: sampling.params(max_new_tokens),
        n: sampling.n,
        batch_size: 64,
        eos_token_ids: eos.to_vec(),
        pad_token_id: pad,
        stop_strings: stop.to_vec(),
        progress: false,
    };
    let (m, preds) = medrl_eval::run::evaluate_with(responder, examples, rewards, &settings, &opts)?;
    let scored = preds.iter().filter(|p| p.reward.total.is_some()).count();
    Ok(Validation { mean_reward: m.reward_all_samples.as_ref().map(|s| s.mean).unwrap_or(0.0), accuracy: m.accuracy, scored, dropped: preds.len() - scored })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_assistant_turn_becomes_the_reference_and_system_is_added() {
        let ex = Example {
            messages: vec![medrl_lm::tokenizer::ChatMessage::user("q"), medrl_lm::tokenizer::ChatMessage::assistant("a")],
            ground_truth: serde_json::Value::Null,
            metadata: serde_json::Value::Null,
            data_source: String::new(),
        };
        let p = prompt_example(ex, Some("sys"));
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[0].role, "system");
        assert_eq!(p.ground_truth, serde_json::json!("a"));
    }
}
