//! Evaluation metrics (core/crates/eval/src/metrics) against the reference packages.
//!
//! `tests/fixtures/eval_metrics_expected.json` is written by
//! `scripts/reference/eval_metrics_reference.py` (sacrebleu, rouge-score, lifelines, numpy; never
//! medrl) from `tests/fixtures/eval_metrics_inputs.json`. Every value is compared to 1e-6, token
//! lists and integer counts exactly. `live_python_reference` reruns the script when the packages
//! are importable (from `.venv-ref/`, which scripts/setup.sh creates, or `MEDRL_PYREF_PYTHON`) and
//! fails instead of skipping when `MEDRL_REQUIRE_PYREF=1` (CI sets it).

use std::path::{Path, PathBuf};

use medrl::eval::metrics::{
    accuracy_curve, brier_score_at, concordance_index, concordance_index_ci, corpus_bleu, exact_match_accuracy,
    extract_failure_rate, majority_vote, percentile, rouge, rouge::tokenize as rouge_tokenize, sentence_bleu,
    time_dependent_auc, tokenize_13a, BleuScore, RougeReport, RougeTokenizer, Score,
};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn inputs() -> Value {
    read_json(&repo().join("tests/fixtures/eval_metrics_inputs.json"))
}

fn expected() -> Value {
    read_json(&repo().join("tests/fixtures/eval_metrics_expected.json"))
}

/// Collects every mismatch (so one run shows them all) instead of stopping at the first.
#[derive(Default)]
struct Checker {
    mismatches: Vec<String>,
    checked: usize,
}

impl Checker {
    fn num(&mut self, name: &str, got: f64, want: &Value) {
        self.checked += 1;
        match want.as_f64() {
            Some(w) if (got - w).abs() <= TOL => {}
            _ => self.mismatches.push(format!("{name}: medrl {got} vs reference {want}")),
        }
    }

    fn int(&mut self, name: &str, got: u64, want: &Value) {
        self.checked += 1;
        if want.as_u64() != Some(got) {
            self.mismatches.push(format!("{name}: medrl {got} vs reference {want}"));
        }
    }

