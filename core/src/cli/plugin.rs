//! `medrl plugin new|build|inspect`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use crate::plugin::{Capability, HostConfig, PluginHost};

/// Default location of the reward SDK for scaffolds: the copy in this source tree.
const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../reward-sdk");

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new Rust reward plugin crate that builds and passes `cargo test` as generated.
    New {
        /// Plugin name (lowercase letters, digits, `-`).
        name: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path to the medrl-reward-sdk crate (default: the one this medrl was built from, or
        /// $MEDRL_SDK_PATH).
        #[arg(long, env = "MEDRL_SDK_PATH")]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 (release) and print the component's path.
    Build {
        /// Crate directory (contains Cargo.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print a component's kind (reward, data adapter, tool), manifest, API version, requested
    /// capabilities and, for a tool, its spec.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk.unwrap_or_else(|| PathBuf::from(SDK_DIR));
            new_plugin(&name, &dir, &sdk)?;
            println!("created {} (reward plugin `{name}`)", dir.display());
            println!(
                "next: cd {} && cargo test && medrl plugin build .",
                dir.display()
            );
            Ok(())
        }
        PluginCommand::Build { dir } => {
            for p in build_plugin(&dir)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        PluginCommand::Inspect { file, json } => inspect(&file, json),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Writes the scaffold crate. Refuses to overwrite an existing Cargo.toml.
pub fn new_plugin(name: &str, dir: &Path, sdk: &Path) -> Result<()> {
    if !valid_name(name) {
        bail!("invalid plugin name `{name}`: use lowercase letters, digits and `-`, starting with a letter");
    }
    if dir.join("Cargo.toml").exists() {
        bail!(
            "{} already contains a Cargo.toml; choose another --dir",
            dir.display()
        );
    }
    let sdk = std::fs::canonicalize(sdk).with_context(|| {
        format!(
            "medrl-reward-sdk not found at {} (pass --sdk or set MEDRL_SDK_PATH)",
            sdk.display()
        )
    })?;
    std::fs::create_dir_all(dir.join("src"))?;
    let ty: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{sdk}", &sdk.display().to_string().replace('\\', "/")),
        ),
        (
            "src/lib.rs",
            LIB_RS.replace("{name}", name).replace("{Type}", &ty),
        ),
        (
            "README.md",
            README
                .replace("{name}", name)
                .replace("{crate}", &name.replace('-', "_")),
        ),
        (".gitignore", "/target\n".to_string()),
        ("samples.jsonl", SAMPLES.to_string()),
    ];
    for (rel, text) in files {
        std::fs::write(dir.join(rel), text)
            .with_context(|| format!("writing {}", dir.join(rel).display()))?;
    }
    Ok(())
}

/// `cargo build --release --target wasm32-wasip2`; returns the built `.wasm` files.
pub fn build_plugin(dir: &Path) -> Result<Vec<PathBuf>> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        bail!("no Cargo.toml in {}", dir.display());
    }
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo (is the Rust toolchain installed?)")?;
    if !out.status.success() {
        bail!(
            "cargo build failed for {} (if the target is missing: rustup target add wasm32-wasip2, or scripts/setup-plugins.sh)",
            dir.display()
        );
    }
    // Cargo reports artifacts as JSON lines; keep the .wasm files of cdylib targets.
    let mut wasm = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        for f in msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
        {
            if f.ends_with(".wasm") {
                wasm.push(PathBuf::from(f));
            }
        }
    }
    if wasm.is_empty() {
        bail!(
            "cargo built {} but produced no .wasm (is crate-type = [\"cdylib\"] set?)",
            dir.display()
        );
    }
    Ok(wasm)
}

