//! Finding and loading a task: the tasks folder ([`tasks_dir`], [`list`]), [`Task::load`] and
//! the folder of bundled plugins. `task.yaml` is read by medrl-base's config loader
//! ([`medrl_base::config::load`]): the same YAML parsing, key-path errors and [`Validate`]
//! rules as the run configs.
//!
//! [`Validate`]: medrl_base::config::Validate

use std::path::{Path, PathBuf};

use crate::bundle::Task;
use crate::error::TaskError;
use crate::schema::TaskConfig;

/// Environment variable naming the tasks folder (the one holding `<name>/task.yaml`).
pub const TASKS_DIR_ENV: &str = "MEDRL_TASKS_DIR";
/// Environment variable naming the folder of bundled plugin `.wasm` files
/// (default: `<repo>/plugins/target/wasm32-wasip2/release`).
pub const PLUGIN_DIR_ENV: &str = "MEDRL_PLUGIN_DIR";

/// The tasks folder: `$MEDRL_TASKS_DIR`, else the first `tasks/` found walking up from the
/// current directory.
pub fn tasks_dir() -> Result<PathBuf, TaskError> {
    if let Some(d) = std::env::var_os(TASKS_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    let cwd = std::env::current_dir().map_err(|e| TaskError::Io { file: ".".into(), source: e })?;
    for dir in cwd.ancestors() {
        let t = dir.join("tasks");
        if t.is_dir() {
            return Ok(t);
        }
    }
    Err(TaskError::NotFound {
        name: String::new(),
        msg: format!("no `tasks/` folder in {} or its parents; set {TASKS_DIR_ENV}", cwd.display()),
    })
}

/// Names of the tasks in [`tasks_dir`] (folders holding a `task.yaml`), sorted.
pub fn list() -> Result<Vec<String>, TaskError> {
    let dir = tasks_dir()?;
    let mut names = Vec::new();
    let rd = std::fs::read_dir(&dir).map_err(|e| TaskError::Io { file: dir.clone(), source: e })?;
    for e in rd.flatten() {
        if e.path().join("task.yaml").is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn default_plugin_dir(task_dir: &Path) -> PathBuf {
    if let Some(d) = std::env::var_os(PLUGIN_DIR_ENV) {
        return PathBuf::from(d);
    }
    let rel = Path::new("plugins/target/wasm32-wasip2/release");
    for dir in task_dir.ancestors() {
        if dir.join("plugins").is_dir() {
            return dir.join(rel);
        }
    }
    // `<repo>/tasks/<name>` layout.
    task_dir.join("../..").join(rel)
}

impl Task {
    /// Load a task by name (`tasks/<name>` under [`tasks_dir`]) or from a folder (or its
    /// `task.yaml`).
    pub fn load(name_or_dir: impl AsRef<Path>) -> Result<Task, TaskError> {
        let arg = name_or_dir.as_ref();
        let dir = if arg.is_file() {
            arg.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else if arg.join("task.yaml").is_file() {
            arg.to_path_buf()
        } else if arg.components().count() == 1 {
            let d = tasks_dir()?.join(arg);
            if !d.join("task.yaml").is_file() {
                let known = list().unwrap_or_default();
                return Err(TaskError::NotFound { name: arg.display().to_string(), msg: format!("no {} (known tasks: {known:?})", d.join("task.yaml").display()) });
            }
            d
        } else {
            return Err(TaskError::NotFound { name: arg.display().to_string(), msg: "no task.yaml there".into() });
        };
        let dir = dir.canonicalize().map_err(|e| TaskError::Io { file: dir.clone(), source: e })?;
        let file = dir.join("task.yaml");
        let config = read_config(&file)?;
        let folder = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if config.name != folder {
            return Err(TaskError::Invalid { file, key: "name".into(), msg: format!("{:?} must equal the folder name {folder:?}", config.name) });
        }
        let plugin_dir = default_plugin_dir(&dir);
        Ok(Task { config, dir, file, plugin_dir })
    }
}

/// Read and check `file` with the base config loader. Its errors render as the task's always
/// have (`FILE: key `KEY`: MSG`, `FILE: YAML syntax error at line L, column C: MSG`).
pub(crate) fn read_config(file: &Path) -> Result<TaskConfig, TaskError> {
    medrl_base::config::load::<TaskConfig>(Some(file), &[]).map_err(TaskError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::AnswerKind;

    /// `text` as `t/task.yaml` in a fresh folder, read as [`Task::load`] reads it.
    fn parse(text: &str) -> Result<TaskConfig, TaskError> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t/task.yaml");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, text).unwrap();
        read_config(&f)
    }

    #[test]
    fn task_yaml_errors_name_file_and_key() {
        let e = parse("name: t\ndata: {train: x}\nrewardz: []\n").unwrap_err().to_string();
        assert!(e.contains("t/task.yaml") && e.contains("rewardz"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nrewards: [{plugin: a, weight: 1, grants: {judge: {modle: x}}}]\n").unwrap_err().to_string();
        assert!(e.contains("rewards[0].grants.judge") && e.contains("modle"), "{e}");
        let e = parse("name: t\ndata: {}\n").unwrap_err().to_string();
        assert!(e.contains("key `data`"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nprompt_template: \"{q\"\n").unwrap_err().to_string();
        assert!(e.contains("prompt_template"), "{e}");
    }

    /// The base loader's errors keep the task's wording and variants.
    #[test]
    fn task_yaml_error_wording() {
        let e = parse("name: t\ndata: {train: x}\nrewardz: []\n").unwrap_err();
        assert!(matches!(&e, TaskError::Invalid { key, .. } if key == "rewardz"), "{e:?}");
        assert!(e.to_string().ends_with("t/task.yaml: key `rewardz`: unknown field `rewardz`, expected one of `name`, `description`, `data`, `system_prompt`, `prompt_template`, `reference_as_ground_truth`, `rewards`, `tools`, `metrics`"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nprompt_template: \"{q\"\n").unwrap_err().to_string();
        assert!(e.ends_with("t/task.yaml: key `prompt_template`: unclosed `{` (write `{{` for a literal brace)"), "{e}");
        let e = parse("name: [t\n").unwrap_err();
        assert!(matches!(e, TaskError::Syntax { location: Some(_), .. }) && e.to_string().contains("t/task.yaml: YAML syntax error at line "), "{e}");
        let e = parse("name: t\ndata: {train: x}\nrewards: [{plugin: a}, {plugin: a}]\n").unwrap_err().to_string();
        assert!(e.ends_with("key `rewards[1].plugin`: \"a\" is already rewards[0]"), "{e}");
    }

    #[test]
    fn metrics_answer_defaults_to_text_and_names_bad_values() {
        let c = parse("name: t\ndata: {train: x}\n").unwrap();
        assert_eq!((c.metrics.answer, c.metrics.answer_prefix.as_str()), (AnswerKind::Text, ""));
        let c = parse("name: t\ndata: {train: x}\nmetrics: {answer: answer_tag, answer_prefix: \"<answer>\"}\n").unwrap();
        assert_eq!((c.metrics.answer, c.metrics.answer_prefix.as_str()), (AnswerKind::AnswerTag, "<answer>"));
        let e = parse("name: t\ndata: {train: x}\nmetrics: {answer: numbr}\n").unwrap_err().to_string();
        assert!(e.contains("metrics.answer") && e.contains("numbr"), "{e}");
        let e = parse("name: t\ndata: {train: x}\nmetrics: {answer_prefx: x}\n").unwrap_err().to_string();
        assert!(e.contains("answer_prefx"), "{e}");
    }
}
