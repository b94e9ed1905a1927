//! Verifiable sample-size problems with exact answers from the standard closed-form formulas
//! (two-sided test, 1:1 allocation, normal approximation), so the TrialPanorama sample-size task
//! can be trained without private trial data.
//!
//! With `z_a = Φ⁻¹(1 − α/2)` and `z_b = Φ⁻¹(power)` ([`norm_ppf`], Wichura's AS241):
//! - **two means** (common SD σ, difference δ):
//!   `n = ⌈2 (z_a + z_b)² σ² / δ²⌉` per group;
//! - **two proportions** (pooled-variance normal approximation, no continuity correction):
//!   `n = ⌈(z_a √(2 p̄ (1 − p̄)) + z_b √(p1 (1 − p1) + p2 (1 − p2)))² / (p1 − p2)²⌉` per group,
//!   `p̄ = (p1 + p2) / 2`;
//! - **time to event** (Schoenfeld, allocation p = 1/2):
//!   events `D = ⌈(z_a + z_b)² / (p (1 − p) ln(HR)²)⌉`, total `N = ⌈D / P(event)⌉`.
//!
//! Rounding: each step rounds up — per-group size (or events) first; with an expected dropout
//! rate d, the per-group size becomes `⌈n / (1 − d)⌉` (quotients that are whole numbers in exact
//! arithmetic, such as 315 / 0.9, are not pushed up by floating-point error); the two-arm total is twice the per-group
//! size. The answer (ground truth `target`) is the total number of participants.
//!
//! Generated problems avoid raw values within 1e-6 of an integer, so the rounded answer does
//! not depend on the last bits of floating point.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::Example;
use medrl_lm::tokenizer::ChatMessage;

/// Standard normal quantile Φ⁻¹(p), Wichura's algorithm AS241 (PPND16), relative accuracy
/// about 1e-16. `p` outside (0, 1) gives ±infinity or NaN. The coefficients are as published.
#[allow(clippy::excessive_precision)]
pub fn norm_ppf(p: f64) -> f64 {
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    fn poly(c: &[f64; 8], x: f64) -> f64 {
        c.iter().rev().fold(0.0, |acc, &k| acc * x + k)
    }
    const A: [f64; 8] = [
        3.387_132_872_796_366_608_0,
        1.331_416_678_917_843_774_5e2,
        1.971_590_950_306_551_442_7e3,
        1.373_169_376_550_946_112_5e4,
        4.592_195_393_154_987_145_7e4,
        6.726_577_092_700_870_085_3e4,
        3.343_057_558_358_812_810_5e4,
        2.509_080_928_730_122_672_7e3,
    ];
    const B: [f64; 8] = [
        1.0,
        4.231_333_070_160_091_125_2e1,
        6.871_870_074_920_579_083_0e2,
        5.394_196_021_424_751_107_7e3,
        2.121_379_430_158_659_586_7e4,
        3.930_789_580_009_271_061_0e4,
        2.872_908_573_572_194_267_4e4,
        5.226_495_278_852_854_561_0e3,
    ];
    const C: [f64; 8] = [
        1.423_437_110_749_683_577_34,
        4.630_337_846_156_545_295_90,
        5.769_497_221_460_691_405_50,
        3.647_848_324_763_204_605_04,
        1.270_458_252_452_368_382_58,
        2.417_807_251_774_506_117_70e-1,
        2.272_384_498_926_918_458_33e-2,
        7.745_450_142_783_414_076_40e-4,
    ];
    const D: [f64; 8] = [
        1.0,
        2.053_191_626_637_758_821_87,
        1.676_384_830_183_803_849_40,
        6.897_673_349_851_000_045_50e-1,
        1.481_039_764_274_800_745_90e-1,
        1.519_866_656_361_645_719_66e-2,
        5.475_938_084_995_344_946_00e-4,
        1.050_750_071_644_416_843_24e-9,
    ];
    const E: [f64; 8] = [
        6.657_904_643_501_103_777_20,
        5.463_784_911_164_114_369_90,
        1.784_826_539_917_291_335_80,
        2.965_605_718_285_048_912_30e-1,
        2.653_218_952_657_612_309_30e-2,
        1.242_660_947_388_078_438_60e-3,
        2.711_555_568_743_487_578_15e-5,
        2.010_334_399_292_288_132_65e-7,
    ];
    const F: [f64; 8] = [
        1.0,
        5.998_322_065_558_879_376_90e-1,
        1.369_298_809_227_358_053_10e-1,
        1.487_536_129_085_061_485_25e-2,
        7.868_691_311_456_132_591_00e-4,
        1.846_318_317_510_054_681_80e-5,
        1.421_511_758_316_445_888_70e-7,
        2.044_263_103_389_939_785_64e-15,
    ];
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * poly(&A, r) / poly(&B, r);
    }
    let r = if q < 0.0 { p } else { 1.0 - p };
    let r = (-r.ln()).sqrt();
    let v = if r <= 5.0 {
        let r = r - 1.6;
        poly(&C, r) / poly(&D, r)
    } else {
        let r = r - 5.0;
        poly(&E, r) / poly(&F, r)
    };
    if q < 0.0 {
        -v
    } else {
        v
    }
}

