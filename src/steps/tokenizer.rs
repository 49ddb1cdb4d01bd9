//! `tokenizer`: trains the student's byte-level BPE on the cell's traces (run in the
//! `tracelab-student` worker), or adopts a user's `tokenizer.json`, or, for a `qwen3` student,
//! takes a Hugging Face checkpoint's `tokenizer.json` unchanged (`model_dir`).

use serde_json::Value;
use std::path::{Path, PathBuf};

use super::train::{job, run_worker};

use super::{canonicalize, Artifact, ParamError, Step, StepContext, StepError};
pub use tracelab_core::job::TokenizerParams;

/// The smallest BPE the worker can train: the 256 byte tokens of the byte-level alphabet plus
/// the chat template's 10 special tokens (`tracelab_student::tokenizer::SPECIAL_TOKENS`).
pub const MIN_VOCAB: usize = 256 + 10;

/// The `tokenizer` step.
pub struct TokenizerStep;

impl Step for TokenizerStep {
    fn kind(&self) -> &'static str {
        "tokenizer"
    }
    fn version(&self) -> u32 {
        super::train::WORKER_VERSION
    }
    fn about(&self) -> &'static str {
        "train a byte-level BPE on the traces (or load a tokenizer.json) for the student"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Tokenizer]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let canonical = canonicalize::<TokenizerParams>(params)?;
        if canonical["path"].is_string() && canonical["model_dir"].is_string() {
            return Err(ParamError {
                path: "model_dir".into(),
                message: "give either path (a tokenizer.json the template's tokens are added \
                          to) or model_dir (a checkpoint whose tokenizer is taken as is), not both"
                    .into(),
            });
        }
        let trains = canonical["path"].is_null() && canonical["model_dir"].is_null();
        let vocab = canonical["vocab_size"].as_u64().unwrap_or_default();
        if trains && vocab < MIN_VOCAB as u64 {
            return Err(ParamError {
                path: "vocab_size".into(),
                message: format!(
                    "must be at least {MIN_VOCAB} (256 byte tokens and the template's special \
                     tokens), got {vocab}"
                ),
            });
        }
        Ok(canonical)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: TokenizerParams = super::typed(params)?;
        if let Some(dir) = &p.model_dir {
            let file = Path::new(dir).join("tokenizer.json");
            if !root.join(&file).is_file() {
                return Err(StepError::MissingFile {
                    key: "model_dir".into(),
                    message: format!(
                        "{}: tokenizer.json not found (a Hugging Face checkpoint directory, \
                         relative to the project root {})",
                        root.join(dir).display(),
                        root.display()
                    ),
                });
            }
            return Ok(vec![file]);
        }
        Ok(p.path.map(|p| vec![PathBuf::from(p)]).unwrap_or_default())
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: TokenizerParams = super::typed(ctx.params)?;
        let out = ctx.output(Artifact::Tokenizer);
        let mut job = job(
            ctx,
            "tokenizer",
            &[("traces", Artifact::Traces), ("tools", Artifact::Tools)],
            &out,
        )?;
        if let Some(path) = &p.path {
            job.inputs
                .insert("user_tokenizer".into(), ctx.resolve(path));
        }
        if let Some(dir) = &p.model_dir {
            job.inputs.insert(
                "checkpoint_tokenizer".into(),
                ctx.resolve(dir).join("tokenizer.json"),
            );
        }
        let stats = run_worker(ctx, &job)?;
        for (k, v) in stats {
            ctx.stat(&k, v);
        }
        Ok(())
    }
}
