//! The comparison report (`medrl eval compare RUN_DIR... --out report.html`): one self-contained
//! HTML file (inline CSS, inline SVG, no script, no external resource) and `report.json` beside
//! it with the same numbers.
//!
//! Sections: the runs compared; a metrics table (one column per run, the best value of each row
//! in bold where higher or lower is clearly better); reward histograms on shared bins; accuracy
//! (or best-of-n reward) against the number of samples n; HCC stage and risk-group tables; and,
//! for the first prompts common to all runs, the prompt, the reference and each model's response.
//! Every piece of text from a run is HTML-escaped.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::run::{read_predictions, EvalError, EvalMetrics, Prediction, RunConfig, METRICS, PREDICTIONS, RUN_CONFIG};
use medrl_base::plot::{line_chart_svg, Series};

/// One run folder, loaded.
pub struct RunData {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub metrics: EvalMetrics,
    pub predictions: Vec<Prediction>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| EvalError::File { path: path.into(), msg: e.to_string() })
}

impl RunData {
    pub fn load(dir: &Path) -> Result<Self, EvalError> {
        if !dir.join(METRICS).exists() {
            return Err(EvalError::File { path: dir.join(METRICS), msg: "missing: the evaluation did not finish (rerun `medrl eval` with the same arguments to resume)".into() });
        }
        Ok(Self {
            dir: dir.into(),
            config: read_json(&dir.join(RUN_CONFIG))?,
            metrics: read_json(&dir.join(METRICS))?,
            predictions: read_predictions(&dir.join(PREDICTIONS))?,
        })
    }
}

/// Counts of values in equal-width bins over `[lo, hi]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<usize>,
}

/// Histogram of `values` on `bins` equal bins between `lo` and `hi` (the last bin closed).
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Histogram {
    let hi = if hi - lo < 1e-12 { lo + 1.0 } else { hi };
    let w = (hi - lo) / bins as f64;
    let edges = (0..=bins).map(|i| lo + w * i as f64).collect();
    let mut counts = vec![0; bins];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let i = (((v - lo) / w).floor() as isize).clamp(0, bins as isize - 1) as usize;
        counts[i] += 1;
    }
    Histogram { edges, counts }
}

/// `report.json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub runs: Vec<ReportRun>,
}

#[derive(Debug, Serialize)]
pub struct ReportRun {
    pub dir: String,
    pub label: String,
    pub config: RunConfig,
    pub metrics: EvalMetrics,
    /// Total reward of all responses, on bins shared by every run.
    pub reward_histogram: Option<Histogram>,
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let t: String = s.chars().take(max).collect();
        format!("{t} […{} more characters]", s.chars().count() - max)
    }
}

const BINS: usize = 20;

/// Build the report data (histograms on shared bins).
pub fn build(runs: &[RunData]) -> Report {
    let all: Vec<f64> = runs.iter().flat_map(|r| r.predictions.iter().filter_map(|p| p.reward.total)).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Report {
        runs: runs
            .iter()
            .map(|r| {
                let vals: Vec<f64> = r.predictions.iter().filter_map(|p| p.reward.total).collect();
                ReportRun {
                    dir: r.dir.display().to_string(),
                    label: r.config.label.clone(),
                    config: r.config.clone(),
                    metrics: r.metrics.clone(),
                    reward_histogram: (!vals.is_empty()).then(|| histogram(&vals, lo, hi, BINS)),
                }
            })
            .collect(),
    }
}

/// Which way a metric row is better, for bolding.
#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct Row {
    name: String,
    help: &'static str,
    better: Better,
    values: Vec<Option<f64>>,
    /// Rendered cells (same length as values).
    cells: Vec<String>,
}

