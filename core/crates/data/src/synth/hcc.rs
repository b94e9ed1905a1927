//! Synthetic hepatocellular carcinoma (HCC) cases: EMR-style narratives in English, Chinese or
//! mixed (Chinese text with English abbreviations) written from structured fields, with the
//! ground truth in the format the `hcc-composite` reward reads.
//!
//! Fields: age, sex, etiology, Child-Pugh class (with consistent bilirubin / albumin / INR /
//! ascites / encephalopathy), ECOG performance status, tumour number and largest diameter,
//! vascular invasion (portal vein tumour thrombus), extrahepatic metastasis, AFP.
//!
//! Ground truth (`hcc-composite`'s keys): `ps`, `child_pugh`, `metastasis` and
//! `cancer_thrombus` ("present"/"absent"), `num_tumor`, `tumor_size` (mm), `survival_months`,
//! `if_death`, the known `survival_1yr/3yr/5yr` flags, `top3_treatments` [{treatment, score}],
//! plus `bclc_stage`.
//!
//! The stage follows the plugin's default rule table (`default_guideline` in
//! plugins/hcc-composite): D if PS > 2 or Child-Pugh C; C if tumour thrombus or metastasis, or
//! PS ≥ 1; 0 if a single nodule < 20 mm with Child-Pugh A; A if a single nodule ≤ 50 mm or ≤ 3
//! nodules ≤ 30 mm; otherwise B. The ranked treatments are drawn only from the treatments that
//! table allows for the stage (so stage 0, C and D cases have fewer than three):
//! 0: ablation, resection; A: resection, ablation, transplantation (ablation first for several
//! small nodules, transplantation first with Child-Pugh B); B: TACE, then transplantation
//! (Child-Pugh A, ≤ 3 nodules) or systemic therapy; C: systemic therapy; D: palliative care and
//! symptomatic support.
//!
//! Stages are drawn first (0 10%, A 25%, B 20%, C 30%, D 15%), then fields until they match.
//!
//! Survival: an exponential time with the stage's median overall survival (0: 96, A: 60, B: 26,
//! C: 11, D: 4 months), shortened for AFP > 400 ng/mL (×0.7) and Child-Pugh B (×0.75), censored
//! by a uniform follow-up of 6–84 months. Months are whole; a censored case knows only the
//! yearly flags it has passed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::Example;
use medrl_lm::tokenizer::ChatMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Zh,
    Mixed,
}

/// The structured fields of one case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    pub age: u32,
    /// "male" / "female".
    pub sex: String,
    /// HBV, HCV, alcohol, NAFLD.
    pub etiology: String,
    /// "A" / "B" / "C".
    pub child_pugh: String,
    pub ps: u32,
    pub num_tumor: u32,
    /// Largest diameter, mm.
    pub tumor_size: u32,
    pub vascular_invasion: bool,
    pub metastasis: bool,
    /// ng/mL.
    pub afp: f64,
}

/// BCLC stage under the default rule table (see the module docs).
pub fn bclc_stage(c: &Case) -> &'static str {
    if c.ps > 2 || c.child_pugh == "C" {
        "D"
    } else if c.vascular_invasion || c.metastasis || c.ps >= 1 {
        "C"
    } else if c.num_tumor == 1 && c.tumor_size < 20 && c.child_pugh == "A" {
        "0"
    } else if (c.num_tumor == 1 && c.tumor_size <= 50) || (c.num_tumor <= 3 && c.tumor_size <= 30) {
        "A"
    } else {
        "B"
    }
}

/// Ranked treatments for a case (names as the plugin's tables spell them).
pub fn treatments(c: &Case) -> Vec<&'static str> {
    match bclc_stage(c) {
        "0" => vec!["Ablation", "Surgical_resection"],
        "A" if c.child_pugh == "B" => vec!["Liver_transplantation", "Ablation", "Surgical_resection"],
        "A" if c.num_tumor > 1 => vec!["Ablation", "Surgical_resection", "Liver_transplantation"],
        "A" => vec!["Surgical_resection", "Ablation", "Liver_transplantation"],
        "B" if c.child_pugh == "A" && c.num_tumor <= 3 => vec!["TACE", "Liver_transplantation", "Systemic_anti-tumor_therapy"],
        "B" => vec!["TACE", "Systemic_anti-tumor_therapy"],
        "C" => vec!["Systemic_anti-tumor_therapy"],
        _ => vec!["Palliative_care", "Symptomatic_support"],
    }
}

