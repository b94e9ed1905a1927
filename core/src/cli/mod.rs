//! Command-line edge: argument parsing, `anyhow` error reporting, and one module per command.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod index;
pub mod judge;
pub mod model;
pub mod plugin;
pub mod reward;
pub mod rl;
pub mod schema;
pub mod serve;
pub mod sft;
pub mod task;

use clap::{Parser, Subcommand};

/// medrl: post-train clinical language models (SFT, GRPO, PPO, RLOO) with sandboxed reward plugins.
#[derive(Parser)]
#[command(name = "medrl", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, import and inspect model folders.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Generate text from a model (batched, KV-cached, seeded).
    Generate(generate::GenerateArgs),
    /// Serve models over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(serve::ServeArgs),
    /// Benchmarks (throughput, device agreement); see docs/benchmarks.md.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Create, build and inspect WebAssembly reward plugins and data adapters.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Score samples with a reward plugin, or benchmark one.
    #[command(subcommand)]
    Reward(reward::RewardCommand),
    /// Supervised fine-tuning (full or LoRA) from a YAML config.
    Sft(sft::SftArgs),
    /// GRPO with reward plugins from a YAML config.
    Grpo(rl::RlArgs),
    /// PPO with a learned value model (critic) and reward plugins from a YAML config.
    Ppo(rl::RlArgs),
    /// RLOO (leave-one-out baseline) with reward plugins from a YAML config.
    Rloo(rl::RlArgs),
    /// Any registered RL algorithm by name: `medrl rl NAME --config FILE.yaml`.
    Rl {
        /// The algorithm (grpo, ppo, rloo).
        name: String,
        #[command(flatten)]
        args: rl::RlArgs,
    },
    /// Export a training checkpoint as a Hugging Face folder or a PEFT adapter.
    Export(export::ExportArgs),
    /// Inspect datasets as training will see them.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Evaluate a model on a task (resumable), or compare runs in an HTML report (`eval compare`).
    Eval(eval::EvalArgs),
    /// Local study indexes for the `search` capability: build, search, info.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Task bundles (tasks/<name>/task.yaml): list, show, validate.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Write the JSON Schema of a configuration file type (for editor completion and checks).
    Schema(schema::SchemaArgs),
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    crate::progress::init_logging(cli.log_json, level);
    let result = match cli.command {
        Command::Model(cmd) => model::run(cmd),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Schema(args) => schema::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Plugin(cmd) => plugin::run(cmd),
        Command::Reward(cmd) => reward::run(cmd),
        Command::Sft(args) => sft::run(args),
        Command::Export(args) => export::export(args),
        Command::Grpo(args) => rl::run("grpo", args),
        Command::Ppo(args) => rl::run("ppo", args),
        Command::Rloo(args) => rl::run("rloo", args),
        Command::Rl { name, args } => rl::run(&name, args),
        Command::Data(cmd) => data::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Task(cmd) => task::run(cmd),
        Command::Index(cmd) => index::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line ("loading model: file: reason"), each cause once: many
/// library errors already quote their source in their own message (`{path}: {source}`), and
/// anyhow's `{:#}` would repeat it.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        // A message that ends with its cause's text already says it.
        if !line.ends_with(&c) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("plugin x.wasm: I/O error on /p/x.wasm: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn one_line_names_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(Quoting(io())).context("reward `dq`");
        assert_eq!(super::one_line(&e), "reward `dq`: plugin x.wasm: I/O error on /p/x.wasm: No such file or directory");
        // Causes that the message does not quote are kept.
        let e = anyhow::Error::new(io()).context("loading model").context("eval");
        assert_eq!(super::one_line(&e), "eval: loading model: No such file or directory");
    }
}