fn f3(v: f64) -> String {
    format!("{v:.3}")
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn metric_rows(runs: &[RunData]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |name: String, help: &'static str, better: Better, get: &dyn Fn(&EvalMetrics) -> Option<(f64, String)>| {
        let vals: Vec<Option<(f64, String)>> = runs.iter().map(|r| get(&r.metrics)).collect();
        if vals.iter().all(Option::is_none) {
            return;
        }
        rows.push(Row {
            name,
            help,
            better,
            values: vals.iter().map(|v| v.as_ref().map(|x| x.0)).collect(),
            cells: vals.into_iter().map(|v| v.map(|x| x.1).unwrap_or_else(|| "—".into())).collect(),
        });
    };
    push("prompts × samples".into(), "prompts evaluated × responses per prompt", Better::Neither, &|m| Some((m.n_prompts as f64, format!("{} × {}", m.n_prompts, m.n_samples))));
    push("mean reward".into(), "weighted total of the task's rewards, first response of each prompt (± standard deviation)", Better::Higher, &|m| {
        m.reward.as_ref().map(|s| (s.mean, format!("{} ± {}", f3(s.mean), f3(s.std))))
    });
    push("accuracy".into(), "share of prompts whose first response is correct under the task's rule", Better::Higher, &|m| m.accuracy.map(|a| (a, pct(a))));
    push("no parsable answer".into(), "share of first responses in which no answer could be found (extract failure)", Better::Lower, &|m| {
        Some((m.extract_failure_rate, pct(m.extract_failure_rate)))
    });
    let mut plugins: Vec<String> = runs.iter().flat_map(|r| r.metrics.reward_by_plugin.keys().cloned()).collect();
    plugins.sort();
    plugins.dedup();
    if plugins.len() > 1 {
        for p in &plugins {
            push(format!("reward: {p}"), "this reward plugin's own score (mean)", Better::Higher, &|m| m.reward_by_plugin.get(p).map(|s| (s.mean, f3(s.mean))));
        }
    }
    let mut comps: Vec<String> = runs.iter().flat_map(|r| r.metrics.components.keys().cloned()).collect();
    comps.sort();
    comps.dedup();
    for c in &comps {
        push(format!("component: {c}"), "a reward component (mean over first responses)", Better::Neither, &|m| m.components.get(c).map(|s| (s.mean, f3(s.mean))));
    }
    push("BLEU".into(), "corpus BLEU (sacreBLEU-compatible, 0–100) of the answer against the reference", Better::Higher, &|m| {
        m.text.as_ref().and_then(|t| t.bleu).map(|b| (b, format!("{b:.2}")))
    });
    for (name, sel) in [("ROUGE-1 F1", 1usize), ("ROUGE-2 F1", 2), ("ROUGE-L F1", 3)] {
        push(name.into(), "word (or, for Chinese, character) overlap with the reference; F1 of precision and recall", Better::Higher, &|m| {
            let t = m.text.as_ref()?;
            let s = match sel {
                1 => t.rouge1.as_ref(),
                2 => t.rouge2.as_ref(),
                _ => t.rouge_l.as_ref(),
            }?;
            Some((s.f1, f3(s.f1)))
        });
    }
    push("C-index [95% CI]".into(), "how well predicted survival orders patients (0.5 = chance, 1 = perfect); bootstrap interval", Better::Higher, &|m| {
        let c = m.survival.as_ref()?.c_index.as_ref()?;
        Some((c.estimate, format!("{} [{}, {}]", f3(c.estimate), f3(c.lower), f3(c.upper))))
    });
    let mut horizons: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.metrics.survival.as_ref())
        .flat_map(|s| s.time_auc.iter().map(|a| a.months).chain(s.brier.iter().map(|b| b.months)))
        .collect();
    horizons.sort_by(f64::total_cmp);
    horizons.dedup();
    for &h in &horizons {
        push(format!("AUC at {h} months"), "separation of patients who died by this time from those alive after it (0.5 = chance)", Better::Higher, &|m| {
            let a = m.survival.as_ref()?.time_auc.iter().find(|a| a.months == h)?;
            Some((a.auc, f3(a.auc)))
        });
    }
    for &h in &horizons {
        push(format!("Brier, survival at {} years", h / 12.0), "squared error of the predicted survival probability (0 = perfect, 0.25 = always 50%)", Better::Lower, &|m| {
            let b = m.survival.as_ref()?.brier.iter().find(|b| b.months == h)?;
            Some((b.score, f3(b.score)))
        });
    }
    push("survival not predicted".into(), "share of patients for whom the response gave no parsable survival estimate", Better::Lower, &|m| {
        let s = m.survival.as_ref()?;
        Some((s.extract_failure_rate, pct(s.extract_failure_rate)))
    });
    push("stage agrees with truth".into(), "share of patients whose BCLC stage from the model's findings equals the stage from the record", Better::Higher, &|m| {
        let a = m.survival.as_ref()?.stage_agreement?;
        Some((a, pct(a)))
    });
    push("reward failures".into(), "responses a reward plugin failed on (substituted or dropped by the failure policy)", Better::Lower, &|m| {
        let n: usize = m.reward_failures.values().map(|f| f.substituted + f.dropped).sum();
        Some((n as f64, n.to_string()))
    });
    push("mean response tokens".into(), "average length of the generated responses", Better::Neither, &|m| Some((m.mean_response_tokens, format!("{:.1}", m.mean_response_tokens))));
    rows
}

