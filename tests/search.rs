//! Study search backends (core/crates/search): the tantivy index (build, atomicity, ranking,
//! hostile queries), the PubMed E-utilities client against a local mock server (no test here
//! reaches NCBI), task grants, the `medrl index` / `medrl reward score` command lines, and the
//! study-search reward plugin scored end to end through both backends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use medrl::plugin::*;
use medrl::search::{self, BuildOptions, PubMed, PubMedConfig, SearchError, StudyIndex};
use medrl::task::{validate::example_sample, Split, Task};
use serde_json::{json, Value};

mod common;
use common::{repo, wasm};

fn write_jsonl(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn studies(rows: &[(&str, &str, &str)]) -> Vec<Value> {
    rows.iter().map(|(id, t, a)| json!({"pmid": id, "title": t, "abstract": a})).collect()
}

/// Entries of `dir` other than `keep` (leftover temporary folders of a build).
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| !keep.contains(&n.as_str())).collect()
}

fn ids(hits: &[SearchHit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

const SMALL: &[(&str, &str, &str)] = &[
    ("1", "Metformin versus placebo in type 2 diabetes", "Adults with type 2 diabetes received metformin; HbA1c fell."),
    ("2", "Exercise for knee osteoarthritis", "Supervised exercise reduced pain. Metformin was not studied."),
    ("3", "Aspirin after myocardial infarction", "Aspirin reduced reinfarction in adults."),
    ("4", "Insulin glargine in type 1 diabetes", "Continuous glucose monitoring and insulin dosing in type 1 diabetes."),
    ("5", "Vitamin D and fractures", "Older adults with vitamin D supplementation had fewer fractures."),
];

#[test]
fn builds_opens_and_ranks() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus.jsonl");
    write_jsonl(&corpus, &studies(SMALL));
    let out = d.path().join("idx");
    let r = search::build(&corpus, &out, &BuildOptions::default()).unwrap();
    assert_eq!(r.manifest.documents, 5);
    assert!(r.skipped.is_empty());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(out.join("medrl-index.json")).unwrap()).unwrap();
    assert_eq!(m["documents"], 5);
    assert_eq!(m["schema_version"], search::index::SCHEMA_VERSION);
    assert_eq!(m["corpus_sha256"].as_str().unwrap(), search::corpus::file_sha256(&corpus).unwrap());
    assert_eq!(m["medrl_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(others(d.path(), &["corpus.jsonl", "idx"]), Vec::<String>::new());

    let idx = StudyIndex::open(&out).unwrap();
    // Title and abstract match beats abstract only (study 2 mentions metformin in passing).
    let hits = idx.search("metformin", 10).unwrap();
    assert_eq!(ids(&hits), ["1", "2"]);
    assert!(hits[0].score > hits[1].score);
    // Implicit AND, stemming (diabetes/diabetic), phrases, field tags.
    assert_eq!(ids(&idx.search("diabetic adults", 10).unwrap()), ["1"]);
    assert_eq!(ids(&idx.search("\"type 1 diabetes\"", 10).unwrap()), ["4"]);
    assert_eq!(ids(&idx.search("diabetes NOT insulin", 10).unwrap()), ["1"]);
    assert_eq!(ids(&idx.search("(aspirin OR exercise) AND adults", 10).unwrap()), ["3"]);
    assert_eq!(ids(&idx.search("metformin[ti]", 10).unwrap()), ["1"]);
    assert_eq!(ids(&idx.search("metformin[ab]", 10).unwrap()).len(), 2);
    assert_eq!(ids(&idx.search("metformin[tiab]", 10).unwrap()).len(), 2);
    // top_k cuts; no match is no hits, not an error.
    assert_eq!(idx.search("diabetes", 1).unwrap().len(), 1);
    assert!(idx.search("pancreatitis", 10).unwrap().is_empty());

    // The in-memory index of the same corpus ranks identically, with the same scores.
    let mem = StudyIndex::from_corpus(&corpus).unwrap();
    for q in ["metformin", "diabetes adults", "type 1 OR aspirin", "\"vitamin d\""] {
        assert_eq!(mem.search(q, 10).unwrap(), idx.search(q, 10).unwrap(), "{q}");
    }
}

/// BM25 as tantivy computes it (k1 = 1.2, b = 0.75), by hand.
fn bm25(tf: f64, dl: f64, avgdl: f64, n_docs: f64, df: f64) -> f64 {
    let idf = (1.0 + (n_docs - df + 0.5) / (df + 0.5)).ln();
    idf * (1.0 + 1.2) * tf / (tf + 1.2 * (1.0 - 0.75 + 0.75 * dl / avgdl))
}

#[test]
fn bm25_scores_match_a_hand_computation() {
    // Abstract-only documents of words the analyzer keeps as they are.
    let rows = [("a", "", "zinc zinc cold"), ("b", "", "zinc cold cough fever"), ("c", "", "cold cough"), ("d", "", "fever rash")];
    let idx = StudyIndex::in_memory(&rows.iter().map(|(p, t, a)| search::Study { pmid: p.to_string(), title: t.to_string(), abstract_text: a.to_string() }).collect::<Vec<_>>()).unwrap();
    let avgdl = 11.0 / 4.0;
    let hits = idx.search("zinc", 10).unwrap();
    assert_eq!(ids(&hits), ["a", "b"]);
    let want = [bm25(2.0, 3.0, avgdl, 4.0, 2.0), bm25(1.0, 4.0, avgdl, 4.0, 2.0)];
    for (h, w) in hits.iter().zip(want) {
        assert!((h.score - w).abs() < 1e-5 * w, "{h:?} vs {w}");
    }
    // AND sums the terms' scores.
    let hits = idx.search("cold cough", 10).unwrap();
    assert_eq!(ids(&hits), ["c", "b"]);
    let c = bm25(1.0, 2.0, avgdl, 4.0, 3.0) + bm25(1.0, 2.0, avgdl, 4.0, 2.0);
    assert!((hits[0].score - c).abs() < 1e-5 * c, "{} vs {c}", hits[0].score);

    // A title match weighs TITLE_BOOST times its BM25 in the title field.
    let rows = [("t", "zinc", "cold"), ("u", "cold", "zinc")];
    let idx = StudyIndex::in_memory(&rows.iter().map(|(p, t, a)| search::Study { pmid: p.to_string(), title: t.to_string(), abstract_text: a.to_string() }).collect::<Vec<_>>()).unwrap();
    let hits = idx.search("zinc", 10).unwrap();
    assert_eq!(ids(&hits), ["t", "u"]);
    let one = bm25(1.0, 1.0, 1.0, 2.0, 1.0);
    assert!((hits[0].score - search::index::TITLE_BOOST as f64 * one).abs() < 1e-5, "{hits:?}");
    assert!((hits[1].score - one).abs() < 1e-5, "{hits:?}");
}

#[test]
fn equal_scores_are_ordered_by_pmid_at_any_cut() {
    // Identical documents tie; the cut at top_k must keep the smallest pmids.
    let rows: Vec<search::Study> = ["9", "3", "7", "1", "5", "10", "2"].iter().map(|p| search::Study { pmid: p.to_string(), title: "zinc".into(), abstract_text: "cold".into() }).collect();
    let idx = StudyIndex::in_memory(&rows).unwrap();
    let all = idx.search("zinc", 10).unwrap();
    assert_eq!(ids(&all), ["1", "10", "2", "3", "5", "7", "9"]);
    for k in 1..=7 {
        assert_eq!(ids(&idx.search("zinc", k).unwrap()), ids(&all[..k as usize]), "top {k}");
    }
}

#[test]
fn hostile_queries_never_error_except_empty() {
    let idx = StudyIndex::in_memory(&[
        search::Study { pmid: "1".into(), title: "Aspirin trial".into(), abstract_text: "心力衰竭 患者".into() },
        search::Study { pmid: "2".into(), title: "title".into(), abstract_text: "AND OR".into() },
    ])
    .unwrap();
    let long = "aspirin ".repeat(1250);
    let chaos: String = (0..10_000).map(|i| ['(', ')', '"', '[', ']', 'x', ' ', ':', '*', 'é', '\\', '^', '~'][i % 13]).collect();
    let queries = [
        "\"", "(((", ")))", "AND OR", "NOT", "title:", "title:aspirin", "abstract:(", "[tiab]", "aspirin[", "\"aspirin", "*", "?", "\\", "a^2", "+aspirin -trial",
        "aspirin~2", "[1 TO 5]", "{x}", "心力衰竭", "心力衰竭 患者", "🙂", "\u{0}", "AND", "OR aspirin", "aspirin NOT", long.as_str(), chaos.as_str(),
    ];
    for q in queries {
        let r = idx.search(q, 10);
        assert!(r.is_ok(), "{:?}: {r:?}", q.chars().take(40).collect::<String>());
    }
    assert_eq!(ids(&idx.search("title:aspirin", 10).unwrap()), ["1"]);
    assert_eq!(ids(&idx.search("心力衰竭", 10).unwrap()), ["1"]);
    assert_eq!(ids(&idx.search(&long, 10).unwrap()), ["1"]);
    for q in ["", "   ", "\n\t"] {
        assert_eq!(idx.search(q, 10).unwrap_err(), "empty query");
    }
    assert!(matches!(idx.search_studies("", 5), Err(SearchError::EmptyQuery)));
}

#[test]
fn bad_rows_are_reported_with_file_and_row() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("c.jsonl");
    std::fs::write(
        &corpus,
        "{\"pmid\": \"1\", \"title\": \"Aspirin\"}\n\n{\"title\": \"no id\"}\nnot json\n{\"pmid\": \"1\", \"title\": \"again\"}\n{\"id\": 5, \"text\": \"old layout\"}\n{\"pmid\": \"6\", \"title\": 7}\n",
    )
    .unwrap();
    let out = d.path().join("idx");
    let e = search::build(&corpus, &out, &BuildOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SearchError::BadRow { .. }) && msg.contains("c.jsonl row 3") && msg.contains("pmid"), "{msg}");
    assert!(!out.exists());
    assert_eq!(others(d.path(), &["c.jsonl"]), Vec::<String>::new());

    let r = search::build(&corpus, &out, &BuildOptions { skip_bad_rows: true, ..Default::default() }).unwrap();
    let rows: Vec<usize> = r.skipped.iter().map(|(o, _)| o.row).collect();
    assert_eq!(rows, [3, 4, 5, 7]);
    assert!(r.skipped[2].1.contains("duplicate") && r.skipped[2].1.contains("row 1"), "{:?}", r.skipped);
    assert_eq!(r.manifest.documents, 2);
    assert_eq!(r.manifest.skipped_rows, 4);
    let idx = StudyIndex::open(&out).unwrap();
    assert_eq!(ids(&idx.search("layout", 5).unwrap()), ["5"]);

    // A corpus with no usable row is an error even when skipping.
    std::fs::write(&corpus, "{\"x\": 1}\n").unwrap();
    let e = search::build(&corpus, &d.path().join("idx2"), &BuildOptions { skip_bad_rows: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("no usable study"), "{e}");
    // Parquet needs a real file; an unsupported extension names itself.
    let e = search::build(&d.path().join("c.csv"), &d.path().join("idx3"), &BuildOptions::default()).unwrap_err();
    assert!(e.to_string().contains("c.csv"), "{e}");
}

#[test]
fn builds_are_atomic_and_force_is_careful() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.jsonl");
    write_jsonl(&good, &studies(SMALL));
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"pmid\": \"x\", \"title\": \"Zinc\"}\n{\"pmid\": \"y\"}\n").unwrap();
    let out = d.path().join("idx");
    search::build(&good, &out, &BuildOptions::default()).unwrap();

    // Without --force an existing index is kept.
    assert!(matches!(search::build(&good, &out, &BuildOptions::default()), Err(SearchError::Exists { .. })));
    // A failing rebuild with --force leaves the old index intact and no temporary folder.
    let e = search::build(&bad, &out, &BuildOptions { force: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("bad.jsonl row 2"), "{e}");
    assert_eq!(others(d.path(), &["good.jsonl", "bad.jsonl", "idx"]), Vec::<String>::new());
    let idx = StudyIndex::open(&out).unwrap();
    assert_eq!(idx.num_docs(), 5);
    assert_eq!(ids(&idx.search("aspirin", 5).unwrap()), ["3"]);
    drop(idx);
    // A successful forced rebuild replaces it.
    let r = search::build(&bad, &out, &BuildOptions { force: true, skip_bad_rows: true, progress: false }).unwrap();
    assert_eq!(r.manifest.documents, 1);
    assert_eq!(ids(&StudyIndex::open(&out).unwrap().search("zinc", 5).unwrap()), ["x"]);
    assert_eq!(others(d.path(), &["good.jsonl", "bad.jsonl", "idx"]), Vec::<String>::new());

    // --force never replaces a folder that is not an index.
    let mine = d.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let e = search::build(&good, &mine, &BuildOptions { force: true, ..Default::default() }).unwrap_err();
    assert!(matches!(e, SearchError::NotAnIndex { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "keep");
}

#[test]
fn foreign_and_stale_folders_give_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let e = StudyIndex::open(d.path()).err().unwrap();
    assert!(matches!(e, SearchError::NotAnIndex { .. }) && e.to_string().contains("medrl-index.json"), "{e}");
    let e = StudyIndex::open(&d.path().join("missing")).err().unwrap();
    assert!(e.to_string().contains("no such folder"), "{e}");

    let corpus = d.path().join("c.jsonl");
    write_jsonl(&corpus, &studies(SMALL));
    let out = d.path().join("idx");
    search::build(&corpus, &out, &BuildOptions::default()).unwrap();
    // A changed corpus is noticed (a warning when the index is opened).
    let m = search::index::read_manifest(&out).unwrap();
    assert_eq!(search::index::corpus_changed(&m), Some(false));
    std::fs::write(&corpus, "{\"pmid\": 1, \"title\": \"changed\"}\n").unwrap();
    assert_eq!(search::index::corpus_changed(&m), Some(true));
    assert!(StudyIndex::open(&out).is_ok());
    std::fs::remove_file(&corpus).unwrap();
    assert_eq!(search::index::corpus_changed(&m), None);
    let mf = out.join("medrl-index.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&mf).unwrap()).unwrap();
    m["schema_version"] = json!(0);
    std::fs::write(&mf, m.to_string()).unwrap();
    let e = StudyIndex::open(&out).err().unwrap();
    assert!(matches!(e, SearchError::Incompatible { .. }) && e.to_string().contains("rebuild"), "{e}");
    m["schema_version"] = json!(search::index::SCHEMA_VERSION);
    m["documents"] = json!(6);
    std::fs::write(&mf, m.to_string()).unwrap();
    let e = StudyIndex::open(&out).err().unwrap();
    assert!(e.to_string().contains("holds 5 documents"), "{e}");
    std::fs::write(&mf, "{}").unwrap();
    assert!(matches!(StudyIndex::open(&out), Err(SearchError::NotAnIndex { .. })));
}

// ---- PubMed E-utilities against a local mock server ----

struct Req {
    method: String,
    path: String,
    params: HashMap<String, String>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    }).collect()
}

