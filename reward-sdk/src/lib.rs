//! Write medrl reward functions, data adapters and tools in Rust.
//!
//! ```ignore
//! use medrl_reward_sdk::{export_reward, Manifest, Outcome, Reward, Sample};
//! struct Exact;
//! impl Reward for Exact {
//!     fn manifest() -> Manifest { Manifest::new("exact", "0.1.0", "1.0 if the answer matches") }
//!     fn score(_cfg: &serde_json::Value, s: &Sample) -> Result<Outcome, String> {
//!         let ok = s.response.trim() == s.ground_truth.as_str().unwrap_or_default();
//!         Ok(Outcome::score(if ok { 1.0 } else { 0.0 }))
//!     }
//! }
//! export_reward!(Exact);
//! ```
//!
//! A tool (API 0.3.0's `tool` world) is as short; see [`Tool`]:
//!
//! ```ignore
//! use medrl_reward_sdk::{export_tool, serde_json::json, Tool, Value};
//! struct Bmi;
//! impl Tool for Bmi {
//!     const NAME: &'static str = "bmi";
//!     const DESCRIPTION: &'static str = "Body-mass index from weight (kg) and height (m).";
//!     fn parameters() -> Value {
//!         json!({"type": "object", "required": ["kg", "m"],
//!                "properties": {"kg": {"type": "number"}, "m": {"type": "number"}}})
//!     }
//!     fn call(_cfg: &Value, args: &Value) -> Result<String, String> {
//!         let (kg, m) = (args["kg"].as_f64().ok_or("kg: a number")?, args["m"].as_f64().ok_or("m: a number")?);
//!         Ok(format!("BMI {:.1}", kg / (m * m)))
//!     }
//! }
//! export_tool!(Bmi);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (or `medrl plugin build`). The
//! traits, types and [`helpers`] also compile natively, so scoring logic is unit-tested with a
//! plain `cargo test`; only the export glue and host calls are wasm-only.

pub mod batch;
pub mod config;
pub mod helpers;

pub use serde_json::{self, Value};

/// The plugin API version this SDK implements (the WIT package version in `wit/v0.3`).
///
/// `wit/v0.1` and `wit/v0.2` stay in the repository for hosts and plugins built against them
/// (the medrl host runs all three); this SDK builds 0.3.0 plugins only.
pub const API_VERSION: &str = "0.3.0";

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __bindings {
    pub mod reward {
        wit_bindgen::generate!({
            path: "wit/v0.3",
            world: "reward",
            pub_export_macro: true,
            export_macro_name: "__export_reward_world",
            runtime_path: "wit_bindgen::rt",
        });
    }
    pub mod adapter {
        wit_bindgen::generate!({
            path: "wit/v0.3",
            world: "data-adapter",
            pub_export_macro: true,
            export_macro_name: "__export_adapter_world",
            runtime_path: "wit_bindgen::rt",
            with: {
                "medrl:plugin/types@0.3.0": super::reward::medrl::plugin::types,
                "medrl:plugin/host@0.3.0": super::reward::medrl::plugin::host,
                "medrl:plugin/judge@0.3.0": super::reward::medrl::plugin::judge,
                "medrl:plugin/search@0.3.0": super::reward::medrl::plugin::search,
            },
        });
    }
    pub mod tool {
        wit_bindgen::generate!({
            path: "wit/v0.3",
            world: "tool",
            pub_export_macro: true,
            export_macro_name: "__export_tool_world",
            runtime_path: "wit_bindgen::rt",
            with: {
                "medrl:plugin/types@0.3.0": super::reward::medrl::plugin::types,
                "medrl:plugin/host@0.3.0": super::reward::medrl::plugin::host,
                "medrl:plugin/judge@0.3.0": super::reward::medrl::plugin::judge,
                "medrl:plugin/search@0.3.0": super::reward::medrl::plugin::search,
            },
        });
    }
}

/// Host services a plugin may ask for; the run's configuration decides whether they are granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Judge,
    Search,
}

/// What a plugin says about itself (`medrl plugin inspect` prints it).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema of the config object, as JSON text.
    pub config_schema: String,
    pub capabilities: Vec<Capability>,
}

impl Manifest {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            config_schema: "{}".into(),
            capabilities: vec![],
        }
    }
    pub fn config_schema(mut self, schema: Value) -> Self {
        self.config_schema = schema.to_string();
        self
    }
    pub fn capability(mut self, c: Capability) -> Self {
        self.capabilities.push(c);
        self
    }
}

/// One completion to score, with its JSON fields parsed.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
    pub ground_truth: Value,
    pub metadata: Value,
    pub data_source: String,
}

