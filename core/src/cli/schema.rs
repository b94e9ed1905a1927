use anyhow::Context;
use std::path::PathBuf;

/// Configuration file types with a schema.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// `medrl generate --config`.
    Generate,
    /// `medrl sft --config`.
    Sft,
    /// `medrl grpo --config`.
    Grpo,
    /// `medrl ppo --config`.
    Ppo,
    /// `tasks/<name>/task.yaml`.
    Task,
}

#[derive(clap::Args)]
pub struct SchemaArgs {
    /// Which configuration type.
    #[arg(value_enum, default_value = "generate")]
    kind: Kind,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(args: SchemaArgs) -> anyhow::Result<()> {
    let schema = match args.kind {
        Kind::Generate => crate::config::schema_of::<crate::generate::GenerateConfig>(),
        Kind::Sft => crate::config::schema_of::<crate::train::sft::SftConfig>(),
        Kind::Grpo => crate::config::schema_of::<crate::train::grpo::GrpoConfig>(),
        Kind::Ppo => crate::config::schema_of::<crate::train::ppo::PpoConfig>(),
        Kind::Task => crate::config::schema_of::<crate::task::TaskConfig>(),
    };
    let text = serde_json::to_string_pretty(&schema)? + "\n";
    match args.output {
        Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}