/// The statistical design of a two-arm trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "design", rename_all = "snake_case")]
pub enum Design {
    /// Continuous endpoint: common standard deviation and the difference to detect.
    TwoMeans { sd: f64, delta: f64 },
    /// Binary endpoint: response rates of control (p1) and treatment (p2).
    TwoProportions { p1: f64, p2: f64 },
    /// Time to event: hazard ratio and the probability that a participant has an event during
    /// the study.
    TimeToEvent { hazard_ratio: f64, event_probability: f64 },
}

/// One problem: a design plus the test's error rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(flatten)]
    pub design: Design,
    /// Two-sided significance level.
    pub alpha: f64,
    pub power: f64,
    /// Expected dropout rate (means and proportions only); 0 for none.
    #[serde(default)]
    pub dropout: f64,
}

/// The exact answer and the intermediate values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    /// The unrounded per-group size (means, proportions) or number of events (time to event).
    pub raw: f64,
    /// Per-group size after rounding up (and dropout), or events for time to event.
    pub per_group_or_events: u64,
    /// Total participants (the answer).
    pub total: u64,
}

fn ceil_u(x: f64) -> u64 {
    x.ceil() as u64
}

/// Round up a quotient of an integer by a decimal rate (n / (1 − d), D / P(event)) as exact
/// arithmetic would: 315 / 0.9 is 350, though it is 350.00000000000006 in floating point.
fn ceil_ratio(n: u64, rate: f64) -> u64 {
    (n as f64 / rate - 1e-9).ceil() as u64
}

/// Solve a problem with the documented formulas and rounding.
pub fn solve(p: &Problem) -> Solution {
    let za = norm_ppf(1.0 - p.alpha / 2.0);
    let zb = norm_ppf(p.power);
    match p.design {
        Design::TwoMeans { sd, delta } => {
            let raw = 2.0 * (za + zb).powi(2) * sd * sd / (delta * delta);
            let n = ceil_ratio(ceil_u(raw), 1.0 - p.dropout);
            Solution { raw, per_group_or_events: n, total: 2 * n }
        }
        Design::TwoProportions { p1, p2 } => {
            let pbar = (p1 + p2) / 2.0;
            let num = za * (2.0 * pbar * (1.0 - pbar)).sqrt() + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt();
            let raw = num * num / ((p1 - p2) * (p1 - p2));
            let n = ceil_ratio(ceil_u(raw), 1.0 - p.dropout);
            Solution { raw, per_group_or_events: n, total: 2 * n }
        }
        Design::TimeToEvent { hazard_ratio, event_probability } => {
            let raw = (za + zb).powi(2) / (0.25 * hazard_ratio.ln().powi(2));
            let d = ceil_u(raw);
            Solution { raw, per_group_or_events: d, total: ceil_ratio(d, event_probability) }
        }
    }
}