fn median_os(stage: &str) -> f64 {
    match stage {
        "0" => 96.0,
        "A" => 60.0,
        "B" => 26.0,
        "C" => 11.0,
        _ => 4.0,
    }
}

fn draw_case(rng: &mut impl Rng) -> Case {
    let child_pugh = *["A", "A", "A", "A", "A", "A", "B", "B", "C"].choose(rng).unwrap();
    let ps = *[0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3].choose(rng).unwrap();
    let num_tumor = *[1, 1, 1, 1, 1, 2, 2, 3, 4, 5].choose(rng).unwrap();
    let tumor_size = match rng.gen_range(0..5) {
        0 => rng.gen_range(8..20),
        1 | 2 => rng.gen_range(20..31),
        3 => rng.gen_range(31..51),
        _ => rng.gen_range(51..150),
    };
    Case {
        age: rng.gen_range(32..86),
        sex: if rng.gen_bool(0.78) { "male" } else { "female" }.into(),
        etiology: ["HBV", "HBV", "HBV", "HCV", "alcohol", "NAFLD"].choose(rng).unwrap().to_string(),
        child_pugh: child_pugh.into(),
        ps,
        num_tumor,
        tumor_size,
        vascular_invasion: rng.gen_bool(0.12),
        metastasis: rng.gen_bool(0.08),
        afp: if rng.gen_bool(0.4) { (rng.gen_range(400.0f64..20000.0)).round() } else { (rng.gen_range(1.0f64..400.0) * 10.0).round() / 10.0 },
    }
}

/// Labs consistent with the Child-Pugh class: (bilirubin µmol/L, albumin g/L, INR, ascites, encephalopathy).
fn labs(cp: &str, rng: &mut impl Rng) -> (f64, f64, f64, &'static str, &'static str) {
    let r1 = |rng: &mut dyn rand::RngCore, a: f64, b: f64| ((a + (b - a) * rng.gen::<f64>()) * 10.0).round() / 10.0;
    match cp {
        "A" => (r1(rng, 8.0, 30.0), r1(rng, 36.0, 45.0), r1(rng, 0.9, 1.6), "none", "none"),
        "B" => (r1(rng, 34.0, 50.0), r1(rng, 28.0, 35.0), r1(rng, 1.7, 2.2), "mild", "none"),
        _ => (r1(rng, 52.0, 120.0), r1(rng, 20.0, 27.0), r1(rng, 2.4, 3.2), "moderate", "grade 1-2"),
    }
}

