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
use probes::{mode_of, one, Input, Probe};

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
        Manifest {
            name: "hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "misbehaves on purpose (sandbox tests)".into(),
            config_schema: r#"{"type":"object","properties":{"mode":{"type":"string"}}}"#.into(),
            capabilities: vec![],
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
