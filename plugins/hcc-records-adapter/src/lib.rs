//! Structured HCC records to examples for the `hcc-composite` reward.
//!
//! Input (one JSON object per record; alternative names in brackets):
//! `emr` [`text`, `narrative`] the EMR narrative (required), `ps` [`ecog`] 0-4, `child_pugh`
//! A/B/C, `metastasis` and `cancer_thrombus` [`vascular_invasion`, `pvtt`] (true/false, 1/0,
//! present/absent, yes/no, 有/无), `num_tumor` [`tumor_number`], `tumor_size` in mm
//! [`tumor_size_cm` in cm], `survival_months`, `if_death` [`death`, `event`] 0/1,
//! `top3_treatments` [{treatment, score}] or `treatments` [names, best first], optional
//! `survival_1yr/3yr/5yr`. Output ground truth uses the plugin's keys and values
//! ("present"/"absent", integers); the user turn is the narrative plus `config.instruction`.

use medrl_reward_sdk::{export_adapter, serde_json::json, Adapter, Example, Manifest, Message, Value};

pub struct HccRecords;

fn first<'a>(r: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| r.get(*k).filter(|v| !v.is_null()))
}

fn int(v: &Value, what: &str) -> Result<i64, String> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or(format!("`{what}` must be a number, got {v}"))?;
    if f.fract() != 0.0 && what != "tumor_size" {
        return Err(format!("`{what}` must be a whole number, got {f}"));
    }
    Ok(f.round() as i64)
}

fn flag(v: &Value, what: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "present" | "yes" | "true" | "1" | "有" | "是" => Ok(true),
            "absent" | "no" | "false" | "0" | "无" | "否" => Ok(false),
            other => Err(format!("`{what}` must be present/absent, got {other:?}")),
        },
        other => Err(format!("`{what}` must be present/absent, got {other}")),
    }
}

impl Adapter for HccRecords {
    fn manifest() -> Manifest {
        Manifest::new("hcc-records-adapter", env!("CARGO_PKG_VERSION"), "structured HCC records -> examples for hcc-composite")
            .config_schema(json!({"type": "object", "properties": {
                "instruction": {"type": "string", "description": "appended to the narrative"},
                "data_source": {"type": "string", "default": "hcc_records"}
            }, "additionalProperties": false}))
    }
    fn convert(c: &Value, r: &Value) -> Result<Example, String> {
        let text = first(r, &["emr", "text", "narrative"]).and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty()).ok_or("missing the EMR narrative (`emr`)")?;
        let ps = int(first(r, &["ps", "ecog"]).ok_or("missing `ps`")?, "ps")?;
        if !(0..=4).contains(&ps) {
            return Err(format!("`ps` must be 0-4, got {ps}"));
        }
        let cp = first(r, &["child_pugh"]).and_then(Value::as_str).map(|s| s.trim().trim_end_matches('级').to_uppercase()).ok_or("missing `child_pugh`")?;
        if !matches!(cp.as_str(), "A" | "B" | "C") {
            return Err(format!("`child_pugh` must be A, B or C, got {cp:?}"));
        }
        let mets = flag(first(r, &["metastasis"]).ok_or("missing `metastasis`")?, "metastasis")?;
        let thrombus = flag(first(r, &["cancer_thrombus", "vascular_invasion", "pvtt"]).ok_or("missing `cancer_thrombus`")?, "cancer_thrombus")?;
        let num = int(first(r, &["num_tumor", "tumor_number"]).ok_or("missing `num_tumor`")?, "num_tumor")?;
        if num < 1 {
            return Err(format!("`num_tumor` must be at least 1, got {num}"));
        }
        let size = match (r.get("tumor_size"), r.get("tumor_size_cm")) {
            (Some(v), _) if !v.is_null() => int(v, "tumor_size")?,
            (_, Some(v)) => int(&json!(v.as_f64().ok_or("`tumor_size_cm` must be a number")? * 10.0), "tumor_size")?,
            _ => return Err("missing `tumor_size` (mm) or `tumor_size_cm`".into()),
        };
        let yesno = |b: bool| if b { "present" } else { "absent" };
        let mut gt = json!({"ps": ps, "child_pugh": cp, "metastasis": yesno(mets), "cancer_thrombus": yesno(thrombus), "num_tumor": num, "tumor_size": size});
        if let Some(m) = r.get("survival_months").filter(|v| !v.is_null()) {
            let months = m.as_f64().ok_or(format!("`survival_months` must be a number, got {m}"))?;
            if months < 0.0 {
                return Err(format!("`survival_months` must not be negative, got {months}"));
            }
            gt["survival_months"] = json!(months);
            let died = flag(first(r, &["if_death", "death", "event"]).ok_or("`survival_months` needs `if_death`")?, "if_death")?;
            gt["if_death"] = json!(died as u8);
        }
        for k in ["survival_1yr", "survival_3yr", "survival_5yr"] {
            if let Some(v) = r.get(k).filter(|v| !v.is_null()) {
                gt[k] = json!(flag(v, k)? as u8);
            }
        }
        let tx: Vec<Value> = if let Some(t) = r.get("top3_treatments").and_then(Value::as_array) {
            t.iter().map(|e| e.get("treatment").and_then(Value::as_str).map(|_| e.clone()).ok_or("top3_treatments entries need a `treatment` name")).collect::<Result<_, _>>()?
        } else if let Some(t) = r.get("treatments").and_then(Value::as_array) {
            t.iter().take(3).enumerate().map(|(i, n)| n.as_str().map(|n| json!({"treatment": n, "score": 1.0 - 0.2 * i as f64})).ok_or("treatments must be names")).collect::<Result<_, _>>()?
        } else {
            return Err("missing `top3_treatments` (or `treatments`)".into());
        };
        if tx.is_empty() {
            return Err("no treatment in `top3_treatments`".into());
        }
        gt["top3_treatments"] = Value::Array(tx);
        let user = match c.get("instruction").and_then(Value::as_str) {
            Some(i) if !i.trim().is_empty() => format!("{text}\n\n{i}"),
            _ => text.to_string(),
        };
        let mut metadata = json!({});
        if let Some(id) = r.get("id") {
            metadata["id"] = id.clone();
        }
        Ok(Example {
            messages: vec![Message { role: "user".into(), content: user }],
            ground_truth: gt,
            metadata,
            data_source: c.get("data_source").and_then(Value::as_str).unwrap_or("hcc_records").into(),
        })
    }
}

export_adapter!(HccRecords);