fn narrative(c: &Case, lang: Lang, rng: &mut impl Rng) -> String {
    let (bil, alb, inr, ascites, he) = labs(&c.child_pugh, rng);
    let size_cm = c.tumor_size as f64 / 10.0;
    match lang {
        Lang::En => {
            let sex = &c.sex;
            let etio = match c.etiology.as_str() {
                "HBV" => format!("chronic hepatitis B for {} years", rng.gen_range(5..30)),
                "HCV" => format!("chronic hepatitis C for {} years", rng.gen_range(5..25)),
                "alcohol" => format!("alcohol use of about {} g/day for {} years", rng.gen_range(4..12) * 10, rng.gen_range(10..30)),
                _ => "non-alcoholic fatty liver disease with type 2 diabetes".to_string(),
            };
            let nodules = if c.num_tumor == 1 { "a single hepatic lesion".to_string() } else { format!("{} hepatic lesions", c.num_tumor) };
            let pvtt = if c.vascular_invasion { "Tumour thrombus is seen in the right portal vein branch." } else { "No portal vein tumour thrombus is seen." };
            let mets = if c.metastasis { "Chest CT shows multiple pulmonary nodules consistent with metastases." } else { "Chest CT and bone scan show no extrahepatic spread." };
            format!(
                "Chief complaint: liver mass found on {} ultrasound.\nHistory: {}-year-old {sex} with {etio}. \
Examination: ECOG performance status {}. Ascites: {ascites}; hepatic encephalopathy: {he}.\n\
Labs: total bilirubin {bil} umol/L, albumin {alb} g/L, INR {inr}; Child-Pugh class {}. AFP {} ng/mL.\n\
Imaging: contrast-enhanced MRI shows {nodules} with arterial enhancement and washout, the largest {size_cm} cm in diameter. {pvtt} {mets}\n\
Diagnosis: hepatocellular carcinoma.",
                ["routine surveillance", "follow-up", "health check-up"].choose(rng).unwrap(),
                c.age, c.ps, c.child_pugh, c.afp
            )
        }
        Lang::Zh | Lang::Mixed => {
            let sex = if c.sex == "male" { "男" } else { "女" };
            let etio = match c.etiology.as_str() {
                "HBV" => format!("乙型肝炎病史{}年", rng.gen_range(5..30)),
                "HCV" => format!("丙型肝炎病史{}年", rng.gen_range(5..25)),
                "alcohol" => format!("饮酒史{}年，每日约{}g", rng.gen_range(10..30), rng.gen_range(4..12) * 10),
                _ => "非酒精性脂肪性肝病伴2型糖尿病".to_string(),
            };
            let asc = match ascites {
                "none" => "无腹水",
                "mild" => "少量腹水",
                _ => "中量腹水",
            };
            let hep = if he == "none" { "无肝性脑病" } else { "1-2级肝性脑病" };
            let nodules = if c.num_tumor == 1 { "肝内单发占位".to_string() } else { format!("肝内多发占位，共{}枚", c.num_tumor) };
            let pvtt = if c.vascular_invasion { "门静脉右支见癌栓。" } else { "未见门静脉癌栓。" };
            let mets = if c.metastasis { "胸部CT示双肺多发结节，考虑转移。" } else { "胸部CT及骨扫描未见肝外转移。" };
            if lang == Lang::Zh {
                format!(
                    "主诉：体检发现肝占位{}周。\n现病史：患者{sex}，{}岁，{etio}。\n查体：体力状况评分{}分，{asc}，{hep}。\n\
实验室检查：总胆红素{bil} μmol/L，白蛋白{alb} g/L，凝血酶原国际标准化比值{inr}；肝功能Child-Pugh {}级。甲胎蛋白{} ng/mL。\n\
影像学：增强磁共振示{nodules}，动脉期强化、门脉期廓清，最大径约{size_cm} cm。{pvtt}{mets}\n诊断：原发性肝细胞癌。",
                    rng.gen_range(1..8),
                    c.age, c.ps, c.child_pugh, c.afp
                )
            } else {
                format!(
                    "主诉：体检发现肝占位{}周。\n现病史：患者{sex}，{}岁，{etio}。\n查体：ECOG PS {}分，{asc}，{hep}。\n\
Lab：TBIL {bil} μmol/L，ALB {alb} g/L，INR {inr}；Child-Pugh {}级。AFP {} ng/mL。\n\
影像学：增强MRI示{nodules}，动脉期强化、门脉期廓清，最大径约{size_cm} cm。{pvtt}{mets}\n诊断：HCC。",
                    rng.gen_range(1..8),
                    c.age, c.ps, c.child_pugh, c.afp
                )
            }
        }
    }
}

/// The ground truth of a case and its survival outcome.
pub fn ground_truth(c: &Case, survival_months: u32, died: bool) -> Value {
    let stage = bclc_stage(c);
    let tx = treatments(c);
    let scores = [0.9, 0.7, 0.5];
    let yesno = |b: bool| if b { "present" } else { "absent" };
    let mut gt = json!({
        "ps": c.ps,
        "child_pugh": c.child_pugh,
        "metastasis": yesno(c.metastasis),
        "cancer_thrombus": yesno(c.vascular_invasion),
        "num_tumor": c.num_tumor,
        "tumor_size": c.tumor_size,
        "bclc_stage": stage,
        "survival_months": survival_months,
        "if_death": died as u8,
        "top3_treatments": tx.iter().zip(scores).map(|(t, s)| json!({"treatment": t, "score": s})).collect::<Vec<_>>(),
    });
    for (key, at) in [("survival_1yr", 12), ("survival_3yr", 36), ("survival_5yr", 60)] {
        if died {
            gt[key] = json!((survival_months >= at) as u8);
        } else if survival_months >= at {
            gt[key] = json!(1);
        }
    }
    gt
}

