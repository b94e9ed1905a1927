//! Tools a model may call during a rollout, as a run config lists them ([`ToolConfig`]: plugin,
//! config, `on_failure`, `timeout_s`), loaded into a [`ToolSet`] that a multi-turn rollout
//! offers to the model ([`ToolSet::specs`]) and calls by name from any number of threads
//! ([`ToolSet::call`]), with the failure policy applied ([`ToolOutcome`]) and counters per tool
//! ([`ToolSet::stats`]).
//!
//! What is a failure: the sandbox's (trap, timeout, memory or fuel limit, output over the cap,
//! a capability the run does not grant) is a plugin failure, and `on_failure` decides. The
//! model's own mistakes (a tool name that does not exist, arguments that are not a JSON object)
//! and a tool's own error reply (`err` from the plugin, e.g. "top_k must be 1 to 20") are not:
//! they always go back to the model as the tool's reply, so it can correct itself, and are
//! counted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use medrl_plugin::{Grants, Limits, PluginError, PluginHost, PluginOptions, ToolPlugin, ToolSpec};

use crate::error::{BadTimeout, RewardError};
use crate::set::host;

/// What happens when a tool's plugin fails (see the module docs for what counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolFailure {
    /// A short error text goes back to the model as the tool's reply; the rollout goes on.
    #[default]
    Message,
    /// The sample is dropped (the rollout leaves it out of training).
    Drop,
    /// The run stops with the error.
    Fail,
}

/// One tool of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// Path of the tool's `.wasm` component (API 0.3.0, `tool` world).
    pub plugin: PathBuf,
    /// The tool's own configuration, passed to every call.
    #[serde(default)]
    pub config: Value,
    /// `message` (default), `drop` or `fail`.
    #[serde(default)]
    pub on_failure: ToolFailure,
    /// Wall-clock limit of one call, in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

fn default_timeout() -> f64 {
    10.0
}

impl ToolConfig {
    /// `timeout_s` as a call deadline, in (0, 86400] seconds.
    pub fn deadline(&self) -> Result<std::time::Duration, BadTimeout> {
        Some(self.timeout_s).filter(|t| *t > 0.0 && *t <= 86_400.0).map(std::time::Duration::from_secs_f64).ok_or(BadTimeout(self.timeout_s))
    }
}

/// The result of one tool call, after the failure policy.
#[derive(Debug)]
pub enum ToolOutcome {
    /// The tool's reply, for the model.
    Output(String),
    /// Something went wrong; `message` is for the model (as the tool's reply). `drop`: the
    /// policy drops the sample (`on_failure: drop`); never set for the model's own mistakes or
    /// the tool's own error reply.
    Error { message: String, drop: bool },
    /// The plugin failed under `on_failure: fail`: stop the run.
    Fail(RewardError),
}

/// Counters of one tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolStats {
    /// Calls by the model, failed ones included.
    pub calls: u64,
    /// Failed calls by kind: a `PluginError::kind` (`guest_error` is the tool's own error
    /// reply) or `bad_arguments` (not a JSON object).
    pub failures: BTreeMap<String, u64>,
}

struct LoadedTool {
    config: ToolConfig,
    plugin: ToolPlugin,
    calls: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

impl LoadedTool {
    fn failed(&self, kind: &'static str) {
        *self.failures.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// The loaded tools of a run. `Send + Sync`: call from every rollout thread at once.
pub struct ToolSet {
    tools: Vec<LoadedTool>,
    unknown_calls: AtomicU64,
}

// A multi-turn rollout calls tools from several threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<ToolSet>();
};

/// Longest reply text made from a failure (the tool's own error is already clipped by the host
/// to 4 KiB); the model reads it, so it is kept short.
const MAX_MESSAGE_BYTES: usize = 1024;

impl ToolSet {
    /// Compile and instantiate every tool, each with its `timeout_s` and `grants`, the other
    /// limits from `limits`. Tool names (from each plugin's spec) must be distinct.
    pub fn load(host: &PluginHost, configs: &[ToolConfig], grants: &Grants, limits: &Limits) -> Result<Self, RewardError> {
        let each: Vec<(ToolConfig, Grants)> = configs.iter().map(|c| (c.clone(), grants.clone())).collect();
        Self::load_each(host, &each, limits)
    }