/// One completion to score as the host sent it: `ground_truth` and `metadata` are still JSON
/// text. See [`Reward::score_raw`].
///
/// The fields borrow from the batch the host passed in (API 0.2.0 sends a whole batch as one
/// string), so handing a `RawSample` to `score_raw` copies nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawSample<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    /// JSON value as text.
    pub ground_truth: &'a str,
    /// JSON object as text ("{}" when absent).
    pub metadata: &'a str,
    pub data_source: &'a str,
}

impl RawSample<'_> {
    /// Parses the JSON fields, as the SDK does before [`Reward::score`]: text that is not JSON
    /// (e.g. a bare answer string) becomes a JSON string. Copies the text fields.
    pub fn parse(self) -> Sample {
        Sample {
            ground_truth: json_or_string(self.ground_truth),
            metadata: json_or_string(self.metadata),
            prompt: self.prompt.to_string(),
            response: self.response.to_string(),
            data_source: self.data_source.to_string(),
        }
    }
}

/// Non-JSON text (e.g. a bare answer string) is passed through as a JSON string.
fn json_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// What a reward returns for one sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Scored {
        score: f64,
        components: Vec<(String, f64)>,
    },
    /// Not this plugin's task (mixed batches): the trainer ignores the sample for this reward.
    NotApplicable,
}

impl Outcome {
    pub fn score(score: f64) -> Self {
        Outcome::Scored {
            score,
            components: vec![],
        }
    }
    /// Adds a named component (logged on its own by the trainer).
    pub fn with(mut self, name: &str, value: f64) -> Self {
        if let Outcome::Scored { components, .. } = &mut self {
            components.push((name.into(), value));
        }
        self
    }
    pub fn value(&self) -> Option<f64> {
        match self {
            Outcome::Scored { score, .. } => Some(*score),
            Outcome::NotApplicable => None,
        }
    }
}

/// A reward function. Implement it on a unit struct and call [`export_reward!`].
pub trait Reward {
    fn manifest() -> Manifest;
    /// Score one sample. `Err` marks this sample as failed (the host's policy decides what
    /// happens); it does not affect the other samples of the batch.
    fn score(config: &Value, sample: &Sample) -> Result<Outcome, String>;
    /// Scores a sample whose `ground_truth` and `metadata` are still JSON text; this is what
    /// the plugin's export calls. The default parses both into [`Value`]s
    /// ([`RawSample::parse`]) and calls [`Reward::score`]. Override it in cheap rewards scored
    /// in bulk, where building two `Value`s per sample is a visible part of the cost, and read
    /// only the fields you need (e.g. with a typed `serde_json::from_str`); keep `score`
    /// giving the same results.
    fn score_raw(config: &Value, sample: RawSample<'_>) -> Result<Outcome, String> {
        Self::score(config, &sample.parse())
    }
}

/// One chat message of a training example.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A training example as data adapters produce it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    pub messages: Vec<Message>,
    pub ground_truth: Value,
    pub metadata: Value,
    pub data_source: String,
}

/// A data adapter: raw records (any JSON) to training examples.
pub trait Adapter {
    fn manifest() -> Manifest;
    fn convert(config: &Value, record: &Value) -> Result<Example, String>;
}

/// A tool a model can call during a rollout (API 0.3.0's `tool` world). Implement it on a unit
/// struct and call [`export_tool!`]; the plugin's manifest takes the crate's name and version.
///
/// The host checks the spec at load: `NAME` is 1 to 64 bytes of `[a-z0-9_-]`, `DESCRIPTION`
/// at most 4 KiB, `parameters()` a JSON object of at most 64 KiB. Each call runs under the
/// sandbox's limits; output longer than the host's cap (64 KiB by default) fails the call
/// rather than being cut, so keep answers short: a model reads them.
pub trait Tool {
    /// The name the model calls the tool by, e.g. `"pubmed_search"`.
    const NAME: &'static str;
    /// What the tool does and when to use it, for the model (also the manifest's description).
    const DESCRIPTION: &'static str;
    /// JSON Schema of the arguments object.
    fn parameters() -> Value;
    /// Host capabilities the tool uses (declared in its manifest; the run decides whether they
    /// are granted, and a call that uses one that is not fails).
    fn capabilities() -> Vec<Capability> {
        vec![]
    }
    /// JSON Schema of the config object; `{}` when there is none.
    fn config_schema() -> Value {
        Value::Object(Default::default())
    }
    /// Runs the tool. `args` is the JSON object the model wrote (the SDK has parsed it; check
    /// it against your schema). `Ok` is the reply the model reads; `Err` an error message it
    /// reads instead, so say what to fix ("top_k must be 1 to 20").
    fn call(config: &Value, args: &Value) -> Result<String, String>;
}

/// Host calls. Inside a plugin they go to the host; natively (unit tests) `log` prints to
/// stderr and capabilities return an error.
pub mod host {
    #[derive(Debug, Clone, Copy)]
    pub enum Level {
        Trace,
        Debug,
        Info,
        Warn,
        Error,
    }