fn bar_chart_svg(title: &str, h: &Histogram, color: &str) -> String {
    let (w, ht) = (420.0, 220.0);
    let (left, right, top, bottom) = (40.0, 10.0, 30.0, 40.0);
    let max = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = h.counts.len() as f64;
    let bw = (w - left - right) / n;
    let mut s = String::new();
    let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{ht}" viewBox="0 0 {w} {ht}" font-family="sans-serif" font-size="11" role="img" aria-label="{}">"#, esc(title));
    let _ = write!(s, r#"<rect width="{w}" height="{ht}" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="13">{}</text>"#, w / 2.0, esc(title));
    for (i, &c) in h.counts.iter().enumerate() {
        let bh = c as f64 / max * (ht - top - bottom);
        let x = left + bw * i as f64;
        let y = ht - bottom - bh;
        let _ = write!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"><title>{:.3} to {:.3}: {c}</title></rect>"#, (bw - 1.0).max(0.5), h.edges[i], h.edges[i + 1]);
    }
    let _ = write!(s, r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#444"/>"##, ht - bottom, w - right, ht - bottom);
    let lo = h.edges.first().copied().unwrap_or(0.0);
    let hi = h.edges.last().copied().unwrap_or(1.0);
    let _ = write!(s, r#"<text x="{left}" y="{}" text-anchor="start">{lo:.2}</text>"#, ht - bottom + 14.0);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{hi:.2}</text>"#, w - right, ht - bottom + 14.0);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">total reward</text>"#, (left + w - right) / 2.0, ht - 8.0);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 4.0, top + 4.0, max as usize);
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, left - 4.0, ht - bottom);
    s.push_str("</svg>");
    s
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em}h2{margin-top:1.6em;border-bottom:2px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:bold;background:#eaf6ea}.help{color:#666;font-size:0.85em}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;border:1px solid #e3e3e3;padding:8px;margin:4px 0;font-size:0.9em;max-height:24em;overflow:auto}
details{margin:6px 0 14px}summary{cursor:pointer;font-weight:600}
.tag{display:inline-block;padding:1px 7px;border-radius:9px;background:#eef;font-size:0.85em;margin-right:6px}
.note{color:#8a5300}
"#;

/// Render the HTML report.
pub fn render_html(runs: &[RunData], report: &Report) -> String {
    let mut h = String::new();
    let _ = write!(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>medrl evaluation report</title><style>{CSS}</style></head><body>\n");
    let tasks: Vec<String> = {
        let mut t: Vec<String> = runs.iter().map(|r| format!("{} ({})", r.config.task, r.config.split)).collect();
        t.dedup();
        t
    };
    let _ = writeln!(h, "<h1>Evaluation report</h1><p>Task: <b>{}</b>. {} model run(s) compared. Every number is computed by medrl from the runs' saved responses; the last column of the metrics table says what each one means.</p>", esc(&tasks.join(", ")), runs.len());

    // Runs.
    h.push_str("<h2>Runs</h2><table><tr><th>#</th><th>model</th><th>model folder</th><th>adapter</th><th>task / split</th><th>samples per prompt</th><th>temperature</th><th>max new tokens</th><th>seed</th></tr>\n");
    for (i, r) in runs.iter().enumerate() {
        let c = &r.config;
        let _ = writeln!(
            h,
            "<tr><td><span class=\"tag\" style=\"background:{}22\">{}</span></td><td><b>{}</b></td><td>{}</td><td>{}</td><td>{} / {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            COLORS[i % COLORS.len()],
            i + 1,
            esc(&c.label),
            esc(&c.model),
            esc(c.adapter.as_deref().unwrap_or("—")),
            esc(&c.task),
            esc(&c.split),
            c.n,
            c.temperature,
            c.max_new_tokens,
            c.seed
        );
    }
    h.push_str("</table>\n");

    // Metrics.
    h.push_str("<h2>Metrics</h2><table><tr><th>metric</th>");
    for r in runs {
        let _ = write!(h, "<th>{}</th>", esc(&r.config.label));
    }
    h.push_str("<th>what it means</th></tr>\n");
    for row in metric_rows(runs) {
        let best = match row.better {
            Better::Neither => None,
            b if runs.len() > 1 => {
                let vals: Vec<f64> = row.values.iter().flatten().copied().collect();
                if vals.len() < 2 {
                    None
                } else if b == Better::Higher {
                    Some(vals.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                } else {
                    Some(vals.iter().copied().fold(f64::INFINITY, f64::min))
                }
            }
            _ => None,
        };
        let _ = write!(h, "<tr><td>{}</td>", esc(&row.name));
        for (v, cell) in row.values.iter().zip(&row.cells) {
            let is_best = matches!((best, v), (Some(b), Some(v)) if (b - v).abs() < 1e-12);
            let _ = write!(h, "<td class=\"num{}\">{}</td>", if is_best { " best" } else { "" }, esc(cell));
        }
        let _ = writeln!(h, "<td class=\"help\">{}</td></tr>", esc(row.help));
    }
    h.push_str("</table><p class=\"help\">Bold: the best value of a row where higher (or lower) is clearly better. With several samples per prompt, the table describes each prompt's first response; the next sections use all of them.</p>\n");
    for r in runs {
        for (plugin, f) in &r.metrics.reward_failures {
            if f.substituted + f.dropped + f.not_applicable > 0 {
                let _ = writeln!(
                    h,
                    "<p class=\"note\">{}: reward <b>{}</b> — {} substituted, {} dropped, {} not applicable {}</p>",
                    esc(&r.config.label),
                    esc(plugin),
                    f.substituted,
                    f.dropped,
                    f.not_applicable,
                    esc(&format!("{:?}", f.by_kind))
                );
            }
        }
        if let Some(s) = &r.metrics.survival {
            for n in &s.notes {
                let _ = writeln!(h, "<p class=\"note\">{}: {}</p>", esc(&r.config.label), esc(n));
            }
        }
    }

    // Reward distributions.
    if report.runs.iter().any(|r| r.reward_histogram.is_some()) {
        h.push_str("<h2>Reward distributions</h2><p class=\"help\">Total reward of every response (all samples), on the same bins for every model.</p><div class=\"charts\">\n");
        for (i, r) in report.runs.iter().enumerate() {
            if let Some(hist) = &r.reward_histogram {
                let _ = writeln!(h, "<figure>{}</figure>", bar_chart_svg(&r.label, hist, COLORS[i % COLORS.len()]));
            }
        }
        h.push_str("</div>\n");
    }

    // Test-time scaling.
    let has_acc = runs.iter().any(|r| r.metrics.scaling.iter().any(|p| p.majority_accuracy.is_some()));
    if runs.iter().any(|r| !r.metrics.scaling.is_empty()) {
        h.push_str("<h2>Test-time scaling</h2>\n");
        let mut series_store: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        // Short legend names (#run, as in the Runs table): the chart's legend box is narrow.
        for (i, r) in runs.iter().enumerate() {
            let pts = |f: &dyn Fn(&super::run::ScalingPoint) -> Option<f64>| r.metrics.scaling.iter().filter_map(|p| f(p).map(|v| (p.n as f64, v))).collect::<Vec<_>>();
            if has_acc {
                series_store.push((format!("#{} best-of-n", i + 1), pts(&|p| p.best_of_n_accuracy)));
                series_store.push((format!("#{} majority", i + 1), pts(&|p| p.majority_accuracy)));
            } else {
                series_store.push((format!("#{} best-of-n", i + 1), pts(&|p| p.best_of_n_reward)));
            }
        }
        let series: Vec<Series> = series_store.iter().map(|(n, p)| Series { name: n, points: p.clone() }).collect();
        let (title, y) = if has_acc { ("Accuracy vs number of samples", "accuracy") } else { ("Best-of-n reward vs number of samples", "mean reward of selected response") };
        let _ = writeln!(h, "<figure>{}</figure>", line_chart_svg(title, "samples per prompt (n)", y, &series));
        h.push_str("<table><tr><th>model</th><th>n</th>");
        if has_acc {
            h.push_str("<th>best-of-n accuracy</th><th>majority-vote accuracy</th><th>any correct (oracle)</th>");
        }
        h.push_str("<th>best-of-n reward</th></tr>\n");
        let o = |v: Option<f64>| v.map(pct).unwrap_or_else(|| "—".into());
        for (i, r) in runs.iter().enumerate() {
            for p in &r.metrics.scaling {
                let _ = write!(h, "<tr><td>#{} {}</td><td class=\"num\">{}</td>", i + 1, esc(&r.config.label), p.n);
                if has_acc {
                    let _ = write!(h, "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>", o(p.best_of_n_accuracy), o(p.majority_accuracy), o(p.oracle_accuracy));
                }
                let _ = writeln!(h, "<td class=\"num\">{}</td></tr>", p.best_of_n_reward.map(f3).unwrap_or_else(|| "—".into()));
            }
        }
        h.push_str("</table><p class=\"help\">Best-of-n: of a prompt's first n responses, the one with the highest reward is kept. When the reward itself compares with the reference answer, this is an upper bound, not something a deployed model could do. Majority vote: the most frequent parsed answer of the n responses. Oracle: at least one of the n responses is correct.</p>\n");
    }

    // HCC stages.
    if runs.iter().any(|r| r.metrics.survival.is_some()) {
        h.push_str("<h2>Prognosis groups and stages</h2>\n");
        for (title, help, get, order) in [
            (
                "Predicted prognosis group",
                "from the survival months the model predicted (first response); “no prediction”: no parsable survival block",
                (|s: &super::run::SurvivalMetrics| s.risk_groups.clone()) as fn(&super::run::SurvivalMetrics) -> std::collections::BTreeMap<String, usize>,
                super::answer::RISK_GROUPS.to_vec(),
            ),
            ("BCLC stage from the model's findings", "computed from the model's <ps>, <child_pugh>, <metastasis>, <cancer_thrombus>, <num_tumor>, <tumor_size> tags; “unknown”: a tag was missing", |s| s.predicted_stage.clone(), super::answer::STAGES.to_vec()),
            ("BCLC stage from the record", "the same rules applied to the ground truth", |s| s.true_stage.clone(), super::answer::STAGES.to_vec()),
        ] {
            let _ = write!(h, "<h3>{}</h3><p class=\"help\">{}</p><table><tr><th>model</th>", esc(title), esc(help));
            for o in &order {
                let _ = write!(h, "<th>{}</th>", esc(o));
            }
            h.push_str("</tr>\n");
            for r in runs {
                let Some(s) = &r.metrics.survival else { continue };
                let map = get(s);
                let total: usize = map.values().sum();
                let _ = write!(h, "<tr><td>{}</td>", esc(&r.config.label));
                for o in &order {
                    let c = map.get(*o).copied().unwrap_or(0);
                    let share = if total > 0 { c as f64 / total as f64 } else { 0.0 };
                    let _ = write!(h, "<td class=\"num\">{c} ({})</td>", pct(share));
                }
                h.push_str("</tr>\n");
            }
            h.push_str("</table>\n");
        }
    }

    // Examples.
    h.push_str("<h2>Example responses</h2><p class=\"help\">The first prompts evaluated by every model, with each model's first response.</p>\n");
    let common: Vec<usize> = {
        let mut idx: Vec<usize> = runs.first().map(|r| r.predictions.iter().filter(|p| p.sample == 0).map(|p| p.index).collect()).unwrap_or_default();
        idx.sort();
        idx.dedup();
        idx.retain(|i| runs.iter().all(|r| r.predictions.iter().any(|p| p.index == *i && p.sample == 0)));
        idx.truncate(3);
        idx
    };
    for (n, i) in common.iter().enumerate() {
        let first = runs[0].predictions.iter().find(|p| p.index == *i && p.sample == 0).unwrap();
        let _ = write!(h, "<details{}><summary>Example {} <span class=\"help\">({})</span></summary>", if n == 0 { " open" } else { "" }, n + 1, esc(&first.id));
        let _ = write!(h, "<b>Prompt</b><pre>{}</pre>", esc(&truncate(&first.prompt, 3000)));
        if let Some(r) = &first.reference {
            let _ = write!(h, "<b>Reference answer</b><pre>{}</pre>", esc(&truncate(r, 3000)));
        }
        for (ri, r) in runs.iter().enumerate() {
            let p = r.predictions.iter().find(|p| p.index == *i && p.sample == 0).unwrap();
            let reward = p.reward.total.map(f3).unwrap_or_else(|| "dropped".into());
            let correct = match p.correct {
                Some(true) => " · correct",
                Some(false) => " · not correct",
                None => "",
            };
            // Free-text tasks: the "answer" is the response itself, not worth repeating.
            let answer = if r.config.metrics.answer == super::AnswerParser::Text {
                String::new()
            } else {
                format!(" · answer: {}", esc(p.answer.as_deref().map(|a| truncate(a, 200)).as_deref().unwrap_or("(none found)")))
            };
            let _ = write!(
                h,
                "<p><span class=\"tag\" style=\"background:{}22\">{}</span><b>{}</b> · reward {}{}{}</p><pre>{}</pre>",
                COLORS[ri % COLORS.len()],
                ri + 1,
                esc(&r.config.label),
                esc(&reward),
                answer,
                correct,
                esc(&truncate(&p.response, 3000))
            );
        }
        h.push_str("</details>\n");
    }
    h.push_str("<p class=\"help\">Generated by <code>medrl eval compare</code>. Metric definitions: docs/eval.md and docs/metrics.md in the medrl repository.</p>\n</body></html>\n");
    h
}

/// Load runs, write `out` (HTML) and the same name with `.json` beside it (`report.html` -> `report.json`); returns the JSON path.
pub fn compare(run_dirs: &[PathBuf], out: &Path) -> Result<PathBuf, EvalError> {
    if run_dirs.is_empty() {
        return Err(EvalError::Invalid("no run folders to compare".into()));
    }
    let runs = run_dirs.iter().map(|d| RunData::load(d)).collect::<Result<Vec<_>, _>>()?;
    let report = build(&runs);
    let html = render_html(&runs, &report);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| EvalError::Io { path: parent.into(), source })?;
    }
    medrl_base::fsutil::write_atomic(out, html.as_bytes()).map_err(|source| EvalError::Io { path: out.into(), source })?;
    let json_path = out.with_extension("json");
    let v = serde_json::to_value(&report).map_err(|e| EvalError::Invalid(e.to_string()))?;
    medrl_base::fsutil::write_json_atomic(&json_path, &v).map_err(|source| EvalError::Io { path: json_path.clone(), source })?;
    Ok(json_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_and_escaping() {
        let h = histogram(&[0.0, 0.5, 1.0, 1.0, f64::NAN], 0.0, 1.0, 4);
        assert_eq!(h.counts, vec![1, 0, 1, 2]);
        assert_eq!(h.edges.len(), 5);
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
        let svg = bar_chart_svg("a<b", &h, "#000");
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
    }
}