/// Clinical context for the problem text.
struct Context {
    condition: &'static str,
    intervention: &'static str,
    control: &'static str,
    continuous: (&'static str, &'static str),
    binary: &'static str,
    event: &'static str,
}

const CONTEXTS: &[Context] = &[
    Context { condition: "type 2 diabetes", intervention: "a once-weekly GLP-1 receptor agonist", control: "placebo", continuous: ("change in HbA1c", "percentage points"), binary: "HbA1c below 7%", event: "a major adverse cardiovascular event" },
    Context { condition: "essential hypertension", intervention: "a fixed-dose triple combination pill", control: "usual care", continuous: ("change in systolic blood pressure", "mmHg"), binary: "blood pressure control", event: "stroke" },
    Context { condition: "major depressive disorder", intervention: "an internet-delivered cognitive behavioural therapy program", control: "waitlist control", continuous: ("change in the HAM-D score", "points"), binary: "remission at 12 weeks", event: "relapse" },
    Context { condition: "hepatocellular carcinoma", intervention: "a PD-L1 inhibitor plus a VEGF inhibitor", control: "sorafenib", continuous: ("change in tumour diameter", "mm"), binary: "an objective response", event: "death" },
    Context { condition: "chronic heart failure", intervention: "an SGLT2 inhibitor", control: "placebo", continuous: ("change in 6-minute walk distance", "m"), binary: "improvement by one NYHA class", event: "hospitalisation for heart failure or cardiovascular death" },
    Context { condition: "community-acquired pneumonia", intervention: "a 3-day antibiotic course", control: "an 8-day antibiotic course", continuous: ("length of hospital stay", "days"), binary: "clinical cure at day 15", event: "treatment failure" },
    Context { condition: "knee osteoarthritis", intervention: "supervised exercise therapy", control: "education alone", continuous: ("change in WOMAC pain score", "points"), binary: "a clinically important pain reduction", event: "total knee replacement" },
    Context { condition: "postoperative nausea", intervention: "dexamethasone plus ondansetron", control: "ondansetron alone", continuous: ("nausea score at 24 hours", "points"), binary: "nausea or vomiting within 24 hours", event: "rescue antiemetic use" },
    Context { condition: "atrial fibrillation", intervention: "early rhythm control", control: "rate control", continuous: ("change in quality-of-life score", "points"), binary: "sinus rhythm at 12 months", event: "stroke or systemic embolism" },
    Context { condition: "metastatic colorectal cancer", intervention: "an anti-EGFR antibody added to chemotherapy", control: "chemotherapy alone", continuous: ("change in CEA level", "ng/mL"), binary: "an objective response", event: "disease progression or death" },
];

fn pct(x: f64) -> String {
    let s = format!("{:.1}", x * 100.0);
    s.trim_end_matches(".0").to_string() + "%"
}

/// The problem text shown to the model.
pub fn describe(p: &Problem, ctx_index: usize) -> String {
    let c = &CONTEXTS[ctx_index % CONTEXTS.len()];
    let head = format!(
        "A two-arm, parallel-group randomized controlled trial in patients with {} will compare {} with {} (1:1 allocation).",
        c.condition, c.intervention, c.control
    );
    let test = format!("The trial uses a two-sided test at a significance level of {} with {} power.", p.alpha, pct(p.power));
    let dropout = if p.dropout > 0.0 { format!(" Allow for an expected dropout rate of {}.", pct(p.dropout)) } else { String::new() };
    let body = match p.design {
        Design::TwoMeans { sd, delta } => format!(
            "The primary endpoint is the {} ({}). The investigators want to detect a difference of {} {} between the groups, assuming a common standard deviation of {} {}. Use the normal approximation for comparing two means.",
            c.continuous.0, c.continuous.1, delta, c.continuous.1, sd, c.continuous.1
        ),
        Design::TwoProportions { p1, p2 } => format!(
            "The primary endpoint is the proportion of patients with {}. The expected proportion is {} with {} and {} with {}. Use the normal approximation with pooled variance for comparing two proportions (no continuity correction).",
            c.binary, pct(p1), c.control, pct(p2), c.intervention
        ),
        Design::TimeToEvent { hazard_ratio, event_probability } => format!(
            "The primary endpoint is time to {}. The trial is designed to detect a hazard ratio of {} with a log-rank test, and {} of participants are expected to have an event during the study. Use Schoenfeld's formula for the number of events, then divide by the event probability.",
            c.event, hazard_ratio, pct(event_probability)
        ),
    };
    let ask = "How many participants in total (both arms) must be enrolled? Round up at each step. Think step by step inside <think></think>, then give only the number inside <answer></answer>.";
    format!("{head} {body} {test}{dropout}\n{ask}")
}