    fn same(&mut self, name: &str, got: Value, want: &Value) {
        self.checked += 1;
        if &got != want {
            self.mismatches.push(format!("{name}: medrl {got} vs reference {want}"));
        }
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().expect("array").iter().map(|x| x.as_str().expect("string").to_string()).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn opt_strs(v: &Value) -> Vec<Option<String>> {
    v.as_array().expect("array").iter().map(|x| x.as_str().map(str::to_string)).collect()
}

fn check_bleu(c: &mut Checker, name: &str, got: &BleuScore, want: &Value) {
    c.num(&format!("{name}.score"), got.score, &want["score"]);
    c.num(&format!("{name}.bp"), got.bp, &want["bp"]);
    c.int(&format!("{name}.sys_len"), got.sys_len, &want["sys_len"]);
    c.int(&format!("{name}.ref_len"), got.ref_len, &want["ref_len"]);
    for n in 0..4 {
        c.int(&format!("{name}.counts[{n}]"), got.counts[n], &want["counts"][n]);
        c.int(&format!("{name}.totals[{n}]"), got.totals[n], &want["totals"][n]);
        c.num(&format!("{name}.precisions[{n}]"), got.precisions[n], &want["precisions"][n]);
    }
}

fn check_score(c: &mut Checker, name: &str, got: &Score, want: &Value) {
    c.num(&format!("{name}.precision"), got.precision, &want["precision"]);
    c.num(&format!("{name}.recall"), got.recall, &want["recall"]);
    c.num(&format!("{name}.fmeasure"), got.fmeasure, &want["fmeasure"]);
}

fn check_rouge(c: &mut Checker, name: &str, got: &RougeReport, want: &Value) {
    for (i, p) in got.pairs.iter().enumerate() {
        let w = &want["pairs"][i];
        check_score(c, &format!("{name}.pairs[{i}].rouge1"), &p.rouge1, &w["rouge1"]);
        check_score(c, &format!("{name}.pairs[{i}].rouge2"), &p.rouge2, &w["rouge2"]);
        check_score(c, &format!("{name}.pairs[{i}].rougeL"), &p.rouge_l, &w["rougeL"]);
    }
    c.int(&format!("{name}.pairs.len"), got.pairs.len() as u64, &Value::from(want["pairs"].as_array().map_or(0, Vec::len)));
    check_score(c, &format!("{name}.mean.rouge1"), &got.mean.rouge1, &want["mean"]["rouge1"]);
    check_score(c, &format!("{name}.mean.rouge2"), &got.mean.rouge2, &want["mean"]["rouge2"]);
    check_score(c, &format!("{name}.mean.rougeL"), &got.mean.rouge_l, &want["mean"]["rougeL"]);
}

fn check_text(c: &mut Checker, name: &str, pairs: &Value, want: &Value) {
    let pairs = pairs.as_array().expect("pairs");
    let hyps: Vec<&str> = pairs.iter().map(|p| p["hyp"].as_str().unwrap()).collect();
    let refs: Vec<&str> = pairs.iter().map(|p| p["ref"].as_str().unwrap()).collect();
    for (i, (h, r)) in hyps.iter().zip(&refs).enumerate() {
        // sacreBLEU tokenizes the rstripped segment; medrl's tokenize_13a is the tokenizer alone.
        let strip = |s: &str| s.trim_end_matches(|ch: char| ch.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&ch)).to_string();
        c.same(&format!("{name}.tokens_13a[{i}].hyp"), Value::from(tokenize_13a(&strip(h))), &want["tokens_13a"][i][0]);
        c.same(&format!("{name}.tokens_13a[{i}].ref"), Value::from(tokenize_13a(&strip(r))), &want["tokens_13a"][i][1]);
        c.same(&format!("{name}.rouge_tokens[{i}].hyp"), Value::from(rouge_tokenize(h, RougeTokenizer::RougeScore)), &want["rouge_tokens"][i][0]);
        c.same(&format!("{name}.rouge_tokens[{i}].ref"), Value::from(rouge_tokenize(r, RougeTokenizer::RougeScore)), &want["rouge_tokens"][i][1]);
        c.num(&format!("{name}.sentence_bleu[{i}]"), sentence_bleu(h, r).score, &want["sentence_bleu"][i]);
    }
    check_bleu(c, &format!("{name}.corpus_bleu"), &corpus_bleu(&hyps, &refs).unwrap(), &want["corpus_bleu"]);
    check_rouge(c, &format!("{name}.rouge"), &rouge(&hyps, &refs, RougeTokenizer::RougeScore).unwrap(), &want["rouge"]);
    check_rouge(c, &format!("{name}.rouge_cjk_chars"), &rouge(&hyps, &refs, RougeTokenizer::CjkChars).unwrap(), &want["rouge_cjk_chars"]);
}

/// Every medrl metric on `inp`, compared with `exp`; returns the checker.
fn compare_all(inp: &Value, exp: &Value) -> Checker {
    let mut c = Checker::default();
    check_text(&mut c, "english", &inp["text"]["english"], &exp["english"]);
    check_text(&mut c, "chinese", &inp["text"]["chinese"], &exp["chinese"]);
    let all: Vec<&Value> = inp["text"]["english"].as_array().unwrap().iter().chain(inp["text"]["chinese"].as_array().unwrap()).collect();
    let hyps: Vec<&str> = all.iter().map(|p| p["hyp"].as_str().unwrap()).collect();
    let refs: Vec<&str> = all.iter().map(|p| p["ref"].as_str().unwrap()).collect();
    check_bleu(&mut c, "all_corpus_bleu", &corpus_bleu(&hyps, &refs).unwrap(), &exp["all_corpus_bleu"]);

    let sv = &inp["survival"];
    let times = f64s(&sv["times"]);
    let risk = f64s(&sv["risk"]);
    let events: Vec<bool> = sv["events"].as_array().unwrap().iter().map(|e| e.as_bool().unwrap()).collect();
    let es = &exp["survival"];
    c.num("survival.c_index", concordance_index(&times, &risk, &events).unwrap(), &es["c_index"]);
    for h in f64s(&sv["horizons"]) {
        let key = format!("{h}");
        let b = brier_score_at(&times, &events, &f64s(&sv["surv_prob"][&key]), h).unwrap();
        c.num(&format!("survival.brier[{key}]"), b.score, &es["brier"][&key]["score"]);
        c.int(&format!("survival.brier[{key}].n_used"), b.n_used as u64, &es["brier"][&key]["n_used"]);
        let a = time_dependent_auc(&times, &events, &risk, h).unwrap();
        c.num(&format!("survival.auc[{key}]"), a.auc, &es["auc"][&key]["auc"]);
        c.int(&format!("survival.auc[{key}].n_cases"), a.n_cases as u64, &es["auc"][&key]["n_cases"]);
        c.int(&format!("survival.auc[{key}].n_controls"), a.n_controls as u64, &es["auc"][&key]["n_controls"]);
    }

    let acc = &inp["accuracy"];
    let golds = strs(&acc["golds"]);
    let cands: Vec<Vec<Option<String>>> = acc["candidates"].as_array().unwrap().iter().map(opt_strs).collect();
    let ea = &exp["accuracy"];
    let first: Vec<Option<String>> = cands.iter().map(|c| c[0].clone()).collect();
    c.num("accuracy.exact_match_first", exact_match_accuracy(&first, &golds).unwrap(), &ea["exact_match_first"]);
    let votes: Vec<Option<String>> = cands.iter().map(|c| majority_vote(c)).collect();
    c.same("accuracy.majority_votes", serde_json::to_value(&votes).unwrap(), &ea["majority_votes"]);
    let flat: Vec<Option<String>> = cands.iter().flatten().cloned().collect();
    c.num("accuracy.extract_failure_rate_all", extract_failure_rate(&flat).unwrap(), &ea["extract_failure_rate_all"]);
    let curve = accuracy_curve(&cands, &golds).unwrap();
    c.int("accuracy.curve.len", curve.len() as u64, &Value::from(ea["curve"].as_array().map_or(0, Vec::len)));
    for (i, p) in curve.iter().enumerate() {
        c.int(&format!("accuracy.curve[{i}].n"), p.n as u64, &ea["curve"][i]["n"]);
        c.num(&format!("accuracy.curve[{i}].best_of_n"), p.best_of_n, &ea["curve"][i]["best_of_n"]);
        c.num(&format!("accuracy.curve[{i}].majority"), p.majority, &ea["curve"][i]["majority"]);
    }

    let values = f64s(&inp["percentile"]["values"]);
    for (i, q) in f64s(&inp["percentile"]["q"]).into_iter().enumerate() {
        c.num(&format!("percentile[q={q}]"), percentile(&values, q).unwrap(), &exp["percentile"][i]);
    }
    c
}

fn assert_clean(c: &Checker, source: &str) {
    assert!(c.checked > 1000, "only {} values checked", c.checked);
    assert!(c.mismatches.is_empty(), "{} of {} values differ from {source}:\n{}", c.mismatches.len(), c.checked, c.mismatches.join("\n"));
}

#[test]
fn metrics_match_committed_reference() {
    let c = compare_all(&inputs(), &expected());
    assert_clean(&c, "tests/fixtures/eval_metrics_expected.json");
    eprintln!("{} values match the reference packages", c.checked);
}

#[test]
fn fixture_covers_the_required_cases() {
    let inp = inputs();
    let en = inp["text"]["english"].as_array().unwrap();
    let zh = inp["text"]["chinese"].as_array().unwrap();
    assert!(en.len() >= 30 && zh.len() >= 20, "{} English, {} Chinese pairs", en.len(), zh.len());
    assert!(en.iter().any(|p| p["hyp"] == "") && zh.iter().any(|p| p["hyp"] == ""), "empty hypotheses");
    assert!(en.iter().any(|p| p["hyp"] == p["ref"]) && zh.iter().any(|p| p["hyp"] == p["ref"]), "identical pairs");
    let sv = &inp["survival"];
    let times = f64s(&sv["times"]);
    let risk = f64s(&sv["risk"]);
    let distinct = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.dedup();
        s.len()
    };
    assert!(times.len() >= 60);
    assert!(distinct(&times) < times.len() && distinct(&risk) < risk.len(), "ties in times and in scores");
    assert!(sv["events"].as_array().unwrap().iter().any(|e| e == false), "censoring");
}

