//! Judge flags shared by `medrl reward score`, `medrl eval` and `medrl grpo`, and the one place
//! the CLI turns a task's judge grant and those flags into a judge (docs/judge.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::judge::{JudgeKind, JudgeSettings, ModelJudge, Normalize, Truncation};
use crate::plugin::{InMemoryJudge, Judge};
use crate::task::JudgeGrant;

/// Back the plugins' `judge` capability with a model (flags override the task's judge grant).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JudgeArgs {
    /// Local model folder of the judge: a *ForSequenceClassification checkpoint or a causal LM
    /// (medrl never downloads; overrides the task's grants.judge.model).
    #[arg(long)]
    pub judge_model: Option<PathBuf>,
    /// classifier or causal_lm (default: from the folder's config.json).
    #[arg(long, value_enum)]
    pub judge_kind: Option<JudgeKind>,
    /// Classifier label whose probability is the score: a name from id2label or an index (default 1).
    #[arg(long)]
    pub judge_label: Option<String>,
    /// Causal LM: the token whose probability is the score (default "True").
    #[arg(long)]
    pub judge_true_token: Option<String>,
    /// Causal LM: the opposing token for --judge-normalize pair (default "False").
    #[arg(long)]
    pub judge_false_token: Option<String>,
    /// Causal LM: pair (softmax over the true/false tokens) or vocab (full softmax).
    #[arg(long, value_enum)]
    pub judge_normalize: Option<Normalize>,
    /// Causal LM: render the prompt with the chat template (default: when the tokenizer has one).
    #[arg(long)]
    pub judge_chat_template: Option<bool>,
    /// Apply the tokenizer's special tokens (e.g. BOS) to prompts that are not chat-rendered
    /// (default true).
    #[arg(long)]
    pub judge_add_special_tokens: Option<bool>,
    /// Longest judge prompt in tokens (default 4096).
    #[arg(long)]
    pub judge_max_length: Option<usize>,
    /// left (keep the end of long prompts, default) or right (keep the start).
    #[arg(long, value_enum)]
    pub judge_truncation: Option<Truncation>,
    /// Most judge requests per forward (default 8).
    #[arg(long)]
    pub judge_max_batch: Option<usize>,
    /// Seconds a judge call may wait for the model (default 120).
    #[arg(long)]
    pub judge_timeout_s: Option<f64>,
    /// Device of the judge model: cpu, cuda, cuda:N, auto (default: the run's device).
    #[arg(long)]
    pub judge_device: Option<String>,
    /// dtype of the judge model: f32, bf16, f16, auto.
    #[arg(long)]
    pub judge_dtype: Option<String>,
}

impl JudgeArgs {
    /// These flags as a grant overlay (unset flags leave the grant's values).
    fn overlay(&self) -> JudgeGrant {
        JudgeGrant {
            model: None,
            description: None,
            kind: self.judge_kind,
            label: self.judge_label.clone(),
            true_token: self.judge_true_token.clone(),
            false_token: self.judge_false_token.clone(),
            normalize: self.judge_normalize,
            chat_template: self.judge_chat_template,
            add_special_tokens: self.judge_add_special_tokens,
            max_length: self.judge_max_length,
            truncation: self.judge_truncation,
            max_batch: self.judge_max_batch,
            timeout_s: self.judge_timeout_s,
            device: self.judge_device.clone(),
            dtype: self.judge_dtype.clone(),
            validate_score: 0.5,
        }
    }
}

/// Builds judges for reward plugins: a constant stand-in (`--test-judge`), or a model judge
/// from the task's grant and the flags. A model is loaded once per distinct settings and shared.
pub struct JudgeProvider {
    test_score: Option<f64>,
    args: JudgeArgs,
    default_device: String,
    loaded: Vec<(JudgeSettings, Arc<ModelJudge>)>,
}

impl JudgeProvider {
    /// `default_device`: where the judge runs when neither the grant nor the flags say.
    pub fn new(test_score: Option<f64>, args: JudgeArgs, default_device: &str) -> Result<Self> {
        if test_score.is_some() && args.judge_model.is_some() {
            bail!("--test-judge and --judge-model exclude each other");
        }
        if let Some(t) = args.judge_timeout_s {
            if !(t.is_finite() && t > 0.0) {
                bail!("--judge-timeout-s must be a positive number of seconds");
            }
        }
        Ok(Self { test_score, args, default_device: default_device.into(), loaded: Vec::new() })
    }

    /// The settings a grant (or the flags alone, `grant = None`) asks for; `None` when no model
    /// is named anywhere.
    pub fn settings(&self, grant: Option<&JudgeGrant>, task_dir: Option<&Path>) -> Option<JudgeSettings> {
        let overlay = self.args.overlay();
        let mut s = match (&self.args.judge_model, grant) {
            // A path given on the command line is relative to the working directory.
            (Some(m), _) => {
                let mut s = JudgeSettings::new(m.to_string_lossy());
                s.device = grant.and_then(|g| g.device.clone()).unwrap_or_else(|| self.default_device.clone());
                if let Some(g) = grant {
                    g.apply(&mut s);
                }
                s
            }
            (None, Some(g)) => g.settings(task_dir, &self.default_device)?,
            (None, None) => return None,
        };
        overlay.apply(&mut s);
        if let Some(d) = &self.args.judge_device {
            s.device = d.clone();
        }
        Some(s)
    }

    /// Load (or reuse) the model judge for these settings.
    pub fn model_judge(&mut self, settings: JudgeSettings) -> Result<Arc<ModelJudge>> {
        if let Some((_, j)) = self.loaded.iter().find(|(s, _)| *s == settings) {
            return Ok(j.clone());
        }
        let what = settings.model.clone();
        let j = Arc::new(ModelJudge::load(settings.clone()).with_context(|| format!("loading judge model {what}"))?);
        self.loaded.push((settings, j.clone()));
        Ok(j)
    }

    /// The judge for a reward whose task grants one. `who` names the reward in errors.
    pub fn for_grant(&mut self, grant: &JudgeGrant, task_dir: Option<&Path>, who: &str) -> Result<Arc<dyn Judge>> {
        if let Some(v) = self.test_score {
            return Ok(Arc::new(InMemoryJudge { default_score: v, ..Default::default() }));
        }
        let Some(s) = self.settings(Some(grant), task_dir) else {
            bail!(
                "{who} needs a judge model: set grants.judge.model in task.yaml to a local model folder or pass \
                 --judge-model DIR (or --test-judge SCORE for a constant stand-in, whose numbers then measure format only)"
            );
        };
        Ok(self.model_judge(s).with_context(|| who.to_string())?)
    }

    /// The judge the flags alone ask for (`medrl reward score`, `medrl grpo`): a constant, a
    /// model, or none.
    pub fn from_flags(&mut self) -> Result<Option<Arc<dyn Judge>>> {
        if let Some(v) = self.test_score {
            return Ok(Some(Arc::new(InMemoryJudge { default_score: v, ..Default::default() })));
        }
        match self.settings(None, None) {
            Some(s) => Ok(Some(self.model_judge(s)?)),
            None => Ok(None),
        }
    }

    /// Model judges loaded so far (for their statistics).
    pub fn loaded(&self) -> impl Iterator<Item = &Arc<ModelJudge>> {
        self.loaded.iter().map(|(_, j)| j)
    }
}
