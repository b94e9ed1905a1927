//! The workspace's layering, checked from the sources (ARCHITECTURE.md, "Layers"):
//! - every medrl crate depends only on crates below it in [`LAYERS`] (Cargo already refuses a
//!   cycle between crates; this also refuses an upward edge that happens to be acyclic);
//! - inside each crate, the top-level modules import each other without a cycle;
//! - the heavy dependencies sit only in the crates that use them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom up. A crate may depend on any crate before it, never on one after it.
const LAYERS: &[&str] = &[
    "medrl-base",
    "medrl-nn",
    "medrl-lm",
    "medrl-data",
    "medrl-plugin",
    "medrl-search",
    "medrl-reward",
    "medrl-task",
    "medrl-eval",
    "medrl-train",
    "medrl-serve",
    "medrl",
];

/// Heavy dependencies and the only crates allowed to declare them.
const HEAVY: &[(&str, &[&str])] = &[
    ("wasmtime", &["medrl-plugin"]),
    ("wasmtime-wasi", &["medrl-plugin"]),
    ("wasmparser", &["medrl-plugin"]),
    ("tantivy", &["medrl-search"]),
    ("ureq", &["medrl-search", "medrl-eval"]),
    ("parquet", &["medrl-data"]),
    ("candle-core", &["medrl-nn", "medrl-lm", "medrl-data", "medrl-reward", "medrl-eval", "medrl-train", "medrl-serve", "medrl"]),
    ("anyhow", &["medrl"]),
    ("axum", &["medrl-serve"]),
    ("hyper", &["medrl-serve"]),
    ("tokio", &["medrl-plugin", "medrl-serve"]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// (package name, manifest dir) of every crate under core/: the binary and core/crates/*.
fn crates() -> Vec<(String, PathBuf)> {
    let mut dirs = vec![root()];
    let mut sub: Vec<PathBuf> = std::fs::read_dir(root().join("crates")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("Cargo.toml").is_file()).collect();
    sub.sort();
    dirs.extend(sub);
    dirs.into_iter().map(|d| (package_name(&d.join("Cargo.toml")), d)).collect()
}

fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    text.lines().find_map(|l| l.strip_prefix("name = \"").and_then(|r| r.strip_suffix('"'))).unwrap_or_else(|| panic!("{}: no package name", manifest.display())).to_string()
}

/// Names declared under `[dependencies]` (not dev-dependencies: tests may reach anywhere).
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_deps = l == "[dependencies]";
            continue;
        }
        if in_deps && !l.is_empty() && !l.starts_with('#') {
            let name = l.split(['=', '.', ' ']).next().unwrap().trim();
            out.push(name.to_string());
        }
    }
    out
}

#[test]
fn every_crate_is_in_a_layer_and_depends_only_downward() {
    let all = crates();
    let names: BTreeSet<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    for n in &names {
        assert!(LAYERS.contains(n), "crate {n} is not placed in LAYERS (tests/layering.rs and ARCHITECTURE.md)");
    }
    let mut violations = Vec::new();
    for (name, dir) in &all {
        let me = LAYERS.iter().position(|l| l == name).unwrap();
        for dep in dependencies(&dir.join("Cargo.toml")) {
            if let Some(at) = LAYERS.iter().position(|l| *l == dep) {
                if at >= me {
                    violations.push(format!("{name} depends on {dep}, which is not below it"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "upward crate dependencies:\n{}", violations.join("\n"));
}

#[test]
fn heavy_dependencies_stay_in_their_crates() {
    let mut violations = Vec::new();
    for (name, dir) in crates() {
        for dep in dependencies(&dir.join("Cargo.toml")) {
            if let Some((_, allowed)) = HEAVY.iter().find(|(h, _)| *h == dep) {
                if !allowed.contains(&name.as_str()) {
                    violations.push(format!("{name} declares {dep} (allowed only in {allowed:?})"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Module path of a source file relative to `src/` (`lib.rs` -> [], `a/b.rs` -> [a, b],
/// `a/mod.rs` -> [a]).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !["lib", "main", "mod"].contains(&stem) {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module -> top-level modules its non-test code names through `crate::` or `super::`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let path = module_path(src, &f);
        // The crate root declares and re-exports its modules: not an import.
        let Some(me) = path.first().cloned() else { continue };
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests may reach across modules.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let edges = graph.entry(me.clone()).or_default();
        for line in code.lines() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for (i, _) in l.match_indices("crate::") {
                if i > 0 && (l.as_bytes()[i - 1].is_ascii_alphanumeric() || l.as_bytes()[i - 1] == b'_') {
                    continue;
                }
                let target: String = l[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !target.is_empty() && target != me {
                    edges.insert(target);
                }
            }
            for (i, _) in l.match_indices("super::") {
                if i > 0 && (l.as_bytes()[i - 1].is_ascii_alphanumeric() || l.as_bytes()[i - 1] == b'_' || l.as_bytes()[i - 1] == b':') {
                    continue;
                }
                let mut rest = &l[i..];
                let mut up = 0;
                while let Some(r) = rest.strip_prefix("super::") {
                    up += 1;
                    rest = r;
                }
                // `super` from a file at depth d names a module at depth d - up; only a jump to
                // the crate root leaves this top-level module.
                if up < path.len() {
                    continue;
                }
                let target: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !target.is_empty() && target != me {
                    edges.insert(target);
                }
            }
        }
    }
    // Names that are items of the crate root rather than modules are not modules.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for e in graph.values_mut() {
        e.retain(|t| modules.contains(t));
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(n: &str, g: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_between_the_modules_of_a_crate() {
    let mut cycles = Vec::new();
    for (name, dir) in crates() {
        if let Some(c) = find_cycle(&module_graph(&dir.join("src"))) {
            cycles.push(format!("{name}: {}", c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&g).unwrap(), ["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert!(find_cycle(&g).is_none());
}
