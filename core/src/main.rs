use clap::{Parser, Subcommand};
use medrl::cli;

/// medrl: post-training clinical language models with sandboxed reward plugins.
#[derive(Parser)]
#[command(name = "medrl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, build and inspect WebAssembly plugins.
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCommand),
    /// Score samples with a reward plugin, or benchmark one.
    #[command(subcommand)]
    Reward(cli::reward::RewardCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Plugin(c) => cli::plugin::run(c),
        Command::Reward(c) => cli::reward::run(c),
    }
}
