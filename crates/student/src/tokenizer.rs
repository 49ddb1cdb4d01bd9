//! The student's tokenizer: a byte-level BPE trained on the rendered training corpus, or a user's
//! `tokenizer.json`, always extended with the chat template's special tokens.
//!
//! Byte-level BPE (GPT-2 pre-tokenization, no added prefix space) keeps every string
//! representable. The chat template renders every message text and every argument value with one
//! leading space, so a name is the same tokens (" San", " Jose") in an utterance, a tool result and
//! an argument: the copy head can copy it token for token.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// The template's special tokens, in id order for a trained tokenizer.
pub const SPECIAL_TOKENS: &[&str] = &[
    "<|pad|>",
    "<|tools|>",
    "<|fn|>",
    "<|system|>",
    "<|user|>",
    "<|call|>",
    "<|arg|>",
    "<|val|>",
    "<|end|>",
    "<|result|>",
];

/// Errors building or loading a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizers library failed.
    #[error("{context}: {message}")]
    Library {
        /// What was being done.
        context: String,
        /// The library's message.
        message: String,
    },
}

fn lib_err(context: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> TokenizerError {
    let context = context.into();
    move |e| TokenizerError::Library {
        context,
        message: e.to_string(),
    }
}

/// Trains a byte-level BPE of `vocab_size` tokens (special tokens included) on `texts`.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
) -> Result<Tokenizer, TokenizerError> {
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tk = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None::<tokenizers::NormalizerWrapper>)
        .with_pre_tokenizer(Some(tokenizers::PreTokenizerWrapper::ByteLevel(byte_level)))
        .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
        .with_decoder(Some(tokenizers::DecoderWrapper::ByteLevel(byte_level)))
        .build()
        .map_err(lib_err("building the tokenizer"))?;
    tk.train(&mut trainer, texts.iter())
        .map_err(lib_err("training the BPE"))?;
    let mut tok = Tokenizer::from(tk);
    ensure_specials(&mut tok);
    Ok(tok)
}

/// Loads a `tokenizer.json` and adds the template's special tokens it lacks.
pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let mut tok =
        Tokenizer::from_file(path).map_err(lib_err(format!("loading {}", path.display())))?;
    ensure_specials(&mut tok);
    Ok(tok)
}

/// Saves a tokenizer as `tokenizer.json`.
pub fn save(tok: &Tokenizer, path: &Path) -> Result<(), TokenizerError> {
    tok.save(path, false)
        .map_err(lib_err(format!("writing {}", path.display())))
}

fn ensure_specials(tok: &mut Tokenizer) {
    let missing: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .filter(|s| tok.token_to_id(s).is_none())
        .map(|s| AddedToken::from(*s, true))
        .collect();
    if !missing.is_empty() {
        tok.add_special_tokens(&missing);
    }
}
