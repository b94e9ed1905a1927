//! What a run trains on and is scored by: training and validation examples, system prompt,
//! rewards and accuracy, from the config's datasets and rewards or else from its task bundle.

use super::config::{AlgorithmConfig, RlConfig};
use crate::error::RunError;
use crate::rewards::load_rewards;
use medrl_data::registry::{resolve, DatasetRef};
use medrl_data::{load_examples, Example, Origin};
use medrl_reward::{AccuracySpec, RewardSet as Rewards};
use medrl_task::{Split, Task};

/// What a task bundle contributes to a run, after the config's overrides.
pub(crate) struct Sources {
    pub train: Vec<Example>,
    pub eval: Vec<(Origin, Example)>,
    pub system: Option<String>,
    pub rewards: Rewards,
    pub accuracy: Option<AccuracySpec>,
    /// The config's tools (under the run's grants), else the task's (each with its grants).
    pub tools: Option<medrl_reward::ToolSet>,
}

/// Training and validation examples, system prompt, rewards and accuracy: from the config's
/// datasets and rewards, else from its task. `grants` serve explicit rewards whole; for a
/// task's rewards only its judge is used (search grants come from the task's corpus).
pub(crate) fn load_sources<A: AlgorithmConfig>(cfg: &RlConfig<A>, grants: &medrl_plugin::Grants) -> Result<Sources, RunError> {
    let data = &cfg.data;
    let task = match &data.task {
        Some(t) => {
            let mut task = Task::load(t)?;
            if let Some(s) = &data.system {
                task.config.system_prompt = Some(s.clone());
            }
            Some(task)
        }
        None => None,
    };
    let load = |refs: &[DatasetRef]| -> Result<Vec<(Origin, Example)>, RunError> {
        let mut v = Vec::new();
        for r in refs {
            let rs = resolve(r, data.dataset_dir.as_deref())?;
            v.extend(load_examples(&rs, data.on_bad_row)?.0);
        }
        Ok(v)
    };
    let task_split = |split: Split| -> Result<Vec<(Origin, Example)>, RunError> {
        match &task {
            Some(t) if t.splits().contains(&split) => Ok(t.examples(split)?),
            _ => Ok(Vec::new()),
        }
    };
    let train = if data.train.is_empty() { task_split(Split::Train)? } else { load(&data.train)? };
    let eval = match &data.eval {
        Some(refs) => load(refs)?,
        None => task_split(Split::Validation)?,
    };
    let system = data.system.clone().or_else(|| task.as_ref().and_then(|t| t.config.system_prompt.clone()));
    let (rewards, names) = if !cfg.rewards.is_empty() || task.is_none() {
        let r = load_rewards(&cfg.rewards, grants)?;
        let names = r.names();
        (r, names)
    } else {
        task_rewards(task.as_ref().expect("task"), grants)?
    };
    let accuracy = match (cfg.accuracy_threshold, &task) {
        (Some(t), _) => Some(AccuracySpec { plugin: None, component: "score".into(), threshold: t }),
        // As `medrl eval` reads a task's accuracy.
        (None, Some(task)) => task.metrics().accuracy_for(&names),
        (None, None) => None,
    };
    let tools = if !cfg.tools.is_empty() {
        Some(medrl_reward::load_tools(&cfg.tools, grants)?)
    } else {
        match &task {
            Some(t) if !t.config.tools.is_empty() => Some(medrl_reward::load_tools_each(&t.tool_configs()?)?),
            _ => None,
        }
    };
    Ok(Sources { train: train.into_iter().map(|(_, e)| e).collect(), eval, system, rewards, accuracy, tools })
}

/// The task's reward plugins under the `drop` policy (a failed sample leaves the loss; list
/// `rewards` explicitly for another policy). A search grant is an in-memory index over the
/// task's corpus; a judge grant is the run's judge, which must be given (the CLI resolves the
/// task's own judge grant when no judge flag is set).
fn task_rewards(task: &Task, grants: &medrl_plugin::Grants) -> Result<(Rewards, Vec<String>), RunError> {
    let out = task
        .reward_set_specs(medrl_plugin::FailurePolicy::Drop, |_, who| {
            grants.judge.clone().ok_or_else(|| format!("{who} needs a judge model; set grants.judge.model in task.yaml or pass one to the run (CLI: --judge-model DIR, or --test-judge SCORE for a constant stand-in)"))
        })
?;
    if out.is_empty() {
        return Err(RunError::NoRewards { task: task.name().to_string() });
    }
    let names = out.iter().map(|s| s.name.clone()).collect();
    let host = medrl_plugin::PluginHost::new(Default::default())?;
    let rewards = Rewards::load(&host, out, &medrl_plugin::Limits::default())?;
    Ok((rewards, names))
}

