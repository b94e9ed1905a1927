//! A tool (API 0.3.0) that misbehaves on purpose, chosen by its arguments (`{"mode": ...}`):
//! every per-sample probe of the hostile rewards (loop, panic, alloc-bomb, sleep, judge,
//! search, ...; a probe's score becomes the reply) plus tool-only modes. Its spec is chosen by
//! bytes the tests patch in the built `.wasm` (`tool-spec` takes no arguments). Raw bindings,
//! no SDK, so it can return what the SDK would never build.

wit_bindgen::generate!({ path: "../../../reward-sdk/wit/v0.3", world: "tool" });

#[path = "../../hostile/src/probes.rs"]
#[allow(dead_code)]
mod probes;

use medrl::plugin::types::Capability;
use probes::{field, manifest_parts, mode_of, number, one, Input};

/// Which spec attack to make; same length after patching, `.` as padding.
#[used]
static SPEC_MODE: [u8; 26] = *b"spec-mode:normal..........";

fn spec_mode() -> String {
    // Volatile: the compiler must not fold the bytes the tests patch.
    let bytes = unsafe { core::ptr::read_volatile(&SPEC_MODE) };
    String::from_utf8_lossy(&bytes[10..])
        .trim_end_matches('.')
        .to_string()
}

struct Hostile;

impl Guest for Hostile {
    fn manifest() -> Manifest {
        let m = manifest_parts("hostile-tool");
        let mut capabilities = vec![Capability::Judge; m.judge];
        capabilities.extend(vec![Capability::Search; m.search]);
        Manifest {
            name: m.name,
            version: m.version,
            description: m.description,
            config_schema: m.config_schema,
            capabilities,
            api_version: "0.3.0".into(),
        }
    }

    fn tool_spec() -> ToolSpec {
        let mut spec = ToolSpec {
            name: "hostile".into(),
            description: "Misbehaves as `mode` says.".into(),
            parameters: r#"{"type":"object","properties":{"mode":{"type":"string"}}}"#.into(),
        };
        match spec_mode().as_str() {
            "bad-name" => spec.name = "Hostile Tool".into(),
            "long-name" => spec.name = "t".repeat(65),
            "long-desc" => spec.description = "d".repeat(5000),
            "huge-desc" => spec.description = "d".repeat(4 << 20),
            "not-object" => spec.parameters = "[1, 2]".into(),
            "not-json" => spec.parameters = "{\"type\": ".into(),
            _ => {}
        }
        spec
    }

    fn call(_config: String, arguments: String) -> Result<String, String> {
        let text = field(&arguments, "text").unwrap_or_default();
        match mode_of(&arguments).as_str() {
            "echo" => Ok(text),
            // `bytes` bytes of reply.
            "huge" => Ok("x".repeat(number(&arguments, "bytes", 1 << 20) as usize)),
            "err" => Err(format!("cannot do `{text}`")),
            // Swallows the judge's error and answers: the call must fail all the same.
            "judge-ignore" => {
                let _ = medrl::plugin::judge::judge_score("is this granted?");
                Ok("carried on".into())
            }
            "search-ids" => {
                let hits = medrl::plugin::search::search(&text, 10)?;
                Ok(hits.into_iter().map(|h| h.id).collect::<Vec<_>>().join(","))
            }
            mode => {
                let input = Input {
                    prompt: &arguments,
                    response: &text,
                };
                match one(mode, &arguments, &input)? {
                    Some(score) => Ok(format!("{score}")),
                    None => Ok("not applicable".into()),
                }
            }
        }
    }
}

export!(Hostile);