/// Median overall survival (months) of a case under the generator's survival model.
pub fn model_median_os(c: &Case) -> f64 {
    let mut median = median_os(bclc_stage(c));
    if c.afp > 400.0 {
        median *= 0.7;
    }
    if c.child_pugh == "B" {
        median *= 0.75;
    }
    median
}

/// A well-formed reference response in the tags the reward reads (for SFT warm-up and for
/// checking the reward end to end). The staging factors, stage and treatments are the ground
/// truth's; the survival prediction is the model's (the case's median survival and the
/// exponential survival probabilities at 1/3/5 years), not the drawn outcome, which no record
/// can predict.
pub fn reference_response(c: &Case, gt: &Value, lang: Lang) -> String {
    let stage = gt["bclc_stage"].as_str().unwrap_or("?");
    let tx: Vec<(String, f64)> = gt["top3_treatments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (t["treatment"].as_str().unwrap_or("").to_string(), t["score"].as_f64().unwrap_or(0.0)))
        .collect();
    let scores: serde_json::Map<String, Value> = tx.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
    let median = model_median_os(c);
    let months = median.round() as u64;
    let p = |m: f64| ((-std::f64::consts::LN_2 * m / median).exp() * 100.0).round() / 100.0;
    let thinking = match lang {
        Lang::En => format!(
            "Performance status {}, Child-Pugh {}, {} tumour(s) with the largest {} mm, portal vein thrombus {}, extrahepatic metastasis {}. By the BCLC rules this is stage {stage}.",
            c.ps, c.child_pugh, c.num_tumor, c.tumor_size, gt["cancer_thrombus"].as_str().unwrap_or(""), gt["metastasis"].as_str().unwrap_or("")
        ),
        _ => format!(
            "体力状况{}分，Child-Pugh {}级，肿瘤{}枚，最大径{} mm，门静脉癌栓{}，肝外转移{}。按BCLC规则分期为{stage}期。",
            c.ps, c.child_pugh, c.num_tumor, c.tumor_size,
            if c.vascular_invasion { "有" } else { "无" }, if c.metastasis { "有" } else { "无" }
        ),
    };
    let evidence: serde_json::Map<String, Value> = tx
        .iter()
        .map(|(n, _)| (n.clone(), json!(format!("BCLC stage {stage}: {n} is a guideline-recommended option for this stage and liver function."))))
        .collect();
    format!(
        "<thinking>{thinking}</thinking>\n<ps>{}</ps>\n<child_pugh>{}</child_pugh>\n<metastasis>{}</metastasis>\n<cancer_thrombus>{}</cancer_thrombus>\n<num_tumor>{}</num_tumor>\n<tumor_size>{}</tumor_size>\n\
<answer>BCLC stage {stage}.</answer>\n<treatment>{}</treatment>\n<treatment_not_recommended>{}</treatment_not_recommended>\n<hard_check>\n<hard_check_treatment>{}</hard_check_treatment>\n<hard_check_survival>{}</hard_check_survival>\n</hard_check>",
        gt["ps"], gt["child_pugh"].as_str().unwrap_or(""), gt["metastasis"].as_str().unwrap_or(""), gt["cancer_thrombus"].as_str().unwrap_or(""),
        gt["num_tumor"], gt["tumor_size"],
        tx.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(", "),
        match stage {
            "D" => "Surgical_resection, Liver_transplantation, TACE",
            "C" => "Surgical_resection, Liver_transplantation",
            "B" => "Ablation",
            _ => "Palliative_care",
        },
        json!({"scores": scores, "evidence": evidence}),
        json!({"survival_months": months, "survival_1yr": p(12.0), "survival_3yr": p(36.0), "survival_5yr": p(60.0)}),
    )
}

/// The instruction appended to each narrative.
pub fn instruction(lang: Lang) -> &'static str {
    match lang {
        Lang::En => "Based on this record, extract the staging factors, give the BCLC stage, rank the top-3 treatments with evidence, and predict survival (months and 1/3/5-year survival).",
        _ => "请根据以上病历提取分期要素，给出BCLC分期，按优先级推荐前三位治疗方案并给出依据，并预测生存期（月）及1/3/5年生存情况。",
    }
}

