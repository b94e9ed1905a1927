use anyhow::Context;
use std::path::PathBuf;

use crate::train::rl::algos::{dispatch, AlgorithmVisitor, NAMES};
use crate::train::rl::{RlAlgorithm, RlConfig};

#[derive(clap::Args)]
pub struct SchemaArgs {
    /// Which configuration type: `generate`, `sft`, `task` (tasks/<name>/task.yaml), or an RL
    /// algorithm (`grpo`, `ppo`, `rloo`: `medrl <algorithm> --config`).
    #[arg(default_value = "generate")]
    kind: String,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(args: SchemaArgs) -> anyhow::Result<()> {
    struct RlSchema;
    impl AlgorithmVisitor for RlSchema {
        type Output = serde_json::Value;
        fn visit<A: RlAlgorithm>(self) -> serde_json::Value {
            crate::config::schema_of::<RlConfig<A::Config>>()
        }
    }
    let schema = match args.kind.as_str() {
        "generate" => crate::config::schema_of::<crate::generate::GenerateConfig>(),
        "sft" => crate::config::schema_of::<crate::train::sft::SftConfig>(),
        "task" => crate::config::schema_of::<crate::task::TaskConfig>(),
        other => dispatch(other, RlSchema).with_context(|| format!("no configuration type `{other}` (have: generate, sft, task, {})", NAMES.join(", ")))?,
    };
    let text = serde_json::to_string_pretty(&schema)? + "\n";
    match args.output {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
