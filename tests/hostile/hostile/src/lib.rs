//! A reward plugin that attacks or breaks the host on purpose; the sandbox tests drive it.
//!
//! It uses the raw WIT bindings (not the SDK) so it can also break the output contract
//! (wrong number of results, NaN scores). The behaviour is `config.mode`; with mode
//! `by-source` each sample's `data_source` picks the behaviour, so one batch can mix good and
//! bad samples. Modes returning `err(...)` report what the probe observed, so a sandbox leak
//! shows up as a `scored` result instead of an error.

wit_bindgen::generate!({ path: "../../../reward-sdk/wit/v0.1", world: "reward" });

mod probes;

use medrl::plugin::types::Scored;
use probes::{manifest_parts, mode_of, number, one, Input, Probe};

/// A probe's result as a 0.1.0 `score-result`.
fn wit(p: Probe) -> Result<ScoreResult, String> {
    p.map(|score| match score {
        Some(score) => ScoreResult::Scored(Scored {
            score,
            components: vec![("probe".into(), score)],
        }),
        None => ScoreResult::NotApplicable,
    })
}

struct Hostile;

impl Guest for Hostile {
    fn manifest() -> Manifest {
        let m = manifest_parts("hostile");
        use medrl::plugin::types::Capability;
        let mut capabilities = vec![Capability::Judge; m.judge];
        capabilities.extend(vec![Capability::Search; m.search]);
        Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities,
            api_version: "0.1.0".into(),
        }
    }

    fn score(config: String, samples: Vec<Sample>) -> Vec<Result<ScoreResult, String>> {
        let mode = mode_of(&config);
        match mode.as_str() {
            "wrong-count" => {
                return samples
                    .iter()
                    .chain(samples.first())
                    .map(|_| wit(Ok(Some(1.0))))
                    .collect()
            }
            "empty" => return vec![],
            // Many distinct names per sample, under the output cap (issue 14: 50,000 names of
            // 100 bytes, cloned into every row).
            "many-names" => {
                let k = number(&config, "names", 50_000) as usize;
                let names: Vec<(String, f64)> =
                    (0..k).map(|j| (format!("{j:0>100}"), 1.0)).collect();
                return samples
                    .iter()
                    .map(|_| {
                        Ok(ScoreResult::Scored(Scored {
                            score: 1.0,
                            components: names.clone(),
                        }))
                    })
                    .collect();
            }
            "huge-components" => {
                // Many large component names: the output-size cap, not memory, must stop this.
                let name = "c".repeat(1 << 20);
                return samples
                    .iter()
                    .map(|_| {
                        Ok(ScoreResult::Scored(Scored {
                            score: 1.0,
                            components: (0..24).map(|_| (name.clone(), 1.0)).collect(),
                        }))
                    })
                    .collect();
            }
            _ => {}
        }
        samples
            .iter()
            .map(|s| {
                let m = if mode == "by-source" {
                    s.data_source.as_str()
                } else {
                    mode.as_str()
                };
                let input = Input {
                    prompt: &s.prompt,
                    response: &s.response,
                };
                wit(one(m, &config, &input))
            })
            .collect()
    }
}

export!(Hostile);
