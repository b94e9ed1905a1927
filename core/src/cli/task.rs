//! `medrl task list|show|validate`: task bundles (`tasks/<name>/task.yaml`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::plugin::{HostConfig, PluginHost};
use crate::task::{self, Task};

#[derive(clap::Subcommand)]
pub enum TaskCommand {
    /// List the task bundles ($MEDRL_TASKS_DIR, or the first tasks/ above the current folder).
    List,
    /// Show a task: datasets per split, prompts, rewards with weights, configs and grants, metrics.
    Show {
        /// Task name or folder.
        name: PathBuf,
    },
    /// Check that a task works: data of every split loads, the template renders, each reward
    /// plugin loads, gets exactly the capabilities it requests, accepts its config and scores
    /// one example per split. Non-zero exit on failure.
    Validate {
        /// Task names or folders.
        #[arg(required = true)]
        names: Vec<PathBuf>,
        /// Directory of the compiled-plugin cache (default: $MEDRL_CACHE_DIR or ~/.cache/medrl/plugins).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::List => {
            let dir = task::tasks_dir()?;
            for name in task::list()? {
                match Task::load(dir.join(&name)) {
                    Ok(t) => println!("{name:<28} {}", t.config.description.lines().next().unwrap_or("")),
                    Err(e) => println!("{name:<28} (invalid: {e})"),
                }
            }
            Ok(())
        }
        TaskCommand::Show { name } => show(&Task::load(&name)?),
        TaskCommand::Validate { names, cache_dir, json } => {
            let mut cfg = HostConfig::default();
            if cache_dir.is_some() {
                cfg.cache_dir = cache_dir;
            }
            let host = PluginHost::new(cfg).context("starting the plugin host")?;
            let mut failed = Vec::new();
            for name in names {
                let t = Task::load(&name)?;
                let rep = task::validate(&t, &host);
                if json {
                    println!("{}", serde_json::to_string(&rep)?);
                } else {
                    println!("{rep}");
                }
                if !rep.ok() {
                    failed.push(t.name().to_string());
                }
            }
            if !failed.is_empty() {
                bail!("invalid task(s): {}", failed.join(", "));
            }
            Ok(())
        }
    }
}

fn show(t: &Task) -> Result<()> {
    let c = &t.config;
    println!("task {} ({})", c.name, t.file.display());
    if !c.description.is_empty() {
        println!("  {}", c.description.trim().replace('\n', "\n  "));
    }
    println!("data:");
    for split in t.splits() {
        let spec = t.dataset(split)?;
        println!("  {split:<10} {} ({:?})", spec.path.display(), spec.formatting);
    }
    if let Some(s) = &c.system_prompt {
        println!("system prompt: {s}");
    }
    if let Some(p) = &c.prompt_template {
        println!("prompt template: {p}");
    }
    println!("rewards:");
    for r in t.reward_specs() {
        let mut grants = Vec::new();
        if let Some(j) = &r.grants.judge {
            grants.push(format!("judge({})", j.model.as_deref().unwrap_or("engine default")));
        }
        if let Some(s) = &r.grants.search {
            grants.push(format!("search({})", s.describe()));
        }
        println!("  {} x{} ({})", r.name, r.weight, r.path.display());
        println!("    config: {}", r.config);
        if !grants.is_empty() {
            println!("    grants: {}", grants.join(", "));
        }
    }
    let m = t.metrics();
    println!("metrics:");
    if let Some(a) = &m.accuracy {
        println!("  accuracy: {}.{} >= {}", a.plugin.as_deref().unwrap_or(c.rewards.first().map(|r| r.plugin.as_str()).unwrap_or("?")), a.component, a.threshold);
    }
    if !m.text.is_empty() {
        println!("  text: {:?}", m.text);
    }
    if let Some(s) = &m.survival {
        println!("  survival: time {}, event {}, horizons {:?} months, prediction <{}>", s.time_field, s.event_field, s.horizons, s.response_tag);
    }
    Ok(())
}