enum Reply {
    Status(u16, &'static str, &'static str),
    Hang(Duration),
}

/// Serves `replies` in order, one connection each, recording every request.
fn mock(replies: Vec<Reply>) -> (String, Arc<Mutex<Vec<Req>>>, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/entrez/eutils", l.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let h = std::thread::spawn(move || {
        for reply in replies {
            let (mut s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let mut params = form(query);
            params.extend(form(&String::from_utf8(body).unwrap()));
            log2.lock().unwrap().push(Req { method, path: path.to_string(), params });
            match reply {
                Reply::Status(code, extra, body) => {
                    let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}", body.len());
                }
                // Hold the connection without answering, and go on serving the retries.
                Reply::Hang(d) => drop(std::thread::spawn(move || {
                    std::thread::sleep(d);
                    drop(s);
                })),
            }
        }
    });
    (base, log, h)
}

const ESEARCH_OK: &str = r#"{"header":{"type":"esearch","version":"0.3"},"esearchresult":{"count":"3","retmax":"3","retstart":"0","idlist":["39000001","38000002","37000003"],"translationset":[],"querytranslation":"x"}}"#;

fn client(base: &str) -> PubMed {
    PubMed::new(PubMedConfig { base_url: base.into(), email: Some("me@example.org".into()), api_key: Some("KEY".into()), backoff: Duration::from_millis(10), requests_per_second: Some(1000.0), timeout: Duration::from_millis(500), ..Default::default() })
}