/// The comparison can fail: perturbing one expected value by 10x the tolerance, or one token,
/// or one input, is reported (and only what was perturbed).
#[test]
fn perturbations_are_detected() {
    let inp = inputs();
    let mut exp = expected();
    let bump = |v: &mut Value, by: f64| *v = Value::from(v.as_f64().unwrap() + by);
    bump(&mut exp["english"]["corpus_bleu"]["score"], 10.0 * TOL);
    bump(&mut exp["survival"]["c_index"], -10.0 * TOL);
    bump(&mut exp["chinese"]["rouge"]["pairs"][2]["rougeL"]["fmeasure"], 10.0 * TOL);
    bump(&mut exp["survival"]["auc"]["36"]["auc"], 10.0 * TOL);
    exp["english"]["tokens_13a"][3][0] = Value::from("WBC 12 , 500 / uL , platelets 250,000 .");
    let c = compare_all(&inp, &exp);
    let mut names: Vec<&str> = c.mismatches.iter().map(|m| m.split(':').next().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "chinese.rouge.pairs[2].rougeL.fmeasure",
            "english.corpus_bleu.score",
            "english.tokens_13a[3].hyp",
            "survival.auc[36]",
            "survival.c_index",
        ],
        "{:#?}",
        c.mismatches
    );
    // A changed input (one hypothesis) moves BLEU, sentence BLEU and ROUGE away from the reference.
    let mut inp2 = inputs();
    inp2["text"]["english"][0]["hyp"] = Value::from("The patient was discharged on day 6.");
    let c2 = compare_all(&inp2, &expected());
    assert!(c2.mismatches.iter().any(|m| m.starts_with("english.corpus_bleu.score")), "{:#?}", c2.mismatches);
    assert!(c2.mismatches.iter().any(|m| m.starts_with("english.rouge.pairs[0].rouge1.fmeasure")));
}

