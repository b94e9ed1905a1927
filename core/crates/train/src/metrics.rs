//! Per-step metrics as JSON lines, and the plots drawn from them.
//!
//! The metrics file belongs to the run: a resume truncates it to the lines that existed when
//! the checkpoint was written (rewritten atomically), so the file always describes one
//! uninterrupted run. Each line is flushed as it is written. Every line's numeric fields are
//! also written to a TensorBoard event file in `tensorboard/` beside it (rewritten from the kept
//! lines on a resume, so it too describes one run).

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::RunError as SftError;
use medrl_base::plot::{line_chart_svg, Series};

pub struct MetricsLog {
    path: PathBuf,
    lines: usize,
    tensorboard: Option<medrl_base::tensorboard::EventWriter>,
}

/// The TensorBoard folder of a run whose metrics are at `metrics`.
pub fn tensorboard_dir(metrics: &Path) -> PathBuf {
    metrics.parent().unwrap_or(Path::new(".")).join("tensorboard")
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SftError + '_ {
    move |source| SftError::Io { path: path.into(), source }
}

impl MetricsLog {
    pub fn open(path: &Path) -> Result<Self, SftError> {
        let lines = match std::fs::read_to_string(path) {
            Ok(t) => t.lines().count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(path)(e)),
        };
        let mut log = Self { path: path.into(), lines, tensorboard: None };
        log.restart_tensorboard()?;
        Ok(log)
    }

    /// A fresh event file holding the lines the metrics file has now.
    fn restart_tensorboard(&mut self) -> Result<(), SftError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let rows: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let dir = tensorboard_dir(&self.path);
        self.tensorboard = Some(medrl_base::tensorboard::EventWriter::create(&dir, &rows).map_err(io(&dir))?);
        Ok(())
    }

    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Keep only the first `n` lines.
    pub fn truncate(&mut self, n: usize) -> Result<(), SftError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let kept: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
        medrl_base::fsutil::write_atomic(&self.path, kept.as_bytes()).map_err(io(&self.path))?;
        self.lines = kept.lines().count();
        self.restart_tensorboard()
    }

    pub fn write(&mut self, v: &Value) -> Result<(), SftError> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io(&self.path))?;
        writeln!(f, "{}", serde_json::to_string(v).expect("JSON serializes")).map_err(io(&self.path))?;
        f.flush().map_err(io(&self.path))?;
        self.lines += 1;
        if let Some(tb) = &mut self.tensorboard {
            let p = tb.path().to_path_buf();
            tb.write(v).map_err(io(&p))?;
        }
        Ok(())
    }
}

/// Read `metrics.jsonl` of a run folder.
pub fn read_metrics(run_dir: &Path) -> Result<Vec<Value>, SftError> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The losses a run reports at its end, read from its metrics rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossSummary {
    /// Train loss of the first and last step that applied an update.
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// Eval loss before training (the step-0 row) and at the last evaluation after it.
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
}

pub fn loss_summary(rows: &[Value]) -> LossSummary {
    let losses: Vec<f64> = rows.iter().filter_map(|r| r.get("loss")?.as_f64()).collect();
    let (eval_loss_before, eval_loss_after) = before_and_after(rows, |r| r.get("eval_loss")?.as_f64());
    LossSummary { first_loss: losses.first().copied(), last_loss: losses.last().copied(), eval_loss_before, eval_loss_after }
}

/// What `read` finds in the step-0 row (before training) and in the last row after it that has
/// it (the last evaluation).
pub fn before_and_after<T>(rows: &[Value], read: impl Fn(&Value) -> Option<T>) -> (Option<T>, Option<T>) {
    let step = |r: &Value| r.get("step").and_then(Value::as_u64);
    let before = rows.iter().find(|r| step(r) == Some(0)).and_then(&read);
    let after = rows.iter().rev().filter(|r| step(r).is_some_and(|s| s > 0)).find_map(&read);
    (before, after)
}

fn series<'a>(rows: &[Value], name: &'a str, key: &str) -> Series<'a> {
    Series {
        name,
        points: rows.iter().filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?))).collect(),
    }
}

/// Draw `loss.svg` (train and eval loss), `lr.svg` and `grad_norm.svg` into `run_dir/plots/`.
pub fn write_plots(run_dir: &Path) -> Result<(), SftError> {
    let rows = read_metrics(run_dir)?;
    let dir = run_dir.join("plots");
    let charts = [
        ("loss.svg", line_chart_svg("Loss", "step", "mean NLL per trained token", &[series(&rows, "train", "loss"), series(&rows, "eval", "eval_loss")])),
        ("lr.svg", line_chart_svg("Learning rate", "step", "lr", &[series(&rows, "lr", "lr")])),
        ("grad_norm.svg", line_chart_svg("Gradient norm (before clipping)", "step", "global L2 norm", &[series(&rows, "grad_norm", "grad_norm")])),
    ];
    for (file, svg) in charts {
        let p = dir.join(file);
        medrl_base::fsutil::write_atomic(&p, svg.as_bytes()).map_err(io(&p))?;
    }
    Ok(())
}
