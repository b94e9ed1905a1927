//! `medrl task validate`: does a bundle work end to end, short of running a model?
//!
//! Checks, each reported on its own line:
//! - every split's data loads (every row converts; a bad row fails with its file and row), has
//!   examples with a user turn and a ground truth when the task has rewards;
//! - the prompt template renders (it is applied while loading);
//! - every reward plugin loads in the real host (so its API version is supported), the
//!   capabilities it requests are exactly the ones granted, the granted corpus loads, and
//!   scoring one example of each split (its reference answer as the response) with the task's
//!   config gives a score and no per-sample error;
//! - the accuracy metric names a component the plugin reports;
//! - which answer parser (`metrics.answer`, `metrics.answer_prefix`) evaluation will use.
//!
//! A judge grant is backed by a constant stand-in judge (`validate_score`) since validation
//! runs no model (loading a multi-GB verifier would make validation slow and GPU-bound). The
//! judge's `model` is still checked without loading it: a local folder with a `config.json`
//! is ok; a hub name or a missing folder is a warning, since `medrl eval` and GRPO then need
//! `--judge-model DIR` (or `--test-judge`). A search grant is validated by its real backend (the
//! corpus indexed in memory, the index folder, or PubMed).

use serde::Serialize;
use serde_json::Value;

use crate::bundle::{RewardSpec, Task};
use crate::example::{prompt_messages, reference_answer};
use crate::grants::JudgeGrant;
use crate::schema::Split;

pub use crate::example::{ground_truth_object, reference_text};
use medrl_plugin::{sample, Capability, FailurePolicy, Grants, InMemoryJudge, Outcome, PluginHost, PluginOptions, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub task: String,
    pub checks: Vec<Check>,
}

impl ValidationReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != CheckStatus::Fail)
    }
    fn push(&mut self, what: impl Into<String>, status: CheckStatus, detail: impl Into<String>) {
        self.checks.push(Check { what: what.into(), status, detail: detail.into() });
    }
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail).count()
    }
}

impl std::fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "task {}", self.task)?;
        for c in &self.checks {
            let tag = match c.status {
                CheckStatus::Ok => "  ok  ",
                CheckStatus::Warn => " warn ",
                CheckStatus::Fail => " FAIL ",
            };
            writeln!(f, "[{tag}] {}: {}", c.what, c.detail)?;
        }
        let n = self.failures();
        if n == 0 {
            write!(f, "task {}: valid ({} checks)", self.task, self.checks.len())
        } else {
            write!(f, "task {}: INVALID ({n} of {} checks failed)", self.task, self.checks.len())
        }
    }
}

/// The WIT sample for an example: the prompt messages' text (roles as headers) and `response`.
pub fn example_sample(ex: &medrl_data::Example, response: &str) -> Sample {
    let prompt = prompt_messages(ex)
        .iter()
        .map(|m| format!("{}: {}", m.role, m.content))
        .collect::<Vec<_>>()
        .join("\n");
    sample(&prompt, response, &ex.ground_truth, &ex.metadata, &ex.data_source)
}

/// The capability grants of a reward spec, for validation (judge: constant stand-in; search:
/// the task's real backend).
pub fn validation_grants(spec: &RewardSpec) -> Result<Grants, medrl_search::SearchError> {
    let mut g = Grants::none();
    if let Some(j) = &spec.grants.judge {
        g = g.with_judge(Box::new(InMemoryJudge { default_score: j.validate_score, reply: "True".into(), ..Default::default() }));
    }
    if let Some(idx) = spec.search_index()? {
        g = g.with_search(idx);
    }
    Ok(g)
}

/// Where the judge model of a grant is, checked without loading it.
fn judge_model_check(j: &JudgeGrant, task_dir: &std::path::Path) -> (CheckStatus, String) {
    let stand_in = format!("validation uses the stand-in score {}", j.validate_score);
    let Some(m) = &j.model else {
        return (CheckStatus::Warn, format!("no model named; medrl eval and grpo need --judge-model DIR ({stand_in})"));
    };
    let dir = match medrl_reward::judge::resolve_model_dir(m, Some(task_dir)) {
        Err(e) => return (CheckStatus::Warn, format!("{e} ({stand_in})")),
        Result::Ok(d) => d,
    };
    let cfg = dir.join("config.json");
    match std::fs::read_to_string(&cfg).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        None => (CheckStatus::Fail, format!("{}: missing or not JSON", cfg.display())),
        Some(v) => {
            let arch = v.get("architectures").map(|a| a.to_string()).unwrap_or_else(|| "no architectures".into());
            (CheckStatus::Ok, format!("local folder {} ({arch}; not loaded, {stand_in})", dir.display()))
        }
    }
}