/// `n` cases from `seed`: user turn = narrative + instruction, assistant = a reference
/// response, `ground_truth` as above, `metadata` = the structured case, stage and language.
pub fn generate(n: usize, seed: u64, lang: Lang) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            // The stage is drawn first (0 10%, A 25%, B 20%, C 30%, D 15%), then fields until
            // they stage to it, so every stage is represented.
            let target = *["0", "A", "A", "A", "B", "B", "C", "C", "C", "D"]
                .choose(&mut rng)
                .unwrap();
            let c = loop {
                let c = draw_case(&mut rng);
                if bclc_stage(&c) == target {
                    break c;
                }
            };
            let stage = bclc_stage(&c);
            let median = model_median_os(&c);
            let u: f64 = rng.gen::<f64>().max(1e-12);
            let t = -median / std::f64::consts::LN_2 * u.ln();
            let follow_up: f64 = rng.gen_range(6.0..84.0);
            let (months, died) = if t <= follow_up { (t.max(1.0), true) } else { (follow_up, false) };
            let months = months.floor() as u32;
            let l = match lang {
                Lang::Mixed => *[Lang::En, Lang::Zh, Lang::Mixed].choose(&mut rng).unwrap(),
                l => l,
            };
            let text = narrative(&c, l, &mut rng);
            let gt = ground_truth(&c, months, died);
            let reference = reference_response(&c, &gt, l);
            Example {
                messages: vec![ChatMessage::user(format!("{text}\n\n{}", instruction(l))), ChatMessage::assistant(reference)],
                ground_truth: gt,
                metadata: json!({"case": c, "bclc_stage": stage, "lang": l, "generator": "medrl data synth hcc", "seed": seed, "index": i}),
                data_source: "synthetic_hcc".into(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(cp: &str, ps: u32, n: u32, size: u32, vi: bool, mets: bool) -> Case {
        Case { age: 60, sex: "male".into(), etiology: "HBV".into(), child_pugh: cp.into(), ps, num_tumor: n, tumor_size: size, vascular_invasion: vi, metastasis: mets, afp: 10.0 }
    }

    #[test]
    fn stages_follow_the_default_table() {
        assert_eq!(bclc_stage(&case("C", 0, 1, 10, false, false)), "D");
        assert_eq!(bclc_stage(&case("A", 3, 1, 10, false, false)), "D");
        assert_eq!(bclc_stage(&case("A", 0, 1, 10, true, false)), "C");
        assert_eq!(bclc_stage(&case("A", 1, 1, 10, false, false)), "C");
        assert_eq!(bclc_stage(&case("A", 0, 1, 19, false, false)), "0");
        assert_eq!(bclc_stage(&case("B", 0, 1, 19, false, false)), "A");
        assert_eq!(bclc_stage(&case("A", 0, 1, 50, false, false)), "A");
        assert_eq!(bclc_stage(&case("A", 0, 3, 30, false, false)), "A");
        assert_eq!(bclc_stage(&case("A", 0, 3, 31, false, false)), "B");
        assert_eq!(bclc_stage(&case("A", 0, 1, 51, false, false)), "B");
    }

    #[test]
    fn generation_is_deterministic_and_consistent() {
        let a = generate(30, 3, Lang::Mixed);
        assert_eq!(a, generate(30, 3, Lang::Mixed));
        for e in &a {
            let gt = &e.ground_truth;
            let months = gt["survival_months"].as_u64().unwrap();
            if gt["if_death"] == 1 {
                assert_eq!(gt["survival_1yr"], json!((months >= 12) as u8));
            }
            assert!(!gt["top3_treatments"].as_array().unwrap().is_empty());
        }
        let zh = generate(3, 1, Lang::Zh);
        assert!(zh[0].messages[0].content.contains("Child-Pugh") && zh[0].messages[0].content.contains("患者"));
    }
}
