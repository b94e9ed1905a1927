//! The per-sample behaviours of the hostile plugins, shared by the API 0.1.0 crate (`hostile`,
//! which includes this file) and the 0.2.0 one (`hostile-v2`, via `#[path]`). Both generate
//! their bindings at the crate root, so `crate::medrl::plugin::*` names the host imports of
//! whichever API the including crate targets.

/// What a probe returns: `Ok(Some(score))` is scored (with one component, `probe`), `Ok(None)`
/// is not applicable, `Err` a per-sample error.
pub type Probe = Result<Option<f64>, String>;

/// One sample as the probes see it.
pub struct Input<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
}

pub fn mode_of(config: &str) -> String {
    // Tiny ad-hoc parse to avoid a JSON dependency: {"mode":"x", "port": N}.
    field(config, "mode").unwrap_or_else(|| "ok".into())
}

pub fn field(config: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let rest = &config[config.find(&pat)? + pat.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if let Some(r) = rest.strip_prefix('"') {
        Some(r[..r.find('"')?].to_string())
    } else {
        Some(rest.chars().take_while(|c| c.is_ascii_digit()).collect())
    }
}

fn ok(score: f64) -> Probe {
    Ok(Some(score))
}

/// A numeric config field, or `default`.
pub fn number(config: &str, key: &str, default: u64) -> u64 {
    field(config, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which manifest attack to make. The tests patch these bytes in the built `.wasm` (same
/// length, `.` as padding), since `manifest` takes no config.
#[used]
static MANIFEST_MODE: [u8; 30] = *b"manifest-mode:normal..........";

pub fn manifest_mode() -> String {
    // Volatile: the compiler must not fold the bytes the tests patch.
    let bytes = unsafe { core::ptr::read_volatile(&MANIFEST_MODE) };
    String::from_utf8_lossy(&bytes[14..])
        .trim_end_matches('.')
        .to_string()
}

/// The manifest's fields for the current manifest mode; `judge` and `search` are how many
/// times each capability is listed.
pub struct ManifestParts {
    pub name: String,
    pub version: String,
    pub description: String,
    pub config_schema: String,
    pub judge: usize,
    pub search: usize,
}

pub fn manifest_parts(name: &str) -> ManifestParts {
    let mut m = ManifestParts {
        name: name.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description: "misbehaves on purpose (sandbox tests)".into(),
        config_schema: r#"{"type":"object","properties":{"mode":{"type":"string"}}}"#.into(),
        judge: 0,
        search: 0,
    };
    match manifest_mode().as_str() {
        // Copied into every error, log line and output row if the host used it as is.
        "huge-name" => m.name = "n".repeat(4 << 20),
        // Forges log lines if the host logged it as is.
        "bad-name" => m.name = format!("{name}\n2026-01-01 INFO forged"),
        "huge-version" => m.version = "9".repeat(1 << 20),
        "huge-desc" => m.description = "d".repeat(4 << 20),
        "huge-schema" => m.config_schema = " ".repeat(4 << 20),
        // One warning per entry if the host logged each (issue 14: 16 million of them).
        "many-caps" => m.judge = 100_000,
        // Repeats fold into one of each.
        "dup-caps" => {
            m.judge = 3;
            m.search = 2;
        }
        _ => {}
    }
    m
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

pub fn one(mode: &str, config: &str, s: &Input) -> Probe {
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
        // Finite but absurd: a GRPO group mean of two of them is infinite.
        "huge-score" => ok(1e308),
        "neg-huge-score" => ok(-1e308),
        // Blocks inside a WASI poll, where epoch interruption cannot reach.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            ok(1.0)
        }
        // Short sleeps within the deadline are fine...
        "sleep-short" => {
            std::thread::sleep(std::time::Duration::from_millis(number(config, "ms", 10)));
            ok(2.0)
        }
        // ...but not a loop of them past it.
        "sleep-loop" => loop {
            std::thread::sleep(std::time::Duration::from_millis(20));
        },
        // Spins most of the deadline, then traps: bisection must not multiply the deadline.
        "spin-then-panic" => {
            let t = std::time::Instant::now();
            let spin = std::time::Duration::from_millis(number(config, "spin_ms", 400));
            while t.elapsed() < spin {
                std::hint::black_box(&t);
            }
            panic!("hostile plugin panics after spinning")
        }
        // One quoted phrase of many words (issue 14: 300,000 words, 86 s in one search call).
        "search-phrase" => {
            let n = number(config, "words", 300_000);
            let mut q = String::from("\"");
            for i in 0..n {
                q.push_str(&format!("w{i} "));
            }
            q.push('"');
            let hits = crate::medrl::plugin::search::search(&q, 10)?;
            ok(hits.len() as f64)
        }
        "inf" => ok(f64::INFINITY),
        "guest-error" => Err(format!("cannot score sample `{}`", s.prompt)),
        // Under the output cap, but copied into every log line and row if kept whole.
        "long-error" => Err("e".repeat(1 << 20)),
        "not-applicable" => Ok(None),
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
        "judge" => crate::medrl::plugin::judge::judge_score(s.response).and_then(ok),
        "judge-unwrap" => ok(crate::medrl::plugin::judge::judge_score(s.response).unwrap()),
        "search" => {
            let hits = crate::medrl::plugin::search::search(s.response, 10)?;
            ok(hits.first().map(|h| h.score).unwrap_or(0.0))
        }
        "log" => {
            crate::medrl::plugin::host::log(
                crate::medrl::plugin::host::LogLevel::Info,
                &format!("scoring {}", s.prompt),
            );
            println!("stdout line from hostile plugin");
            eprintln!("stderr line from hostile plugin");
            ok(1.0)
        }
        other => Err(format!("unknown mode `{other}`")),
    }
}