    /// A search result from the host's index.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Hit {
        pub id: String,
        pub score: f64,
    }

    #[cfg(target_arch = "wasm32")]
    mod imp {
        use super::*;
        use crate::__bindings::reward::medrl::plugin as p;
        pub fn log(level: Level, msg: &str) {
            use p::host::LogLevel as L;
            let l = match level {
                Level::Trace => L::Trace,
                Level::Debug => L::Debug,
                Level::Info => L::Info,
                Level::Warn => L::Warn,
                Level::Error => L::Error,
            };
            p::host::log(l, msg)
        }
        pub fn judge_score(prompt: &str) -> Result<f64, String> {
            p::judge::judge_score(prompt)
        }
        pub fn judge_generate(prompt: &str, max_tokens: u32) -> Result<String, String> {
            p::judge::judge_generate(prompt, max_tokens)
        }
        pub fn search(query: &str, top_k: u32) -> Result<Vec<Hit>, String> {
            p::search::search(query, top_k).map(|v| {
                v.into_iter()
                    .map(|h| Hit {
                        id: h.id,
                        score: h.score,
                    })
                    .collect()
            })
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod imp {
        use super::*;
        const NATIVE: &str = "host capabilities are only available inside the medrl plugin host";
        pub fn log(level: Level, msg: &str) {
            eprintln!("[{level:?}] {msg}");
        }
        pub fn judge_score(_prompt: &str) -> Result<f64, String> {
            Err(NATIVE.into())
        }
        pub fn judge_generate(_prompt: &str, _max_tokens: u32) -> Result<String, String> {
            Err(NATIVE.into())
        }
        pub fn search(_query: &str, _top_k: u32) -> Result<Vec<Hit>, String> {
            Err(NATIVE.into())
        }
    }

    /// Write to the host's log (tagged with the plugin's name).
    pub fn log(level: Level, msg: &str) {
        imp::log(level, msg)
    }
    /// Ask the granted judge model for a score in [0, 1]. Fails if `judge` is not granted.
    pub fn judge_score(prompt: &str) -> Result<f64, String> {
        imp::judge_score(prompt)
    }
    /// Ask the granted judge model to generate text. Fails if `judge` is not granted.
    pub fn judge_generate(prompt: &str, max_tokens: u32) -> Result<String, String> {
        imp::judge_generate(prompt, max_tokens)
    }
    /// Query the granted search index. Fails if `search` is not granted.
    pub fn search(query: &str, top_k: u32) -> Result<Vec<Hit>, String> {
        imp::search(query, top_k)
    }
}

/// Glue used by the export macros; not a stable API.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::__bindings::reward::medrl::plugin::types as t;

    fn manifest(m: Manifest) -> t::Manifest {
        t::Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities: m
                .capabilities
                .into_iter()
                .map(|c| match c {
                    Capability::Judge => t::Capability::Judge,
                    Capability::Search => t::Capability::Search,
                })
                .collect(),
            api_version: API_VERSION.into(),
        }
    }

    pub fn reward_manifest<R: Reward>() -> t::Manifest {
        manifest(R::manifest())
    }

    pub fn reward_score_batch<R: Reward>(config: String, batch: t::SampleBatch) -> t::BatchScores {
        let r = crate::batch::score::<R>(&config, &batch.text, &batch.offsets);
        t::BatchScores {
            scores: r.scores,
            component_names: r.component_names,
            components: r.components,
            absent: r.absent,
            errors: r.errors,
            not_applicable: r.not_applicable,
        }
    }

    pub fn tool_manifest<T: Tool>(package: &str, version: &str) -> t::Manifest {
        let mut m = Manifest::new(package, version, T::DESCRIPTION)
            .config_schema(T::config_schema());
        m.capabilities = T::capabilities();
        manifest(m)
    }

    pub fn tool_spec<T: Tool>() -> t::ToolSpec {
        t::ToolSpec {
            name: T::NAME.into(),
            description: T::DESCRIPTION.into(),
            parameters: T::parameters().to_string(),
        }
    }

    pub fn tool_call<T: Tool>(config: String, arguments: String) -> Result<String, String> {
        crate::tool_call::<T>(&config, &arguments)
    }

    pub fn adapter_manifest<A: Adapter>() -> t::Manifest {
        manifest(A::manifest())
    }

    pub fn adapter_convert<A: Adapter>(
        config: String,
        records: Vec<String>,
    ) -> Vec<Result<String, String>> {
        let config: Value = serde_json::from_str(if config.trim().is_empty() {
            "{}"
        } else {
            &config
        })
        .unwrap_or(Value::Null);
        records
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_str(r)
                    .map_err(|e| format!("record is not valid JSON: {e}"))?;
                let ex = A::convert(&config, &v)?;
                serde_json::to_string(&ex).map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// Exports a [`Reward`] implementation as the plugin's `reward` world. No-op natively.
#[macro_export]
macro_rules! export_reward {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __MedrlReward;
            impl $crate::__bindings::reward::Guest for __MedrlReward {
                fn manifest() -> $crate::__bindings::reward::medrl::plugin::types::Manifest {
                    $crate::__private::reward_manifest::<$t>()
                }
                fn score_batch(
                    config: ::std::string::String,
                    batch: $crate::__bindings::reward::medrl::plugin::types::SampleBatch,
                ) -> $crate::__bindings::reward::medrl::plugin::types::BatchScores {
                    $crate::__private::reward_score_batch::<$t>(config, batch)
                }
            }
            $crate::__bindings::reward::__export_reward_world!(__MedrlReward with_types_in $crate::__bindings::reward);
        };
    };
}

