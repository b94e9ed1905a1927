//! A reward plugin that attacks or breaks the host on purpose; the sandbox tests drive it.
//!
//! It uses the raw WIT bindings (not the SDK) so it can also break the output contract
//! (wrong number of results, NaN scores). The behaviour is `config.mode`; with mode
//! `by-source` each sample's `data_source` picks the behaviour, so one batch can mix good and
//! bad samples. Modes returning `err(...)` report what the probe observed, so a sandbox leak
//! shows up as a `scored` result instead of an error.

wit_bindgen::generate!({ path: "../../../reward-sdk/wit/v0.1", world: "reward" });

use medrl::plugin::types::Scored;

struct Hostile;

fn mode_of(config: &str) -> String {
    // Tiny ad-hoc parse to avoid a JSON dependency: {"mode":"x", "port": N}.
    field(config, "mode").unwrap_or_else(|| "ok".into())
}

fn field(config: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let rest = &config[config.find(&pat)? + pat.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if let Some(r) = rest.strip_prefix('"') {
        Some(r[..r.find('"')?].to_string())
    } else {
        Some(rest.chars().take_while(|c| c.is_ascii_digit()).collect())
    }
}

fn ok(score: f64) -> Result<ScoreResult, String> {
    Ok(ScoreResult::Scored(Scored {
        score,
        components: vec![("probe".into(), score)],
    }))
}

/// Deep recursion using only wasm locals (no address-taken locals, which would live on the
/// shadow stack in linear memory): exhausts the engine's wasm stack. The non-associative
/// combination after the call stops LLVM from turning it into a loop.
#[inline(never)]
fn deep(n: u64, a: u64, b: u64) -> u64 {
    if n == 0 {
        return a ^ b;
    }
    let r = deep(n - 1, a.wrapping_mul(31).wrapping_add(n), b ^ n);
    r.rotate_left((n % 63) as u32) ^ a
}

fn one(mode: &str, config: &str, s: &Sample) -> Result<ScoreResult, String> {
    match mode {
        "ok" => ok(s.response.len() as f64),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc-bomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch the pages so the memory is really committed.
                hoard.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "panic" => panic!("hostile plugin panics on purpose"),
        "unreachable" => core::arch::wasm32::unreachable(),
        "stack-overflow" => ok(deep(std::hint::black_box(1u64 << 40), 1, 2) as f64),
        "huge-output" => Err("x".repeat(64 << 20)),
        "nan" => ok(f64::NAN),
        "inf" => ok(f64::INFINITY),
        "guest-error" => Err(format!("cannot score sample `{}`", s.prompt)),
        "not-applicable" => Ok(ScoreResult::NotApplicable),
        "read-file" => {
            let path = field(config, "path").unwrap_or_else(|| "/etc/passwd".into());
            match std::fs::read_to_string(&path) {
                Ok(text) => ok(text.len() as f64),
                Err(e) => Err(format!("read {path}: {e}")),
            }
        }
        "list-dir" => match std::fs::read_dir("/") {
            Ok(d) => ok(d.count() as f64),
            Err(e) => Err(format!("read_dir /: {e}")),
        },
        "env" => {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            let args: Vec<String> = std::env::args().collect();
            if vars.is_empty() && args.is_empty() {
                Err("environment is empty".into())
            } else {
                ok((vars.len() + args.len()) as f64)
            }
        }
        "socket" => {
            let port = field(config, "port").unwrap_or_else(|| "80".into());
            match std::net::TcpStream::connect(format!("127.0.0.1:{port}")) {
                Ok(_) => ok(1.0),
                Err(e) => Err(format!("connect 127.0.0.1:{port}: {e}")),
            }
        }
        "judge" => medrl::plugin::judge::judge_score(&s.response).and_then(ok),
        "judge-unwrap" => ok(medrl::plugin::judge::judge_score(&s.response).unwrap()),
        "search" => {
            let hits = medrl::plugin::search::search(&s.response, 10)?;
            ok(hits.first().map(|h| h.score).unwrap_or(0.0))
        }
        "log" => {
            medrl::plugin::host::log(
                medrl::plugin::host::LogLevel::Info,
                &format!("scoring {}", s.prompt),
            );
            println!("stdout line from hostile plugin");
            eprintln!("stderr line from hostile plugin");
            ok(1.0)
        }
        other => Err(format!("unknown mode `{other}`")),
    }
}

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
                    .map(|_| ok(1.0))
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
                one(m, &config, s)
            })
            .collect()
    }
}

export!(Hostile);