/// A worked solution in the reward's format (`<think>` steps, `<answer>` total), for SFT.
pub fn worked_solution(p: &Problem, s: &Solution) -> String {
    let za = norm_ppf(1.0 - p.alpha / 2.0);
    let zb = norm_ppf(p.power);
    let mut t = format!(
        "z for a two-sided alpha of {} is z_(1-alpha/2) = {za:.4}; z for {} power is {zb:.4}.\n",
        p.alpha,
        pct(p.power)
    );
    match p.design {
        Design::TwoMeans { sd, delta } => t.push_str(&format!(
            "Two means: n per group = 2 (z_a + z_b)^2 sd^2 / delta^2 = 2 x ({za:.4} + {zb:.4})^2 x {sd}^2 / {delta}^2 = {:.2}, rounded up to {}.\n",
            s.raw,
            s.raw.ceil()
        )),
        Design::TwoProportions { p1, p2 } => t.push_str(&format!(
            "Two proportions: pbar = ({p1} + {p2}) / 2 = {:.4}; n per group = (z_a sqrt(2 pbar (1 - pbar)) + z_b sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / (p1 - p2)^2 = {:.2}, rounded up to {}.\n",
            (p1 + p2) / 2.0,
            s.raw,
            s.raw.ceil()
        )),
        Design::TimeToEvent { hazard_ratio, event_probability } => t.push_str(&format!(
            "Schoenfeld: events = (z_a + z_b)^2 / (0.5 x 0.5 x ln({hazard_ratio})^2) = {:.2}, rounded up to {} events. Total = {} / {event_probability} = {:.2}, rounded up to {}.\n",
            s.raw,
            s.per_group_or_events,
            s.per_group_or_events,
            s.per_group_or_events as f64 / event_probability,
            s.total
        )),
    }
    if p.dropout > 0.0 {
        t.push_str(&format!(
            "Allowing for {} dropout: {} / (1 - {}) = {:.2}, rounded up to {} per group.\n",
            pct(p.dropout),
            s.raw.ceil(),
            p.dropout,
            s.raw.ceil() / (1.0 - p.dropout),
            s.per_group_or_events
        ));
    }
    if !matches!(p.design, Design::TimeToEvent { .. }) {
        t.push_str(&format!("Total for two arms = 2 x {} = {}.\n", s.per_group_or_events, s.total));
    }
    format!("<think>\n{t}</think>\n<answer>{}</answer>", s.total)
}

fn near_integer(x: f64) -> bool {
    (x - x.round()).abs() < 1e-6
}

/// Draw one problem.
pub fn draw(rng: &mut impl Rng) -> Problem {
    let alpha = *[0.05, 0.05, 0.05, 0.01, 0.1].choose(rng).unwrap();
    let power = *[0.8, 0.8, 0.85, 0.9, 0.9, 0.95].choose(rng).unwrap();
    // Round to the step and through decimal text, so values print as written ("16.4", not
    // "16.400000000000002") and survive a JSON round trip unchanged.
    let round = |x: f64, step: f64| format!("{:.2}", (x / step).round() * step).parse::<f64>().expect("a formatted number parses");
    let (design, dropout) = match rng.gen_range(0..3) {
        0 => {
            let sd = round(rng.gen_range(2.0..30.0), 0.5);
            let delta = round(sd * rng.gen_range(0.2..0.9), 0.1).max(0.1);
            (Design::TwoMeans { sd, delta }, *[0.0, 0.0, 0.1, 0.15, 0.2].choose(rng).unwrap())
        }
        1 => {
            let p1 = round(rng.gen_range(0.1..0.7), 0.01);
            let diff = round(rng.gen_range(0.08..0.25), 0.01);
            let p2 = if p1 + diff < 0.95 { p1 + diff } else { p1 - diff };
            (Design::TwoProportions { p1, p2: round(p2, 0.01) }, *[0.0, 0.0, 0.1, 0.15].choose(rng).unwrap())
        }
        _ => {
            let hr = round(rng.gen_range(0.55..0.85), 0.01);
            let pe = round(rng.gen_range(0.3..0.85), 0.05);
            (Design::TimeToEvent { hazard_ratio: hr, event_probability: pe }, 0.0)
        }
    };
    Problem { design, alpha, power, dropout }
}