/// Parses what the host passes to a tool call and runs [`Tool::call`]: the glue behind
/// [`export_tool!`], public so a tool's tests can go through the same path natively.
pub fn tool_call<T: Tool>(config: &str, arguments: &str) -> Result<String, String> {
    let config: Value = if config.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(config).map_err(|e| format!("tool config is not valid JSON: {e}"))?
    };
    let args: Value = serde_json::from_str(arguments)
        .map_err(|e| format!("arguments are not valid JSON: {e}"))?;
    if !args.is_object() {
        return Err(format!(
            "arguments must be a JSON object, got {}",
            helpers::json_kind(&args)
        ));
    }
    T::call(&config, &args)
}

/// Exports a [`Tool`] implementation as the plugin's `tool` world (manifest name and version
/// from the crate's `Cargo.toml`). No-op natively.
#[macro_export]
macro_rules! export_tool {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __MedrlTool;
            impl $crate::__bindings::tool::Guest for __MedrlTool {
                fn manifest() -> $crate::__bindings::reward::medrl::plugin::types::Manifest {
                    $crate::__private::tool_manifest::<$t>(
                        env!("CARGO_PKG_NAME"),
                        env!("CARGO_PKG_VERSION"),
                    )
                }
                fn tool_spec() -> $crate::__bindings::reward::medrl::plugin::types::ToolSpec {
                    $crate::__private::tool_spec::<$t>()
                }
                fn call(
                    config: ::std::string::String,
                    arguments: ::std::string::String,
                ) -> ::std::result::Result<::std::string::String, ::std::string::String> {
                    $crate::__private::tool_call::<$t>(config, arguments)
                }
            }
            $crate::__bindings::tool::__export_tool_world!(__MedrlTool with_types_in $crate::__bindings::tool);
        };
    };
}

/// Exports an [`Adapter`] implementation as the plugin's `data-adapter` world. No-op natively.
#[macro_export]
macro_rules! export_adapter {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __MedrlAdapter;
            impl $crate::__bindings::adapter::Guest for __MedrlAdapter {
                fn manifest() -> $crate::__bindings::reward::medrl::plugin::types::Manifest {
                    $crate::__private::adapter_manifest::<$t>()
                }
                fn convert(
                    config: ::std::string::String,
                    records: ::std::vec::Vec<::std::string::String>,
                ) -> ::std::vec::Vec<::std::result::Result<::std::string::String, ::std::string::String>> {
                    $crate::__private::adapter_convert::<$t>(config, records)
                }
            }
            $crate::__bindings::adapter::__export_adapter_world!(__MedrlAdapter with_types_in $crate::__bindings::adapter);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Echo;
    impl Tool for Echo {
        const NAME: &'static str = "echo";
        const DESCRIPTION: &'static str = "Says `text` back.";
        fn parameters() -> Value {
            json!({"type": "object", "properties": {"text": {"type": "string"}}})
        }
        fn call(config: &Value, args: &Value) -> Result<String, String> {
            let text = config::str_or(args, "text", "")?;
            Ok(format!("{}{text}", config::str_or(config, "prefix", "")?))
        }
    }

    #[test]
    fn tool_calls_parse_config_and_arguments() {
        assert_eq!(tool_call::<Echo>(r#"{"prefix":"> "}"#, r#"{"text":"hi"}"#), Ok("> hi".into()));
        assert_eq!(tool_call::<Echo>("", r#"{"text":"hi"}"#), Ok("hi".into()));
        let e = tool_call::<Echo>("{}", "{\"text\":").unwrap_err();
        assert!(e.starts_with("arguments are not valid JSON"), "{e}");
        let e = tool_call::<Echo>("{}", "[1]").unwrap_err();
        assert_eq!(e, "arguments must be a JSON object, got an array");
        assert!(tool_call::<Echo>("{}", r#"{"text":1}"#).unwrap_err().contains("must be a string"));
    }
}
