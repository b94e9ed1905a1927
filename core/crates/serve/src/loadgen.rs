//! A load generator for OpenAI-compatible servers: many concurrent chat requests, streamed or
//! not, with time to first token, latency and throughput. `medrl bench serve` and the load
//! tests use it; it talks plain HTTP/1 over hyper (one connection per request, as benchmark
//! clients do) and depends on nothing else of medrl.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};

use crate::ServeError;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// `http://host:port`, with or without a trailing `/v1`.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// User messages, used round-robin.
    pub prompts: Vec<String>,
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub max_tokens: usize,
    pub temperature: f64,
    pub seed: Option<i64>,
    pub stream: bool,
    /// vLLM's extension: generate `max_tokens` whatever the model says (benchmarks).
    pub ignore_eos: bool,
    /// Streamed requests whose index is a multiple of this hang up after their first content
    /// chunk (to test that the server frees their sequences).
    pub disconnect_every: Option<usize>,
    pub timeout: Duration,
}

/// One request's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub index: usize,
    pub prompt: usize,
    pub status: u16,
    pub text: String,
    pub finish_reason: Option<String>,
    pub completion_tokens: usize,
    pub ttft_s: Option<f64>,
    pub latency_s: f64,
    pub disconnected: bool,
    pub error: Option<String>,
}

/// The run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub requests: usize,
    pub concurrency: usize,
    pub ok: usize,
    pub failed: usize,
    pub disconnected: usize,
    pub completion_tokens: usize,
    pub wall_s: f64,
    pub output_tokens_per_s: f64,
    pub latency_p50_s: f64,
    pub latency_p99_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
}

/// (host:port, path prefix) of a base URL.
fn split_url(url: &str) -> Result<(String, String), ServeError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ServeError::Client(format!("{url}: only http:// URLs are supported")))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, String::new()));
    let path = path.trim_end_matches('/').trim_end_matches("/v1").to_string();
    if host.is_empty() {
        return Err(ServeError::Client(format!("{url}: no host")));
    }
    Ok((host.to_string(), path))
}

/// The `q`-quantile (nearest rank) of `v`.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Run the load on a fresh runtime; outcomes come back in request order.
pub fn run(spec: &LoadSpec) -> Result<(LoadReport, Vec<Outcome>), ServeError> {
    if spec.prompts.is_empty() || spec.concurrency == 0 {
        return Err(ServeError::Client("need at least one prompt and a concurrency of at least 1".into()));
    }
    let (host, prefix) = split_url(&spec.url)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ServeError::Io)?;
    rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(spec.concurrency));
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(spec.requests);
        for i in 0..spec.requests {
            let permit = sem.clone().acquire_owned().await.map_err(|e| ServeError::Client(e.to_string()))?;
            let (spec, host, prefix) = (spec.clone(), host.clone(), prefix.clone());
            tasks.push(tokio::spawn(async move {
                let out = one(&spec, &host, &prefix, i).await;
                drop(permit);
                out
            }));
        }
        let mut outcomes = Vec::with_capacity(tasks.len());
        for t in tasks {
            outcomes.push(t.await.map_err(|e| ServeError::Client(e.to_string()))?);
        }
        let wall = t0.elapsed().as_secs_f64();
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none() && !o.disconnected).collect();
        let completion_tokens: usize = outcomes.iter().map(|o| o.completion_tokens).sum();
        let mut lat: Vec<f64> = ok.iter().map(|o| o.latency_s).collect();
        let mut ttft: Vec<f64> = ok.iter().filter_map(|o| o.ttft_s).collect();
        let report = LoadReport {
            requests: spec.requests,
            concurrency: spec.concurrency,
            ok: ok.len(),
            failed: outcomes.iter().filter(|o| o.error.is_some()).count(),
            disconnected: outcomes.iter().filter(|o| o.disconnected).count(),
            completion_tokens,
            wall_s: wall,
            output_tokens_per_s: completion_tokens as f64 / wall,
            latency_p50_s: quantile(&mut lat, 0.5),
            latency_p99_s: quantile(&mut lat, 0.99),
            ttft_p50_s: quantile(&mut ttft, 0.5),
            ttft_p99_s: quantile(&mut ttft, 0.99),
        };
        Ok((report, outcomes))
    })
}