/// `n` problems from `seed`, each as a medrl example: the user prompt describes the design, the
/// assistant turn is a worked solution ([`worked_solution`]),
/// `ground_truth` is `{"target": total, "answer_type": "integer", ...}` (TrialPanorama's keys),
/// `metadata` holds the problem and its solution.
pub fn generate(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = draw(&mut rng);
        let s = solve(&p);
        if near_integer(s.raw) || s.total > 100_000 {
            continue;
        }
        let ctx = rng.gen_range(0..CONTEXTS.len());
        let i = out.len();
        let question = describe(&p, ctx);
        out.push(Example {
            messages: vec![ChatMessage::user(question.clone()), ChatMessage::assistant(worked_solution(&p, &s))],
            ground_truth: json!({"target": s.total, "answer_type": "integer", "trial_id": format!("SYN-{seed}-{i}"), "pmid": null}),
            metadata: json!({"question": question, "problem": p, "solution": s, "generator": "medrl data synth sample-size", "seed": seed, "index": i}),
            data_source: "synthetic_sample_size".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_known_values() {
        assert!((norm_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((norm_ppf(0.8) - 0.841_621_233_572_914_3).abs() < 1e-14);
        assert!((norm_ppf(0.5)).abs() < 1e-16);
        assert!((norm_ppf(0.025) + 1.959_963_984_540_054).abs() < 1e-14);
        assert!((norm_ppf(1e-20) + 9.262_340_089_798_408).abs() < 1e-12);
    }

    #[test]
    fn textbook_examples() {
        // σ = δ: 2 (1.96 + 0.8416)² = 15.70 -> 16 per group.
        let s = solve(&Problem { design: Design::TwoMeans { sd: 1.0, delta: 1.0 }, alpha: 0.05, power: 0.8, dropout: 0.0 });
        assert_eq!((s.per_group_or_events, s.total), (16, 32));
        // HR 0.7, 80% power: 247 events.
        let s = solve(&Problem { design: Design::TimeToEvent { hazard_ratio: 0.7, event_probability: 0.5 }, alpha: 0.05, power: 0.8, dropout: 0.0 });
        assert_eq!((s.per_group_or_events, s.total), (247, 494));
        // 0.6 vs 0.4: 96.9 -> 97 per group.
        let s = solve(&Problem { design: Design::TwoProportions { p1: 0.4, p2: 0.6 }, alpha: 0.05, power: 0.8, dropout: 0.0 });
        assert_eq!(s.per_group_or_events, 97);
        let s = solve(&Problem { design: Design::TwoProportions { p1: 0.4, p2: 0.6 }, alpha: 0.05, power: 0.8, dropout: 0.1 });
        assert_eq!(s.total, 2 * 108);
        assert_eq!(ceil_ratio(315, 1.0 - 0.1), 350);
        assert_eq!(ceil_ratio(300, 0.75), 400);
        assert_eq!(ceil_ratio(301, 0.75), 402);
    }

    #[test]
    fn generation_is_deterministic() {
        let a = generate(20, 7);
        assert_eq!(a, generate(20, 7));
        assert_ne!(a, generate(20, 8));
        assert!(a.iter().all(|e| e.ground_truth["target"].as_u64().unwrap() > 0));
    }
}
