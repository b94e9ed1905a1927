//! Training a small byte-level BPE tokenizer (for tiny test and quickstart models).

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerImpl};

use super::TokenizerError;

/// The text medrl ships for training tiny tokenizers: short clinical notes, trial-design
/// questions and dialogue turns in English and Chinese.
pub const TINY_CORPUS: &str = include_str!("../../assets/tiny-corpus.txt");

/// Special tokens of the tiny models' ChatML template; the first is also the pad/eos token.
pub const CHATML_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Train a byte-level BPE (GPT-2/Qwen style: no prefix space, byte fallback through the
/// 256-symbol alphabet, so any UTF-8 text round-trips) with `vocab_size` entries.
pub fn train_bpe(corpus: &str, vocab_size: usize, specials: &[&str]) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let err = |e: tokenizers::Error| TokenizerError::Encode(format!("training BPE: {e}"));
    let byte_level = ByteLevel::new(false, true, true);
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials.iter().map(|s| AddedToken::from(s.to_string(), true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
        TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    tok.with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
    // Train line by line so sentences, not the whole file, are the unit of merging.
    let lines: Vec<&str> = corpus.lines().filter(|l| !l.trim().is_empty()).collect();
    tok.train(&mut trainer, lines.into_iter()).map_err(err)?;
    Ok(tokenizers::Tokenizer::from(tok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bpe_round_trips_english_and_chinese() {
        let tok = train_bpe(TINY_CORPUS, 600, &CHATML_SPECIALS).unwrap();
        assert!(tok.get_vocab_size(true) <= 600);
        for text in ["Child-Pugh class A, 3.2 cm.", "肝功能Child-Pugh A级", "unseen words: zygomatic 𝛼"] {
            let enc = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        }
        let enc = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(enc.get_ids()[0], tok.token_to_id("<|im_start|>").unwrap());
    }
}
