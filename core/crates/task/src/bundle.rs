//! A loaded task bundle ([`Task`]) and what training and evaluation ask of it: its datasets
//! and examples per split, its rewards ([`RewardSpec`], and as medrl-reward loads them), its
//! metrics. Finding and loading a task is in [`crate::load`].

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use medrl_data::formats;
use medrl_data::read::read_records;
use medrl_data::registry::{self, DatasetRef, DatasetSpec};
use medrl_data::{DataError, Example, Origin};
use medrl_lm::tokenizer::ChatMessage;

use crate::error::TaskError;
use crate::example::reference_answer;
use crate::grants::{GrantsSpec, JudgeGrant};
use crate::schema::{MetricsSpec, Split, TaskConfig};
use crate::template::inject_prompt;

/// A reward plugin of a loaded task, with paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    /// As written in task.yaml.
    pub name: String,
    /// The `.wasm` component.
    pub path: PathBuf,
    pub weight: f64,
    pub config: Value,
    /// Search corpus / index paths absolute.
    pub grants: GrantsSpec,
}

impl RewardSpec {
    /// The search grant's backend (None when not granted): the corpus indexed in memory (tantivy),
    /// a prebuilt index folder, or PubMed.
    pub fn search_index(&self) -> Result<Option<Box<dyn medrl_plugin::SearchIndex>>, medrl_search::SearchError> {
        self.grants.search.as_ref().map(|s| s.open()).transpose()
    }
}

/// A loaded task bundle.
#[derive(Debug, Clone)]
pub struct Task {
    pub config: TaskConfig,
    /// The task folder.
    pub dir: PathBuf,
    /// `task.yaml`.
    pub file: PathBuf,
    /// Where bundled plugin names are looked up.
    pub plugin_dir: PathBuf,
}

impl Task {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Splits that have a dataset.
    pub fn splits(&self) -> Vec<Split> {
        Split::ALL.into_iter().filter(|s| self.config.data.get(*s).is_some()).collect()
    }

    fn dataset_dir(&self) -> PathBuf {
        match &self.config.data.dataset_dir {
            Some(d) => self.dir.join(d),
            None => self.dir.clone(),
        }
    }

    /// The resolved dataset of a split.
    pub fn dataset(&self, split: Split) -> Result<DatasetSpec, TaskError> {
        let r = self.config.data.get(split).ok_or_else(|| TaskError::Other { task: self.name().into(), msg: format!("has no `{split}` split") })?;
        let ds_dir = self.dataset_dir();
        let mut spec = registry::resolve(r, Some(&ds_dir)).map_err(|source| TaskError::Data { task: self.name().into(), split, source })?;
        // Inline paths are relative to the task folder, whatever dataset_dir says.
        if let DatasetRef::Inline(i) = r {
            spec.path = self.dir.join(&i.path);
        }
        Ok(spec)
    }

    /// The examples of a split: the data's conversation with the task's system prompt applied
    /// (to examples without one) and the prompt template rendered (for records without a user
    /// turn); `ground_truth`, `metadata` and `data_source` (default: the task name) set.
    /// Any bad record is an error naming its file and row.
    pub fn examples(&self, split: Split) -> Result<Vec<(Origin, Example)>, TaskError> {
        let spec = self.dataset(split)?;
        let err = |source: DataError| TaskError::Data { task: self.name().to_string(), split, source };
        let records = read_records(&spec.path).map_err(err)?;
        if records.is_empty() {
            return Err(err(DataError::EmptyFile { path: spec.path.clone() }));
        }
        let mut out = Vec::new();
        for rec in records.into_iter().take(spec.num_samples.unwrap_or(usize::MAX)) {
            let (origin, mut value) = rec.map_err(err)?;
            let row_err = |msg: String| err(DataError::Row { origin: origin.clone(), msg });
            if let Some(t) = &self.config.prompt_template {
                inject_prompt(&mut value, t, &spec).map_err(|e| row_err(e.to_string()))?;
            }
            let mut ex = formats::to_example(&value, &spec.formatting, &spec.columns, &spec.tags)
                .map_err(|source| err(DataError::Record { origin: origin.clone(), source }))?;
            let system = spec.system.as_ref().or(self.config.system_prompt.as_ref());
            if let Some(system) = system {
                if ex.messages.first().map(|m| m.role.as_str()) != Some("system") {
                    ex.messages.insert(0, ChatMessage::system(system.clone()));
                }
            }
            if ex.data_source.is_empty() {
                ex.data_source = self.name().to_string();
            }
            if ex.metadata.is_null() {
                ex.metadata = Value::Object(Default::default());
            }
            if self.config.reference_as_ground_truth && ex.ground_truth.is_null() {
                if let Some(r) = reference_answer(&ex) {
                    ex.ground_truth = serde_json::json!({ "reference": r });
                }
            }
            out.push((origin, ex));
        }
        Ok(out)
    }