async fn one(spec: &LoadSpec, host: &str, prefix: &str, index: usize) -> Outcome {
    let prompt = index % spec.prompts.len();
    let mut out = Outcome { index, prompt, status: 0, text: String::new(), finish_reason: None, completion_tokens: 0, ttft_s: None, latency_s: 0.0, disconnected: false, error: None };
    let t0 = Instant::now();
    let hang_up = spec.stream && spec.disconnect_every.is_some_and(|k| k > 0 && index % k == 0);
    let r = tokio::time::timeout(spec.timeout, exchange(spec, host, prefix, prompt, hang_up, t0, &mut out)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => out.error = Some(e),
        Err(_) => out.error = Some(format!("no complete answer within {:?}", spec.timeout)),
    }
    out.latency_s = t0.elapsed().as_secs_f64();
    out
}

async fn exchange(spec: &LoadSpec, host: &str, prefix: &str, prompt: usize, hang_up: bool, t0: Instant, out: &mut Outcome) -> Result<(), String> {
    let mut body = json!({
        "model": spec.model,
        "messages": [{"role": "user", "content": spec.prompts[prompt]}],
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "stream": spec.stream,
    });
    if spec.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(s) = spec.seed {
        body["seed"] = json!(s);
    }
    if spec.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    let stream = tokio::net::TcpStream::connect(host).await.map_err(|e| format!("connect {host}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let mut req = Request::post(format!("{prefix}/v1/chat/completions")).header("host", host).header("content-type", "application/json");
    if let Some(k) = &spec.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    out.status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut buf = Vec::<u8>::new();
    let result = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            let Some(data) = frame.data_ref() else { continue };
            buf.extend_from_slice(data);
            if !spec.stream || out.status != 200 {
                continue;
            }
            // Server-sent events: `data: {...}` blocks separated by a blank line.
            while let Some(end) = find(&buf, b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let line = String::from_utf8_lossy(&block);
                let Some(data) = line.trim().strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    return Ok(());
                }
                let v: Value = serde_json::from_str(data).map_err(|e| format!("bad event {data}: {e}"))?;
                if let Some(e) = v.get("error") {
                    return Err(format!("error event: {e}"));
                }
                if let Some(u) = v.get("usage").and_then(|u| u.get("completion_tokens")).and_then(Value::as_u64) {
                    out.completion_tokens = u as usize;
                }
                for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
                    // Every chunk after the role's carries a token (its text may be held back).
                    if c.pointer("/delta/role").is_none() {
                        out.ttft_s.get_or_insert(t0.elapsed().as_secs_f64());
                    }
                    if let Some(t) = c.pointer("/delta/content").and_then(Value::as_str) {
                        if !t.is_empty() {
                            out.text.push_str(t);
                            if hang_up {
                                out.disconnected = true;
                                return Ok(());
                            }
                        }
                    }
                    if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                        out.finish_reason = Some(f.to_string());
                    }
                }
            }
        }
        if spec.stream && out.status == 200 {
            return Err("the stream ended without [DONE]".into());
        }
        Ok(())
    }
    .await;
    if out.disconnected {
        // Hang up: closing the socket is what a client that goes away does.
        drop(body);
        conn.abort();
        return Ok(());
    }
    result?;
    if out.status != 200 {
        return Err(format!("HTTP {}: {}", out.status, String::from_utf8_lossy(&buf)));
    }
    if !spec.stream {
        let v: Value = serde_json::from_slice(&buf).map_err(|e| format!("bad response: {e}"))?;
        out.text = v.pointer("/choices/0/message/content").and_then(Value::as_str).unwrap_or_default().to_string();
        out.finish_reason = v.pointer("/choices/0/finish_reason").and_then(Value::as_str).map(String::from);
        out.completion_tokens = v.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
        out.ttft_s = Some(t0.elapsed().as_secs_f64());
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_quantiles() {
        assert_eq!(split_url("http://127.0.0.1:8000").unwrap(), ("127.0.0.1:8000".into(), "".into()));
        assert_eq!(split_url("http://h:1/v1/").unwrap(), ("h:1".into(), "".into()));
        assert_eq!(split_url("http://h:1/proxy/v1").unwrap(), ("h:1".into(), "/proxy".into()));
        assert!(split_url("https://h").is_err());
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), 2.0);
        assert_eq!(quantile(&mut v, 0.99), 4.0);
    }
}