#[test]
fn c_index_sign_and_bootstrap() {
    let inp = inputs();
    let sv = &inp["survival"];
    let times = f64s(&sv["times"]);
    let risk = f64s(&sv["risk"]);
    let events: Vec<bool> = sv["events"].as_array().unwrap().iter().map(|e| e.as_bool().unwrap()).collect();
    let c = concordance_index(&times, &risk, &events).unwrap();
    let neg: Vec<f64> = risk.iter().map(|r| -r).collect();
    let flipped = concordance_index(&times, &neg, &events).unwrap();
    // Same admissible pairs, concordant and discordant swap, ties stay: C(-r) = 1 - C(r).
    assert!((c + flipped - 1.0).abs() < 1e-12, "{c} {flipped}");
    let b = &sv["bootstrap"];
    let (n_boot, level, seed) = (b["n_boot"].as_u64().unwrap() as usize, b["level"].as_f64().unwrap(), b["seed"].as_u64().unwrap());
    let ci = concordance_index_ci(&times, &risk, &events, n_boot, level, seed).unwrap();
    assert_eq!(ci, concordance_index_ci(&times, &risk, &events, n_boot, level, seed).unwrap(), "seeded: reproducible");
    assert_eq!(ci.estimate, c);
    assert!(ci.lower < c && c < ci.upper && ci.upper - ci.lower < 0.3, "{ci:?}");
    assert_eq!(ci.n_boot + ci.n_skipped, n_boot);
}

fn python() -> String {
    if let Ok(p) = std::env::var("MEDRL_PYREF_PYTHON") {
        return p;
    }
    let venv = repo().join(".venv-ref/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

/// Runs the reference script now and checks medrl against its fresh output, and that the
/// committed fixture is what the pinned packages produce.
#[test]
fn live_python_reference() {
    let py = python();
    let probe = std::process::Command::new(&py).args(["-c", "import sacrebleu, rouge_score, lifelines, numpy"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        let why = match &probe {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        let msg = format!("live_python_reference: {py} cannot import sacrebleu/rouge-score/lifelines ({why}); run scripts/setup.sh or set MEDRL_PYREF_PYTHON");
        if std::env::var("MEDRL_REQUIRE_PYREF").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("expected.json");
    let script = repo().join("scripts/reference/eval_metrics_reference.py");
    let inp_path = repo().join("tests/fixtures/eval_metrics_inputs.json");
    let run = std::process::Command::new(&py).arg(&script).arg(&inp_path).arg(&out).output().unwrap();
    assert!(run.status.success(), "{} failed:\n{}", script.display(), String::from_utf8_lossy(&run.stderr));
    let live = read_json(&out);
    assert_clean(&compare_all(&inputs(), &live), "a live run of the reference script");
    let committed = expected();
    assert_eq!(live["versions"], committed["versions"], "installed reference packages differ from the ones that wrote the fixture");
    assert!(live == committed, "tests/fixtures/eval_metrics_expected.json is stale: rerun {}", script.display());
}