fn inspect(file: &Path, json: bool) -> Result<()> {
    let host = PluginHost::new(HostConfig::default())?;
    let info = host.inspect_plugin(file)?;
    let (m, api) = (&info.manifest, &info.api_version);
    let caps: Vec<&str> = m
        .capabilities
        .iter()
        .map(|c| match c {
            Capability::Judge => "judge",
            Capability::Search => "search",
        })
        .collect();
    if json {
        let schema: serde_json::Value = serde_json::from_str(&m.config_schema)
            .unwrap_or(serde_json::Value::String(m.config_schema.clone()));
        let mut out = serde_json::json!({
            "kind": info.world, "name": m.name, "version": m.version,
            "description": m.description, "api_version": api, "capabilities": caps,
            "config_schema": schema,
        });
        if let Some(tool) = &info.tool {
            out["tool"] = serde_json::to_value(tool)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("kind:         {}", info.world);
        println!("name:         {}", m.name);
        println!("version:      {}", m.version);
        println!("description:  {}", m.description);
        println!("api version:  {api}");
        println!(
            "capabilities: {}",
            if caps.is_empty() {
                "none".to_string()
            } else {
                caps.join(", ")
            }
        );
        println!("config schema: {}", m.config_schema);
        if let Some(tool) = &info.tool {
            println!("tool name:    {}", tool.name);
            println!("tool description: {}", tool.description);
            println!("tool parameters: {}", tool.parameters);
        }
    }
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

# A standalone crate: not part of any enclosing workspace.
[workspace]

[lib]
# cdylib: the WebAssembly component; rlib: lets `cargo test` run the scoring logic natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
medrl-reward-sdk = { path = "{sdk}" }

[profile.release]
codegen-units = 1
strip = true
"#;

const LIB_RS: &str = r#"//! `{name}`: a medrl reward plugin.
//!
//! Scores 1.0 when the last `<answer>...</answer>` equals the ground truth (case-insensitive,
//! surrounding whitespace ignored), 0.0 otherwise, and `format_penalty` when there is no
//! answer tag. Edit `score` to implement your reward; keep `cargo test` green.

use medrl_reward_sdk::helpers::last_tag;
use medrl_reward_sdk::{export_reward, serde_json::json, Manifest, Outcome, Reward, Sample, Value};

pub struct {Type};

impl Reward for {Type} {
    fn manifest() -> Manifest {
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"), "1.0 if the <answer> matches the ground truth")
            .config_schema(json!({
                "type": "object",
                "properties": { "format_penalty": { "type": "number", "default": 0.0 } }
            }))
    }

    fn score(config: &Value, sample: &Sample) -> Result<Outcome, String> {
        let penalty = config.get("format_penalty").and_then(Value::as_f64).unwrap_or(0.0);
        let Some(answer) = last_tag(&sample.response, "answer") else {
            return Ok(Outcome::score(penalty).with("format", 0.0));
        };
        let expected = match &sample.ground_truth {
            Value::String(s) => s.clone(),
            Value::Null => return Err("sample has no ground truth".into()),
            other => other.to_string(),
        };
        let correct = answer.eq_ignore_ascii_case(expected.trim());
        Ok(Outcome::score(if correct { 1.0 } else { 0.0 }).with("format", 1.0).with("correct", correct as u8 as f64))
    }
}

export_reward!({Type});

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(response: &str, truth: Value) -> Sample {
        Sample { response: response.into(), ground_truth: truth, ..Default::default() }
    }

    #[test]
    fn scores_matching_answer() {
        let s = sample("<answer> Metformin </answer>", json!("metformin"));
        assert_eq!({Type}::score(&json!({}), &s).unwrap().value(), Some(1.0));
    }

    #[test]
    fn penalizes_missing_tag() {
        let s = sample("metformin", json!("metformin"));
        assert_eq!({Type}::score(&json!({"format_penalty": -1.0}), &s).unwrap().value(), Some(-1.0));
    }

    #[test]
    fn missing_ground_truth_is_an_error() {
        assert!({Type}::score(&json!({}), &sample("<answer>x</answer>", Value::Null)).is_err());
    }
}
"#;

const README: &str = r#"# {name}

A medrl reward plugin (WebAssembly component, API medrl:plugin@0.3.0).

    cargo test                                   # scoring logic, natively
    medrl plugin build .                         # -> target/wasm32-wasip2/release/{crate}.wasm
    medrl plugin inspect target/wasm32-wasip2/release/{crate}.wasm
    medrl reward score --plugin target/wasm32-wasip2/release/{crate}.wasm --input samples.jsonl

See docs/writing-plugins.md in the medrl repository.
"#;

const SAMPLES: &str = r#"{"prompt": "First-line drug for type 2 diabetes?", "response": "<answer>Metformin</answer>", "ground_truth": "metformin"}
{"prompt": "First-line drug for type 2 diabetes?", "response": "<answer>Insulin</answer>", "ground_truth": "metformin"}
{"prompt": "First-line drug for type 2 diabetes?", "response": "Metformin", "ground_truth": "metformin"}
"#;
