//! `tokenizer`: trains the student's byte-level BPE on the cell's traces (run in the
//! `tracelab-student` worker), or adopts a user's `tokenizer.json`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

use super::train::{job, run_worker};
use super::{canonicalize, Artifact, ParamError, Step, StepContext, StepError};

/// Parameters of the `tokenizer` step (`[tokenizer]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerParams {
    /// Vocabulary size of the trained BPE, special tokens included.
    pub vocab_size: usize,
    /// A pair must occur this often to be merged.
    pub min_frequency: u64,
    /// A user's `tokenizer.json` (relative to the project root) instead of training one; the
    /// template's special tokens are added to it.
    pub path: Option<String>,
}

impl Default for TokenizerParams {
    fn default() -> Self {
        TokenizerParams {
            vocab_size: 2048,
            min_frequency: 2,
            path: None,
        }
    }
}

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
        canonicalize::<TokenizerParams>(params)
    }
    fn external_files(&self, params: &Value, _root: &Path) -> Result<Vec<PathBuf>, StepError> {
        Ok(params
            .get("path")
            .and_then(Value::as_str)
            .map(|p| vec![PathBuf::from(p)])
            .unwrap_or_default())
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
        let stats = run_worker(ctx, &job)?;
        for (k, v) in stats {
            ctx.stat(&k, v);
        }
        Ok(())
    }
}