    /// [`ToolSet::load`] with grants of each tool's own (a task bundle's tools: each its search
    /// corpus).
    pub fn load_each(host: &PluginHost, configs: &[(ToolConfig, Grants)], limits: &Limits) -> Result<Self, RewardError> {
        let mut tools: Vec<LoadedTool> = Vec::with_capacity(configs.len());
        for (c, grants) in configs {
            let label = c.plugin.display().to_string();
            let timeout = c.deadline().map_err(|source| RewardError::Deadline { name: label.clone(), source })?;
            let opts = PluginOptions { limits: Limits { timeout, ..limits.clone() }, grants: grants.clone(), ..Default::default() };
            let plugin = host.load_tool(&c.plugin, &c.config, opts).map_err(|source| RewardError::Tool { name: label.clone(), source: Box::new(source) })?;
            let name = &plugin.spec().name;
            if let Some(other) = tools.iter().find(|t| &t.plugin.spec().name == name) {
                return Err(RewardError::DuplicateTool { name: name.clone(), first: other.config.plugin.clone(), second: c.plugin.clone() });
            }
            tools.push(LoadedTool { config: c.clone(), plugin, calls: AtomicU64::new(0), failures: Mutex::new(BTreeMap::new()) });
        }
        Ok(Self { tools, unknown_calls: AtomicU64::new(0) })
    }

    /// The specs to offer the model, in config order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.plugin.spec().clone()).collect()
    }

    /// The tools' names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.plugin.spec().name.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Calls the tool `name` with `arguments` (the JSON text the model wrote). Never panics on
    /// what the model wrote: an unknown name or arguments that are not a JSON object come back
    /// as [`ToolOutcome::Error`] with a message for the model.
    pub fn call(&self, name: &str, arguments: &str) -> ToolOutcome {
        let Some(tool) = self.tools.iter().find(|t| t.plugin.spec().name == name) else {
            self.unknown_calls.fetch_add(1, Ordering::Relaxed);
            let known = self.names();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return ToolOutcome::Error { message: clip(format!("unknown tool `{name}` (available: {known})")), drop: false };
        };
        tool.calls.fetch_add(1, Ordering::Relaxed);
        if let Err(message) = check_arguments(arguments) {
            tool.failed("bad_arguments");
            return ToolOutcome::Error { message, drop: false };
        }
        match tool.plugin.call(arguments) {
            Ok(text) => ToolOutcome::Output(text),
            Err(e) => {
                tool.failed(e.kind());
                apply_policy(name, tool.config.on_failure, e)
            }
        }
    }

    /// Counters per tool name.
    pub fn stats(&self) -> BTreeMap<String, ToolStats> {
        self.tools
            .iter()
            .map(|t| {
                let failures = t.failures.lock().unwrap().iter().map(|(k, v)| (k.to_string(), *v)).collect();
                (t.plugin.spec().name.clone(), ToolStats { calls: t.calls.load(Ordering::Relaxed), failures })
            })
            .collect()
    }

    /// Calls naming a tool that is not in the set.
    pub fn unknown_calls(&self) -> u64 {
        self.unknown_calls.load(Ordering::Relaxed)
    }
}

/// Load the tools of `configs`, all with `grants` and default limits, in a fresh host.
pub fn load_tools(configs: &[ToolConfig], grants: &Grants) -> Result<ToolSet, RewardError> {
    ToolSet::load(&*host(None)?, configs, grants, &Limits::default())
}

/// [`load_tools`], each tool with its own grants.
pub fn load_tools_each(configs: &[(ToolConfig, Grants)]) -> Result<ToolSet, RewardError> {
    ToolSet::load_each(&*host(None)?, configs, &Limits::default())
}

/// `Err` with a message for the model unless `arguments` is a JSON object.
fn check_arguments(arguments: &str) -> Result<(), String> {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(_)) => Ok(()),
        Ok(_) => Err("tool arguments must be a JSON object, e.g. {\"query\": \"...\"}".into()),
        Err(e) => Err(clip(format!("tool arguments are not valid JSON: {e}"))),
    }
}

/// The outcome of a failed call under `policy`. The tool's own error reply goes back to the
/// model whatever the policy (it is an answer, not a broken plugin).
fn apply_policy(name: &str, policy: ToolFailure, e: PluginError) -> ToolOutcome {
    let message = clip(match &e {
        PluginError::GuestError { message, .. } => return ToolOutcome::Error { message: clip(message.clone()), drop: false },
        PluginError::Timeout { limit, .. } => format!("tool `{name}` did not answer within {} s", limit.as_secs_f64()),
        PluginError::CapabilityDenied { capability, .. } => format!("tool `{name}` cannot run here: it needs `{capability}`, which this run does not grant"),
        PluginError::BadOutput { reason, .. } => format!("tool `{name}` gave an invalid reply: {reason}"),
        other => format!("tool `{name}` failed ({})", other.kind()),
    });
    match policy {
        ToolFailure::Message => ToolOutcome::Error { message, drop: false },
        ToolFailure::Drop => ToolOutcome::Error { message, drop: true },
        ToolFailure::Fail => ToolOutcome::Fail(RewardError::Tool { name: name.to_string(), source: Box::new(e) }),
    }
}

