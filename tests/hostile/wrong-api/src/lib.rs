//! Same shape as a v0.1 reward, but declared against `medrl:plugin@9.0.0`.

wit_bindgen::generate!({ path: "wit", world: "reward" });

use medrl::plugin::types::Scored;

struct Future;

impl Guest for Future {
    fn manifest() -> Manifest {
        Manifest {
            name: "wrong-api".into(),
            version: "0.1.0".into(),
            description: "built against API 9.0.0".into(),
            config_schema: "{}".into(),
            capabilities: vec![],
            api_version: "9.0.0".into(),
        }
    }
    fn score(_config: String, samples: Vec<Sample>) -> Vec<Result<ScoreResult, String>> {
        samples
            .iter()
            .map(|_| {
                Ok(ScoreResult::Scored(Scored {
                    score: 1.0,
                    components: vec![],
                }))
            })
            .collect()
    }
}

export!(Future);