#[test]
fn pubmed_sends_esearch_params_and_ranks_by_order() {
    let (base, log, h) = mock(vec![Reply::Status(200, "", ESEARCH_OK)]);
    let q = "(\"heart failure\"[tiab] OR HF) AND sglt2* & 心 = x";
    let hits = client(&base).search(q, 3).unwrap();
    h.join().unwrap();
    assert_eq!(ids(&hits), ["39000001", "38000002", "37000003"]);
    assert_eq!(hits.iter().map(|h| h.score).collect::<Vec<_>>(), [1.0, 0.5, 1.0 / 3.0]);
    let log = log.lock().unwrap();
    let r = &log[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/entrez/eutils/esearch.fcgi"));
    let p = &r.params;
    for (k, v) in [("db", "pubmed"), ("term", q), ("retmax", "3"), ("retmode", "json"), ("sort", "relevance"), ("email", "me@example.org"), ("api_key", "KEY"), ("tool", "medrl")] {
        assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}: {p:?}");
    }
}

#[test]
fn pubmed_retries_429_and_5xx_but_not_400() {
    let (base, log, h) = mock(vec![
        Reply::Status(429, "Retry-After: 0\r\n", r#"{"error":"API rate limit exceeded"}"#),
        Reply::Status(503, "", "busy"),
        Reply::Status(200, "", ESEARCH_OK),
        Reply::Status(400, "", r#"{"error":"bad"}"#),
    ]);
    let c = client(&base);
    assert_eq!(ids(&c.search("aspirin", 2).unwrap()), ["39000001", "38000002", "37000003"][..3].to_vec());
    assert_eq!(log.lock().unwrap().len(), 3);
    let e = c.search("aspirin", 2).unwrap_err();
    h.join().unwrap();
    assert!(e.contains("HTTP 400") && e.contains("1 attempt"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 4);
    assert_eq!(c.search("  ", 2).unwrap_err(), "empty query");
}

#[test]
fn pubmed_gives_up_after_retries_and_times_out() {
    let (base, log, h) = mock(vec![Reply::Hang(Duration::from_secs(3)), Reply::Status(500, "", "x"), Reply::Status(500, "", "x")]);
    let c = PubMed::new(PubMedConfig { base_url: base, max_retries: 2, backoff: Duration::from_millis(5), timeout: Duration::from_millis(300), requests_per_second: Some(1000.0), ..Default::default() });
    let t = Instant::now();
    let e = c.search("aspirin", 5).unwrap_err();
    assert!(e.contains("HTTP 500") && e.contains("3 attempt"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(log.lock().unwrap().len(), 3);
    h.join().unwrap();
    // An API error inside a 200 answer is an error, not an empty result.
    let (base, _, h) = mock(vec![Reply::Status(200, "", r#"{"esearchresult":{"ERROR":"Invalid query syntax"}}"#)]);
    let e = client(&base).search("x", 5).unwrap_err();
    h.join().unwrap();
    assert!(e.contains("Invalid query syntax"), "{e}");
}

#[test]
fn pubmed_respects_the_rate_limit() {
    let (base, log, h) = mock((0..4).map(|_| Reply::Status(200, "", ESEARCH_OK)).collect());
    // No API key: NCBI's 3 requests per second, shared by every client of the same server.
    let clients = [PubMed::new(PubMedConfig { base_url: base.clone(), ..Default::default() }), PubMed::new(PubMedConfig { base_url: base, ..Default::default() })];
    let t = Instant::now();
    for i in 0..4 {
        clients[i % 2].search("aspirin", 3).unwrap();
    }
    h.join().unwrap();
    assert!(t.elapsed() >= Duration::from_millis(990), "{:?}", t.elapsed());
    assert!(log.lock().unwrap().iter().all(|r| !r.params.contains_key("api_key")));
}

// ---- Task grants ----

#[test]
fn task_search_grants() {
    let d = tempfile::tempdir().unwrap();
    let t = d.path().join("demo");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("test.jsonl"), "{\"prompt\": \"q\", \"reward_model\": {\"ground_truth\": {}}}\n").unwrap();
    write_jsonl(&t.join("corpus.jsonl"), &studies(SMALL));
    let yaml = |grant: &str| format!("name: demo\ndata:\n  test: {{path: test.jsonl, formatting: verl}}\nrewards:\n  - plugin: study-search\n    grants:\n      search: {grant}\n");
    let load = |grant: &str| {
        std::fs::write(t.join("task.yaml"), yaml(grant)).unwrap();
        Task::load(&t)
    };
    let e = load("{corpus: corpus.jsonl, index: idx}").unwrap_err().to_string();
    assert!(e.contains("rewards[0].grants.search") && e.contains("exactly one"), "{e}");
    let e = load("{}").unwrap_err().to_string();
    assert!(e.contains("exactly one"), "{e}");
    let e = load("{corpsu: corpus.jsonl}").unwrap_err().to_string();
    assert!(e.contains("corpsu"), "{e}");
    let e = load("{pubmed: {email: ''}}").unwrap_err().to_string();
    assert!(e.contains("email"), "{e}");
    let e = load("{pubmed: {email: a@b.c, apikey: x}}").unwrap_err().to_string();
    assert!(e.contains("apikey"), "{e}");

    // corpus: indexed in memory; index: a prebuilt folder; both relative to the task.
    let spec = &load("{corpus: corpus.jsonl}").unwrap().reward_specs()[0];
    assert_eq!(spec.grants.search.as_ref().unwrap().corpus.as_deref(), Some(t.join("corpus.jsonl").as_path()));
    let s = spec.search_index().unwrap().unwrap();
    assert_eq!(ids(&s.search("aspirin", 5).unwrap()), ["3"]);
    search::build(&t.join("corpus.jsonl"), &t.join("idx"), &BuildOptions::default()).unwrap();
    let spec = &load("{index: idx}").unwrap().reward_specs()[0];
    let s = spec.search_index().unwrap().unwrap();
    assert_eq!(ids(&s.search("aspirin", 5).unwrap()), ["3"]);
    let spec = &load("{index: nowhere}").unwrap().reward_specs()[0];
    let e = spec.search_index().err().unwrap().to_string();
    assert!(e.contains("nowhere") && e.contains("not a medrl study index"), "{e}");
    // pubmed: a client (nothing is sent until a search).
    let (base, log, h) = mock(vec![Reply::Status(200, "", ESEARCH_OK)]);
    let spec = &load(&format!("{{pubmed: {{email: a@b.c, base_url: '{base}'}}}}")).unwrap().reward_specs()[0];
    let s = spec.search_index().unwrap().unwrap();
    assert_eq!(s.search("aspirin", 3).unwrap().len(), 3);
    h.join().unwrap();
    assert_eq!(log.lock().unwrap()[0].params["email"], "a@b.c");
}

// ---- The study-search plugin end to end ----

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(HostConfig { cache_dir: Some(cache_dir()), ..HostConfig::default() }).unwrap())
}

fn score_with(grants: Grants, config: &Value, samples: &[Sample]) -> Vec<(f64, HashMap<String, f64>)> {
    let p = host().load_reward(&wasm("study-search"), PluginOptions { grants, policy: FailurePolicy::Fail, ..PluginOptions::default() }).unwrap();
    p.score(config, samples)
        .unwrap()
        .into_iter()
        .map(|o| match o {
            Outcome::Scored { score, components } => (score, components.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            o => panic!("{o:?}"),
        })
        .collect()
}

#[test]
fn study_search_plugin_scores_the_bundled_task_with_tantivy() {
    let task = Task::load(repo().join("tasks/trialpanorama-study-search")).unwrap();
    let spec = &task.reward_specs()[0];
    let grants = Grants::none().with_search(spec.search_index().unwrap().expect("the task grants search"));
    let mut samples = Vec::new();
    let mut relevant = Vec::new();
    for split in Split::ALL {
        for (_, e) in task.examples(split).unwrap() {
            let reference = medrl::task::reference_answer(&e).unwrap().to_string();
            relevant.push(e.ground_truth["relevant_pmids"].as_array().unwrap().len());
            samples.push(example_sample(&e, &reference));
        }
    }
    assert!(samples.len() >= 20);
    // The reference queries find every relevant trial, ranked above everything else: at
    // top_k = |relevant| the recall is still 1.
    let out = score_with(grants.clone(), &spec.config, &samples);
    for (i, (score, c)) in out.iter().enumerate() {
        assert_eq!(c["recall"], 1.0, "sample {i}: {c:?}");
        assert!((score - 1.1).abs() < 1e-12);
    }
    for (s, n) in samples.iter().zip(&relevant) {
        let cfg = json!({"top_k": n});
        let (_, c) = &score_with(grants.clone(), &cfg, std::slice::from_ref(s))[0];
        assert_eq!(c["recall"], 1.0, "{}: {c:?}", s.response);
        assert_eq!(c["retrieved"], *n as f64, "{}: {c:?}", s.response);
    }
    // An off-topic query finds none of them; a bad format is penalized without searching.
    let mut off = samples[0].clone();
    off.response = "burnout intensive care nurses</answer>".into();
    let mut bad = samples[0].clone();
    bad.response = "<think>x</think>aspirin</answer>".into();
    let out = score_with(grants, &spec.config, &[off, bad]);
    assert_eq!((out[0].0, out[0].1["recall"], out[0].1["retrieved"]), (0.0, 0.0, 1.0));
    assert_eq!(out[1].0, -2.0);
}

#[test]
fn study_search_plugin_through_pubmed_mock() {
    let (base, log, h) = mock(vec![Reply::Status(200, "", ESEARCH_OK)]);
    let grants = Grants::none().with_search(Box::new(client(&base)));
    let s = sample("p <answer>", "sglt2 heart failure</answer>", &json!({"relevant_pmids": ["38000002", "1"]}), &Value::Null, "x");
    let out = score_with(grants, &json!({}), &[s]);
    h.join().unwrap();
    assert_eq!(out[0].1["recall"], 0.5);
    assert!((out[0].0 - 0.6).abs() < 1e-12);
    let log = log.lock().unwrap();
    assert_eq!(log[0].params["term"], "sglt2 heart failure");
    assert_eq!(log[0].params["retmax"], "100");
}

// ---- Command line ----

fn medrl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_medrl")).args(args).env("MEDRL_CACHE_DIR", cache_dir()).output().unwrap()
}

#[test]
fn cli_index_build_search_and_reward_score() {
    let d = tempfile::tempdir().unwrap();
    let corpus = repo().join("tasks/trialpanorama-study-search/corpus.jsonl");
    let out = d.path().join("idx");
    let o = medrl(&["index", "build", "--corpus", corpus.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("indexed 102 studies"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = medrl(&["index", "build", "--corpus", corpus.to_str().unwrap(), "--output", out.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--force"), "{}", String::from_utf8_lossy(&o.stderr));

    let o = medrl(&["index", "search", out.to_str().unwrap(), "sglt2 \"heart failure\"", "--top-k", "3", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hits: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h["title"].as_str().unwrap().contains("heart failure")), "{hits:?}");
    let o = medrl(&["index", "search", d.path().to_str().unwrap(), "x"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a medrl study index"));

    // reward score with a prebuilt index and with a corpus indexed in memory agree.
    let input = d.path().join("samples.jsonl");
    let task = Task::load(repo().join("tasks/trialpanorama-study-search")).unwrap();
    let rows: Vec<Value> = task
        .examples(Split::Test)
        .unwrap()
        .iter()
        .map(|(_, e)| json!({"prompt": "<answer>", "response": medrl::task::reference_answer(e).unwrap(), "ground_truth": e.ground_truth}))
        .collect();
    write_jsonl(&input, &rows);
    let plugin = wasm("study-search");
    let mut outs = Vec::new();
    for (flag, path) in [("--search-index", out.as_path()), ("--search-docs", corpus.as_path())] {
        let o = medrl(&["reward", "score", "--plugin", plugin.to_str().unwrap(), "--input", input.to_str().unwrap(), flag, path.to_str().unwrap()]);
        assert!(o.status.success(), "{flag}: {}", String::from_utf8_lossy(&o.stderr));
        let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), rows.len());
        assert!(lines.iter().all(|l| l["components"]["recall"] == 1.0), "{flag}: {lines:?}");
        outs.push(lines);
    }
    assert_eq!(outs[0], outs[1]);
}

#[test]
fn grpo_config_takes_a_search_grant() {
    let base = "model: m\noutput_dir: o\ndata: {train: [x]}\nrewards: [{plugin: p.wasm}]\n";
    let parse = |extra: &str| {
        let tree: serde_yaml::Value = serde_yaml::from_str(&format!("{base}{extra}")).unwrap();
        medrl::config::from_tree::<medrl::train::grpo::GrpoConfig>(tree, Path::new("grpo.yaml"))
    };
    let c = parse("search: {index: idx}\n").unwrap();
    assert_eq!(c.search.unwrap().index.as_deref(), Some(Path::new("idx")));
    assert!(parse("").unwrap().search.is_none());
    let e = parse("search: {index: idx, corpus: c.jsonl}\n").unwrap_err().to_string();
    assert!(e.contains("search") && e.contains("exactly one"), "{e}");
}

#[test]
fn parquet_corpora_with_integer_pmids() {
    let d = tempfile::tempdir().unwrap();
    let rows: Vec<Value> = SMALL.iter().map(|(id, t, a)| json!({"pmid": id.parse::<u64>().unwrap() + 30_000_000, "title": t, "abstract": a, "year": 2020})).collect();
    let corpus = d.path().join("c.parquet");
    medrl::data::write::write_parquet(&corpus, &rows).unwrap();
    let r = search::build(&corpus, &d.path().join("idx"), &BuildOptions::default()).unwrap();
    assert_eq!(r.manifest.documents, 5);
    let idx = StudyIndex::open(&d.path().join("idx")).unwrap();
    assert_eq!(ids(&idx.search("aspirin", 5).unwrap()), ["30000003"]);
}
