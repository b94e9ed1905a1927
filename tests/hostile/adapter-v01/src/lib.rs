//! A data adapter built against API 0.1.0 with raw bindings (the SDK now builds 0.2.0), so the
//! host's 0.1.0 adapter path keeps a test. It echoes each record's text into one user turn and
//! fails records that are not JSON strings, without a JSON library.

wit_bindgen::generate!({ path: "../../../reward-sdk/wit/v0.1", world: "data-adapter" });

struct Echo;

impl Guest for Echo {
    fn manifest() -> medrl::plugin::types::Manifest {
        medrl::plugin::types::Manifest {
            name: "adapter-v01".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "echoes string records (API 0.1.0 fixture)".into(),
            config_schema: "{}".into(),
            capabilities: vec![],
            api_version: "0.1.0".into(),
        }
    }

    fn convert(_config: String, records: Vec<String>) -> Vec<Result<String, String>> {
        records
            .iter()
            .map(|r| {
                // A JSON string without escapes is itself valid JSON to embed.
                if r.len() < 2 || !r.starts_with('"') || !r.ends_with('"') || r.contains('\\') {
                    return Err(format!("record is not a plain JSON string: {r}"));
                }
                Ok(format!(
                    r#"{{"messages":[{{"role":"user","content":{r}}}],"ground_truth":null,"metadata":{{}},"data_source":"echo"}}"#
                ))
            })
            .collect()
    }
}

export!(Echo);
