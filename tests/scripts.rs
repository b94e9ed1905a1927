//! The repository's shell scripts, run as a new user runs them (hermetic: fake tools on PATH).

use std::path::Path;
use std::process::Command;

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

fn cudarc_version() -> String {
    let lock = std::fs::read_to_string(repo().join("Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"cudarc\"" {
            return lines.next().unwrap().trim_start_matches("version = ").trim_matches('"').to_string();
        }
    }
    panic!("cudarc not in Cargo.lock");
}

/// A `cargo` on PATH that records its arguments and, for `fetch`, runs `on_fetch` (bash).
fn fake_cargo(dir: &Path, on_fetch: &str) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!("#!/usr/bin/env bash\necho \"$@\" >> \"{}\"\nif [ \"$1\" = fetch ]; then\n{on_fetch}\nfi\n", dir.join("cargo-calls").display());
    let p = bin.join("cargo");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn run_stub(dir: &Path, bin: &Path) -> std::process::Output {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .arg(repo().join("scripts/cuda-stub/libcuda-stub.sh"))
        .arg(dir.join("stub"))
        .env("CARGO_HOME", dir.join("cargo-home"))
        .env("PATH", path)
        .output()
        .unwrap()
}

/// Issue 13.3: on a fresh machine cudarc's sources are not in the registry; the script must fall
/// back to `cargo fetch` (it used to exit 1 without a word under `pipefail` before reaching it).
#[test]
fn cuda_stub_fetches_cudarc_sources_on_a_fresh_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let ver = cudarc_version();
    let src = tmp.path().join(format!("cargo-home/registry/src/index.crates.io-0000/cudarc-{ver}/src/driver/sys"));
    let fns: String = (0..120).map(|i| format!("    pub fn cuFake{i}(x: u32) -> u32;\\n")).collect();
    let bin = fake_cargo(tmp.path(), &format!("mkdir -p '{}' && printf '{fns}' > '{}/mod.rs'", src.display(), src.display()));
    let out = run_stub(tmp.path(), &bin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "libcuda-stub.sh failed: {stderr}");
    assert!(stderr.contains("running cargo fetch"), "no fetch announced: {stderr}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("cargo-calls")).unwrap().trim(), "fetch -q");
    let names = std::fs::read_to_string(tmp.path().join("stub/symbols.txt")).unwrap();
    assert_eq!(names.lines().count(), 120);
    assert!(tmp.path().join("stub/libcuda.so.1").is_file());
    // Second run: sources present, nothing fetched, stub up to date.
    let out = run_stub(tmp.path(), &bin);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("up to date"));
    assert_eq!(std::fs::read_to_string(tmp.path().join("cargo-calls")).unwrap().lines().count(), 1);
}

/// When even `cargo fetch` cannot bring the sources, the script says so and fails.
#[test]
fn cuda_stub_fails_loudly_when_sources_stay_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_cargo(tmp.path(), "exit 0");
    let out = run_stub(tmp.path(), &bin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ERROR") && stderr.contains("cudarc-") && stderr.contains("after cargo fetch"), "{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let bin = fake_cargo(tmp.path(), "exit 101");
    let out = run_stub(tmp.path(), &bin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cargo fetch failed"), "{stderr}");
}
