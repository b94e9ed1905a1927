//! The hostile plugin on API 0.2.0: the same per-sample probes as `hostile` (0.1.0), plus
//! modes that break the batch-shaped output contract in the ways flat lists allow (wrong
//! lengths, indices out of range or repeated, duplicate component names). Raw bindings, no SDK,
//! so it can return what the SDK would never build.

wit_bindgen::generate!({ path: "../../../reward-sdk/wit/v0.2", world: "reward" });

#[path = "../../hostile/src/probes.rs"]
mod probes;

use probes::{manifest_parts, mode_of, number, one, Input};

struct Hostile;

/// Well-formed results for `n` samples: one component, `probe`, equal to the score.
fn scored(n: usize, score: f64) -> BatchScores {
    BatchScores {
        scores: vec![score; n],
        component_names: vec!["probe".into()],
        components: vec![score; n],
        absent: vec![],
        errors: vec![],
        not_applicable: vec![],
    }
}

impl Guest for Hostile {
    fn manifest() -> Manifest {
        let m = manifest_parts("hostile-v2");
        use medrl::plugin::types::Capability;
        let mut capabilities = vec![Capability::Judge; m.judge];
        capabilities.extend(vec![Capability::Search; m.search]);
        Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities,
            api_version: "0.2.0".into(),
        }
    }

    fn score_batch(config: String, batch: SampleBatch) -> BatchScores {
        let mode = mode_of(&config);
        // Trusts the host's layout: field f of sample i ends where field f + 1 starts.
        let o = &batch.offsets;
        let n = o.len().saturating_sub(1) / 5;
        let field =
            |i: usize, f: usize| &batch.text[o[5 * i + f] as usize..o[5 * i + f + 1] as usize];
        let last = n as u32;
        let mut out = scored(n, 1.0);
        match mode.as_str() {
            "wrong-count" => out.scores.push(1.0),
            "empty" => out = scored(0, 1.0),
            "components-not-multiple" => {
                out.component_names.push("extra".into());
                out.components = vec![1.0; 2 * n + 1];
            }
            "duplicate-names" => {
                out.component_names.push("probe".into());
                out.components = vec![1.0; 2 * n];
            }
            "error-index-out-of-range" => out.errors.push((last, "no such sample".into())),
            "not-applicable-out-of-range" => out.not_applicable.push(last),
            "absent-out-of-range" => out.absent.push(last),
            "duplicate-error" => {
                out.errors.push((0, "first".into()));
                out.errors.push((0, "second".into()));
            }
            "error-and-not-applicable" => {
                out.errors.push((0, "failed".into()));
                out.not_applicable.push(0);
            }
            // Many distinct names once per batch, under the output cap (issue 14: 50,000 names
            // of 100 bytes passed the 16 MiB cap and were cloned into every sample's row).
            // `dup_last`: the last name repeats the first, so only a full check finds it.
            "many-names" => {
                let k = number(&config, "names", 50_000) as usize;
                out.component_names = (0..k).map(|j| format!("{j:0>100}")).collect();
                if number(&config, "dup_last", 0) == 1 {
                    out.component_names[k - 1] = out.component_names[0].clone();
                }
                out.components = vec![1.0; k * n];
            }
            "huge-components" => {
                // Huge names once per batch: the output-size cap must stop them.
                out.component_names = (0..24)
                    .map(|i| format!("{i}{}", "c".repeat(1 << 20)))
                    .collect();
                out.components = vec![1.0; 24 * n];
            }
            // Valid: a second component that odd samples do not have.
            "absent" => {
                out.component_names.push("even".into());
                out.components = (0..n).flat_map(|i| [i as f64, 2.0 * i as f64]).collect();
                out.scores = (0..n).map(|i| i as f64).collect();
                out.absent = (0..n)
                    .filter(|i| i % 2 == 1)
                    .map(|i| (2 * i + 1) as u32)
                    .collect();
            }
            _ => {
                for i in 0..n {
                    let m = if mode == "by-source" {
                        field(i, 4)
                    } else {
                        mode.as_str()
                    };
                    let input = Input {
                        prompt: field(i, 0),
                        response: field(i, 1),
                    };
                    match one(m, &config, &input) {
                        Ok(Some(score)) => {
                            out.scores[i] = score;
                            out.components[i] = score;
                        }
                        Ok(None) => out.not_applicable.push(i as u32),
                        Err(e) => out.errors.push((i as u32, e)),
                    }
                }
            }
        }
        out
    }
}

export!(Hostile);