/// `text` cut to `MAX_MESSAGE_BYTES` at a character boundary.
fn clip(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(" [...]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use medrl_plugin::PluginId;
    use std::time::Duration;

    fn cfg(json: &str) -> ToolConfig {
        serde_json::from_str(json).unwrap()
    }

    fn id() -> PluginId {
        PluginId { name: "t".into(), version: "1".into() }
    }

    #[test]
    fn configs_have_defaults_and_refuse_unknown_fields() {
        let c = cfg(r#"{"plugin": "p/pubmed_search_tool.wasm"}"#);
        assert_eq!((c.on_failure, c.timeout_s, &c.config), (ToolFailure::Message, 10.0, &Value::Null));
        let c = cfg(r#"{"plugin": "t.wasm", "on_failure": "drop", "timeout_s": 2.5, "config": {"k": 1}}"#);
        assert_eq!((c.on_failure, c.deadline().unwrap()), (ToolFailure::Drop, Duration::from_millis(2500)));
        assert_eq!(cfg(r#"{"plugin": "t.wasm", "on_failure": "fail"}"#).on_failure, ToolFailure::Fail);
        assert!(serde_json::from_str::<ToolConfig>(r#"{"plugin": "t.wasm", "on_failure": "score:0"}"#).is_err());
        assert!(serde_json::from_str::<ToolConfig>(r#"{"plugin": "t.wasm", "weight": 1}"#).is_err());
        assert!(cfg(r#"{"plugin": "t.wasm", "timeout_s": 0}"#).deadline().is_err());
    }

    #[test]
    fn arguments_must_be_a_json_object() {
        assert!(check_arguments(r#"{"query": "x"}"#).is_ok());
        assert!(check_arguments("[1]").unwrap_err().contains("must be a JSON object"));
        assert!(check_arguments("{\"query\": ").unwrap_err().starts_with("tool arguments are not valid JSON"));
        assert!(check_arguments(&format!("{{\"q\": {}", "1".repeat(10_000))).unwrap_err().len() <= MAX_MESSAGE_BYTES + 8);
    }

    #[test]
    fn policies_decide_plugin_failures_but_not_the_tools_own_errors() {
        let timeout = || PluginError::Timeout { plugin: id(), limit: Duration::from_secs(2), elapsed: Duration::from_secs(2) };
        match apply_policy("pubmed_search", ToolFailure::Message, timeout()) {
            ToolOutcome::Error { message, drop: false } => assert_eq!(message, "tool `pubmed_search` did not answer within 2 s"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(apply_policy("t", ToolFailure::Drop, timeout()), ToolOutcome::Error { drop: true, .. }));
        match apply_policy("t", ToolFailure::Fail, timeout()) {
            ToolOutcome::Fail(e) => assert!(matches!(&e, RewardError::Tool { name, .. } if name == "t") && e.to_string().contains("timed out"), "{e}"),
            o => panic!("{o:?}"),
        }
        for policy in [ToolFailure::Message, ToolFailure::Drop, ToolFailure::Fail] {
            let own = PluginError::GuestError { plugin: id(), message: "top_k must be 1 to 20".into() };
            match apply_policy("t", policy, own) {
                ToolOutcome::Error { message, drop: false } => assert_eq!(message, "top_k must be 1 to 20"),
                o => panic!("{o:?}"),
            }
        }
        let denied = PluginError::CapabilityDenied { plugin: id(), capability: "search".into() };
        match apply_policy("t", ToolFailure::Message, denied) {
            ToolOutcome::Error { message, .. } => assert!(message.contains("`search`"), "{message}"),
            o => panic!("{o:?}"),
        }
        let trap = PluginError::Trap { plugin: id(), message: "x".repeat(10_000), backtrace: "y".repeat(10_000) };
        match apply_policy("t", ToolFailure::Message, trap) {
            ToolOutcome::Error { message, .. } => assert_eq!(message, "tool `t` failed (trap)"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn an_unknown_tool_is_a_message_for_the_model() {
        let set = ToolSet::load(&*host(None).unwrap(), &[], &Grants::none(), &Limits::default()).unwrap();
        assert!(set.is_empty() && set.specs().is_empty());
        match set.call("pubmed_search", "{}") {
            ToolOutcome::Error { message, drop: false } => assert_eq!(message, "unknown tool `pubmed_search` (available: none)"),
            o => panic!("{o:?}"),
        }
        assert_eq!(set.unknown_calls(), 1);
        assert!(set.stats().is_empty());
    }
}

/// The agent loop's view of the tools: the sandbox's failures arrive already judged by each
/// tool's `on_failure`.
impl medrl_lm::agent::ToolRunner for ToolSet {
    fn specs(&self) -> Vec<(String, String, Value)> {
        ToolSet::specs(self).into_iter().map(|s| (s.name, s.description, s.parameters)).collect()
    }
    fn call(&self, name: &str, arguments: &str) -> medrl_lm::agent::ToolReply {
        use medrl_lm::agent::ToolReply;
        match ToolSet::call(self, name, arguments) {
            ToolOutcome::Output(s) => ToolReply::Output(s),
            ToolOutcome::Error { message, drop } => ToolReply::Error { message, drop },
            ToolOutcome::Fail(e) => ToolReply::Fail(e.to_string()),
        }
    }
}