    /// Where a bundled plugin name or a path points.
    pub fn plugin_path(&self, plugin: &str) -> PathBuf {
        if plugin.ends_with(".wasm") || plugin.contains('/') {
            self.dir.join(plugin)
        } else {
            self.plugin_dir.join(format!("{}.wasm", plugin.replace('-', "_")))
        }
    }

    /// The reward plugins: path, weight, config JSON and grants (search paths resolved).
    pub fn reward_specs(&self) -> Vec<RewardSpec> {
        self.config
            .rewards
            .iter()
            .map(|r| {
                let mut grants = r.grants.clone();
                if let Some(s) = &mut grants.search {
                    s.resolve(&self.dir);
                }
                RewardSpec { name: r.plugin.clone(), path: self.plugin_path(&r.plugin), weight: r.weight, config: r.config.clone(), grants }
            })
            .collect()
    }

    /// The task's rewards as a [`medrl_reward::RewardSet`] loads them: each under `policy`
    /// (and the set's own call deadline), its search grant opened from the task's corpus /
    /// index / PubMed settings, its judge grant resolved by `judge(grant, who)`, where `who`
    /// is ``task `NAME`: reward `REWARD` `` for the caller's messages (the CLI backs it with a
    /// model or a constant stand-in, a trainer with the run's judge). Empty when the task
    /// declares no reward; callers that need one say so in their own terms.
    pub fn reward_set_specs<E>(
        &self,
        policy: medrl_plugin::FailurePolicy,
        mut judge: impl FnMut(&JudgeGrant, &str) -> Result<Arc<dyn medrl_plugin::Judge>, E>,
    ) -> Result<Vec<medrl_reward::RewardSpec>, TaskError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut out = Vec::new();
        for s in self.reward_specs() {
            let mut grants = medrl_plugin::Grants::none();
            if let Some(j) = &s.grants.judge {
                let who = format!("task `{}`: reward `{}`", self.name(), s.name);
                grants.judge = Some(judge(j, &who).map_err(|e| TaskError::Judge { task: self.name().into(), reward: s.name.clone(), source: e.into() })?);
            }
            let index = s.search_index().map_err(|source| TaskError::Search { task: self.name().into(), reward: s.name.clone(), source })?;
            if let Some(index) = index {
                grants = grants.with_search(index);
            }
            out.push(medrl_reward::RewardSpec { name: s.name, plugin: s.path, weight: s.weight, config: s.config, grants, policy, timeout: None });
        }
        Ok(out)
    }

    /// The task's tools as a [`medrl_reward::ToolSet`] loads them: plugin paths resolved, each
    /// tool's search grant opened from the task's corpus / index / PubMed settings.
    pub fn tool_configs(&self) -> Result<Vec<(medrl_reward::ToolConfig, medrl_plugin::Grants)>, TaskError> {
        let mut out = Vec::new();
        for t in &self.config.tools {
            let mut grants = medrl_plugin::Grants::none();
            if let Some(s) = &t.grants.search {
                let mut s = s.clone();
                s.resolve(&self.dir);
                let index = s.open().map_err(|source| TaskError::Search { task: self.name().into(), reward: t.plugin.clone(), source })?;
                grants = grants.with_search(index);
            }
            let cfg = medrl_reward::ToolConfig { plugin: self.plugin_path(&t.plugin), config: t.config.clone(), on_failure: t.on_failure, timeout_s: t.timeout_s };
            out.push((cfg, grants));
        }
        Ok(out)
    }

    pub fn metrics(&self) -> &MetricsSpec {
        &self.config.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn examples_apply_system_prompt_and_template() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("demo");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(
            t.join("task.yaml"),
            "name: demo\ndata:\n  train: {path: train.jsonl, formatting: messages}\nsystem_prompt: Be exact.\nprompt_template: \"Q: {question}\"\n",
        )
        .unwrap();
        std::fs::write(
            t.join("train.jsonl"),
            "{\"metadata\": {\"question\": \"n?\"}, \"ground_truth\": {\"target\": 3}}\n{\"messages\": [{\"role\": \"user\", \"content\": \"given\"}], \"ground_truth\": 1}\n{\"metadata\": {}}\n",
        )
        .unwrap();
        let task = Task::load(&t).unwrap();
        let e = task.examples(Split::Train).unwrap_err().to_string();
        assert!(e.contains("train.jsonl row 3") && e.contains("question"), "{e}");
        std::fs::write(
            t.join("train.jsonl"),
            "{\"metadata\": {\"question\": \"n?\"}, \"ground_truth\": {\"target\": 3}}\n{\"messages\": [{\"role\": \"user\", \"content\": \"given\"}], \"ground_truth\": 1}\n",
        )
        .unwrap();
        let ex = task.examples(Split::Train).unwrap();
        assert_eq!(ex[0].1.messages, vec![ChatMessage::system("Be exact."), ChatMessage::user("Q: n?")]);
        assert_eq!(ex[0].1.ground_truth, json!({"target": 3}));
        assert_eq!(ex[0].1.data_source, "demo");
        assert_eq!(ex[1].1.messages[1], ChatMessage::user("given"));
        assert!(task.examples(Split::Test).is_err());
    }
}