fn cap_name(c: &Capability) -> &'static str {
    match c {
        Capability::Judge => "judge",
        Capability::Search => "search",
    }
}

/// Run every check of `task` (see the module docs).
pub fn validate(task: &Task, host: &PluginHost) -> ValidationReport {
    use CheckStatus::*;
    let mut rep = ValidationReport { task: task.name().to_string(), checks: Vec::new() };
    let has_rewards = !task.config.rewards.is_empty();

    // Data.
    let mut split_examples = Vec::new();
    for split in Split::ALL {
        let what = format!("data {split}");
        if task.config.data.get(split).is_none() {
            let status = if split == Split::Train { Warn } else { Ok };
            rep.push(what, status, "no dataset");
            continue;
        }
        let path = task.dataset(split).map(|s| s.path.display().to_string()).unwrap_or_default();
        match task.examples(split) {
            Err(e) => rep.push(what, Fail, e.to_string()),
            Result::Ok(ex) if ex.is_empty() => rep.push(what, Fail, format!("{path}: no examples")),
            Result::Ok(ex) => {
                let no_user = ex.iter().find(|(_, e)| !prompt_messages(e).iter().any(|m| m.role == "user" && !m.content.trim().is_empty()));
                let no_gt = ex.iter().find(|(_, e)| e.ground_truth.is_null());
                if let Some((o, _)) = no_user {
                    rep.push(what, Fail, format!("{o}: no user turn in the prompt"));
                } else if let (true, Some((o, _))) = (has_rewards, no_gt) {
                    rep.push(what, Fail, format!("{o}: no ground_truth (the task's rewards need one)"));
                } else {
                    let templ = if task.config.prompt_template.is_some() { ", template rendered" } else { "" };
                    rep.push(what, Ok, format!("{} examples from {path}{templ}", ex.len()));
                    split_examples.push((split, ex));
                }
            }
        }
    }

    // Rewards.
    if !has_rewards {
        rep.push("rewards", Warn, "the task has no reward plugins");
    }
    let mut components: Vec<(String, Vec<String>)> = Vec::new();
    for spec in task.reward_specs() {
        let what = format!("reward {}", spec.name);
        if !spec.path.is_file() {
            rep.push(
                what,
                Fail,
                format!("{} not found (build the bundled plugins: scripts/setup-plugins.sh, or cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml)", spec.path.display()),
            );
            continue;
        }
        let grants = match validation_grants(&spec) {
            Err(e) => {
                rep.push(format!("{what} grants"), Fail, e.to_string());
                continue;
            }
            Result::Ok(g) => g,
        };
        let opts = PluginOptions { policy: FailurePolicy::Fail, grants, threads: 1, ..PluginOptions::default() };
        let plugin = match host.load_reward(&spec.path, opts) {
            Err(e) => {
                rep.push(what, Fail, format!("{}: {e}", spec.path.display()));
                continue;
            }
            Result::Ok(p) => p,
        };
        let m = plugin.manifest();
        rep.push(what.clone(), Ok, format!("{} {} (API {}) from {}", m.name, m.version, m.api_version, spec.path.display()));
        let requested: Vec<&str> = m.capabilities.iter().map(cap_name).collect();
        let mut granted = Vec::new();
        if spec.grants.judge.is_some() {
            granted.push("judge");
        }
        if spec.grants.search.is_some() {
            granted.push("search");
        }
        let missing: Vec<_> = requested.iter().filter(|c| !granted.contains(c)).collect();
        let extra: Vec<_> = granted.iter().filter(|c| !requested.contains(c)).collect();
        if !missing.is_empty() {
            rep.push(format!("{what} capabilities"), Fail, format!("requests {missing:?} but task.yaml grants only {granted:?} (add rewards[].grants)"));
        } else if !extra.is_empty() {
            rep.push(format!("{what} capabilities"), Fail, format!("task.yaml grants {extra:?} which the plugin does not request"));
        } else {
            rep.push(format!("{what} capabilities"), Ok, format!("requested {requested:?} = granted"));
        }
        if let Some(j) = &spec.grants.judge {
            let (status, detail) = judge_model_check(j, &task.dir);
            rep.push(format!("{what} judge model"), status, detail);
        }
        let mut seen = Vec::new();
        for (split, ex) in &split_examples {
            let (origin, e) = &ex[0];
            let response = reference_answer(e).unwrap_or("");
            let s = example_sample(e, response);
            match plugin.score(&spec.config, std::slice::from_ref(&s)) {
                Err(err) => rep.push(format!("{what} scores {split}"), Fail, format!("{origin}: {err}")),
                Result::Ok(out) => match out.first() {
                    Some(Outcome::Scored { score, components: c }) => {
                        for (k, _) in c {
                            if !seen.iter().any(|s: &String| s.as_str() == &**k) {
                                seen.push(k.to_string());
                            }
                        }
                        let parts = c.iter().map(|(k, v)| format!("{k}={v:.3}")).collect::<Vec<_>>().join(" ");
                        rep.push(format!("{what} scores {split}"), Ok, format!("{origin}: score {score:.4} [{parts}]"));
                    }
                    Some(Outcome::NotApplicable) => rep.push(format!("{what} scores {split}"), Fail, format!("{origin}: the plugin says not applicable to the task's own data")),
                    other => rep.push(format!("{what} scores {split}"), Fail, format!("{origin}: {other:?}")),
                },
            }
        }
        components.push((spec.name.clone(), seen));
    }

    // Tools: each loads as a `tool` component under its grants and describes itself.
    match task.tool_configs() {
        Err(e) => rep.push("tools", Fail, e.to_string()),
        Result::Ok(tools) => {
            for (t, grants) in tools {
                let what = format!("tool {}", t.plugin.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default());
                if !t.plugin.is_file() {
                    rep.push(what, Fail, format!("{} not found (build the bundled plugins: scripts/setup-plugins.sh)", t.plugin.display()));
                    continue;
                }
                let granted: Vec<&str> = if grants.search.is_some() { vec!["search"] } else { vec![] };
                match host.load_tool(&t.plugin, &t.config, PluginOptions { grants, threads: 1, ..PluginOptions::default() }) {
                    Err(e) => rep.push(what, Fail, format!("{}: {e}", t.plugin.display())),
                    Result::Ok(p) => {
                        let requested: Vec<&str> = p.manifest().capabilities.iter().map(cap_name).collect();
                        let status = if requested.iter().all(|c| granted.contains(c)) { Ok } else { Fail };
                        rep.push(what, status, format!("`{}`: {} (requests {requested:?}, granted {granted:?})", p.spec().name, p.spec().description));
                    }
                }
            }
        }
    }

    // Metrics.
    let metrics = task.metrics();
    let prefix = if metrics.answer_prefix.is_empty() { String::new() } else { format!(" after the prefix {:?}", metrics.answer_prefix) };
    rep.push("metric answer", Ok, format!("answers parsed as `{}`{prefix}", metrics.answer));
    if let Some(acc) = &metrics.accuracy {
        let plugin = acc.plugin.clone().or_else(|| task.config.rewards.first().map(|r| r.plugin.clone())).unwrap_or_default();
        let comps = components.iter().find(|(n, _)| *n == plugin).map(|(_, c)| c.clone());
        match comps {
            _ if acc.component == "score" => rep.push("metric accuracy", Ok, format!("{plugin} total score >= {}", acc.threshold)),
            Some(c) if c.contains(&acc.component) => rep.push("metric accuracy", Ok, format!("{plugin} component `{}` >= {}", acc.component, acc.threshold)),
            Some(c) if !c.is_empty() || split_examples.is_empty() => {
                rep.push("metric accuracy", Fail, format!("{plugin} reports no component `{}` (it reports {c:?})", acc.component))
            }
            _ => rep.push("metric accuracy", Warn, format!("could not check component `{}` of {plugin}", acc.component)),
        }
    }
    if !metrics.text.is_empty() {
        let have_ref = split_examples.iter().all(|(_, ex)| ex.iter().all(|(_, e)| reference_answer(e).is_some() || reference_text(&e.ground_truth).is_some()));
        let names = metrics.text.iter().map(|m| format!("{m:?}").to_lowercase()).collect::<Vec<_>>().join(", ");
        if have_ref {
            rep.push("metric text", Ok, format!("{names} against the reference answers"));
        } else {
            rep.push("metric text", Fail, format!("{names} need a reference answer (an assistant turn or ground_truth text) in every example"));
        }
    }
    if let Some(sv) = &metrics.survival {
        let bad = split_examples.iter().flat_map(|(_, ex)| ex.iter()).find(|(_, e)| {
            let gt = ground_truth_object(&e.ground_truth);
            !(gt.get(&sv.time_field).is_some_and(|v| v.as_f64().is_some()) && gt.get(&sv.event_field).is_some_and(|v| v.as_f64().is_some() || v.is_boolean()))
        });
        match bad {
            Some((o, _)) => rep.push("metric survival", Fail, format!("{o}: ground_truth needs numeric `{}` and `{}`", sv.time_field, sv.event_field)),
            None => rep.push("metric survival", Ok, format!("C-index and time-dependent AUC at {:?} months from <{}>", sv.horizons, sv.response_tag)),
        }
    }
    rep
}
