//! `medrl grpo`, `medrl ppo`, `medrl rloo` and `medrl rl NAME`: any algorithm of the registry
//! (`train::rl::algos::dispatch`), wired to its config type, judges and search grant.

use anyhow::Context;
use std::path::PathBuf;

use crate::config;
use crate::train::rl::algos::{dispatch, AlgorithmVisitor, NAMES};
use crate::train::rl::{drive, RlAlgorithm, RlConfig};
use crate::train::session::RunOptions;

#[derive(clap::Args)]
pub struct RlArgs {
    /// Run configuration (see `medrl schema grpo|ppo|rloo` and configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in output_dir.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps of this invocation (the run stays resumable).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Grant the reward plugins a constant stand-in judge returning this score (rewards then
    /// measure format only: for wiring checks, not real training).
    #[arg(long)]
    test_judge: Option<f64>,
    /// Grant the reward plugins a judge backed by this model (on the run's device unless
    /// --judge-device says otherwise); see docs/judge.md.
    #[command(flatten)]
    judge: super::judge::JudgeArgs,
    /// Configuration overrides, `key.sub=value`.
    overrides: Vec<String>,
}

impl RlArgs {
    fn options(&self) -> RunOptions {
        RunOptions { resume: self.resume, stop_after: self.stop_after }
    }
}

fn log_judges(judges: &super::judge::JudgeProvider) {
    for j in judges.loaded() {
        tracing::info!(judge = %j.dir().display(), stats = ?j.stats(), "judge model");
    }
}

/// The judge an RL run grants its reward plugins: the flags' (`--judge-model`, `--test-judge`),
/// else, when the rewards are a task's, the task's own judge grant, resolved as `medrl eval`
/// resolves it (model path relative to the task folder, the grant's settings).
fn rl_judge(
    judges: &mut super::judge::JudgeProvider,
    data: &crate::train::rl::RlData,
    explicit_rewards: bool,
) -> anyhow::Result<Option<std::sync::Arc<dyn crate::plugin::Judge>>> {
    if let Some(j) = judges.from_flags()? {
        return Ok(Some(j));
    }
    let Some(name) = data.task.as_ref().filter(|_| !explicit_rewards) else { return Ok(None) };
    let task = crate::task::Task::load(name).with_context(|| format!("loading task {name}"))?;
    for spec in task.reward_specs() {
        if let Some(grant) = &spec.grants.judge {
            let who = format!("task `{}`: reward `{}`", task.name(), spec.name);
            return Ok(Some(judges.for_grant(grant, Some(&task.dir), &who)?));
        }
    }
    Ok(None)
}

/// Run the algorithm named `name` with `args`.
pub fn run(name: &str, args: RlArgs) -> anyhow::Result<()> {
    struct Run(RlArgs);
    impl AlgorithmVisitor for Run {
        type Output = anyhow::Result<()>;
        fn visit<A: RlAlgorithm>(self) -> anyhow::Result<()> {
            let args = self.0;
            let cfg: RlConfig<A::Config> = config::load(Some(&args.config), &args.overrides)?;
            let mut judges = super::judge::JudgeProvider::new(args.test_judge, args.judge.clone(), &cfg.device)?;
            let judge = rl_judge(&mut judges, &cfg.data, !cfg.rewards.is_empty())?;
            let mut grants = crate::plugin::Grants { judge, ..crate::plugin::Grants::none() };
            if let Some(g) = &cfg.search {
                grants = grants.with_search(g.open().context("search grant")?);
            }
            let outcome = drive::<A>(&cfg, grants, &args.options())?;
            log_judges(&judges);
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            Ok(())
        }
    }
    dispatch(name, Run(args)).unwrap_or_else(|| anyhow::bail!("no RL algorithm named `{name}` (have: {})", NAMES.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rl::RlData;
    use std::path::Path;

    /// A task folder `<tmp>/judged` whose one reward asks for a judge backed by `model`.
    fn judged_task(tmp: &Path, model: &str) -> PathBuf {
        let dir = tmp.join("judged");
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = format!(
            "name: judged\ndescription: a task whose reward needs a judge\n\
             data:\n  train: {{path: train.jsonl, formatting: messages}}\n\
             rewards:\n  - plugin: medical-verifier\n    grants:\n      judge: {{model: {model:?}, kind: classifier}}\n"
        );
        std::fs::write(dir.join("task.yaml"), yaml).unwrap();
        dir
    }

    fn data(task: &Path) -> RlData {
        serde_yaml::from_str(&format!("task: {:?}", task.display().to_string())).unwrap()
    }

    #[test]
    fn rl_runs_use_the_tasks_judge_unless_flags_or_explicit_rewards_say_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/judge/qwen2-cls").canonicalize().unwrap();
        let task = judged_task(tmp.path(), &fixture.to_string_lossy());
        let mut judges = super::super::judge::JudgeProvider::new(None, Default::default(), "cpu").unwrap();
        // The task's grant, resolved as `medrl eval` does: the fixture classifier is loaded.
        assert!(rl_judge(&mut judges, &data(&task), false).unwrap().is_some());
        assert_eq!(judges.loaded().count(), 1);
        // Rewards listed in the config: the task's judge is not the run's business.
        let mut fresh = super::super::judge::JudgeProvider::new(None, Default::default(), "cpu").unwrap();
        assert!(rl_judge(&mut fresh, &data(&task), true).unwrap().is_none());
        assert_eq!(fresh.loaded().count(), 0);
        // A flag wins over the grant (here the constant stand-in: no model loaded).
        let mut flagged = super::super::judge::JudgeProvider::new(Some(0.7), Default::default(), "cpu").unwrap();
        assert!(rl_judge(&mut flagged, &data(&task), false).unwrap().is_some());
        assert_eq!(flagged.loaded().count(), 0);
        // A hub name in the grant and no flag: a clear error naming the task and reward.
        let hub = judged_task(&tmp.path().join("hub"), "FreedomIntelligence/medical_o1_verifier_3B");
        let err = match rl_judge(&mut fresh, &data(&hub), false) {
            Err(e) => format!("{e:#}"),
            Ok(_) => panic!("a hub-name judge must not load"),
        };
        assert!(err.contains("task `judged`") && err.contains("medical-verifier"), "{err}");
    }
}
