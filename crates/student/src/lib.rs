//! The student: tokenizer, chat template, transformer with a copy head, training and
//! schema-constrained prediction in tch. Only this crate links libtorch; the orchestrator runs it
//! as the `tracelab-student` worker (see `src/main.rs` for the worker contract).
//!
//! Reading order: [`tokenizer`] → [`template`] (rendering, windows, the tools as token
//! sequences) → [`model`] → [`train`] → [`grammar`] (what may come next) → [`predict`].
//! The second model family, `qwen3`, plugs in beside [`model`]/[`train`]: [`qwen3`] (the
//! model), [`hf`] (checkpoints), [`lora`] (adapters), [`chat_template`] (the checkpoint's Jinja
//! template), [`json_call`] (constraints in the JSON call layout) and [`qwen3_student`] (training
//! and prediction). The worker dispatches on the `family` parameter and on a saved model's
//! [`qwen3_student::SIDECAR`] (else `family` in its `config.json`).

pub mod chat_template;
pub mod data;
pub mod grammar;
pub mod ground;
pub mod hf;
pub mod json_call;
pub mod lora;
pub mod model;
pub mod normalize;
pub mod predict;
pub mod prefix;
pub mod pretrain;
pub mod qwen3;
pub mod qwen3_student;
pub mod sampling;
pub mod serve;
pub mod template;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

/// A progress update, printed by the worker as one JSON line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: Option<u64>,
    /// Short status.
    pub message: String,
}

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Bad input data.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// Invalid parameters or inputs.
    #[error("{0}")]
    Invalid(String),
    /// libtorch failed.
    #[error("torch: {0}")]
    Torch(String),
}

impl WorkerError {
    /// Wraps an I/O error with its path.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        WorkerError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Texts the BPE is trained on: every message and every call rendered as the template renders
/// them (with the leading space), so merges fit what the model sees.
pub fn corpus_texts(
    conversations: &[tracelab_core::conversation::Conversation],
    tools: &tracelab_core::tools::ToolSet,
) -> Vec<String> {
    use tracelab_core::conversation::Message;
    let mut out = Vec::new();
    for f in &tools.functions {
        out.push(format!(" {}", f.name));
        for k in f.parameter_names() {
            out.push(format!(" {k}"));
        }
        for k in f.parameter_names() {
            for v in f.enum_values(k).unwrap_or_default() {
                out.push(format!(" {v}"));
            }
        }
    }
    for c in conversations {
        for m in &c.messages {
            match m {
                Message::System { content } | Message::User { content } => {
                    out.push(format!(" {content}"))
                }
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    if let Some(t) = content {
                        out.push(format!(" {t}"));
                    }
                    for call in tool_calls {
                        out.push(format!(" {}", call.name));
                        for (k, v) in &call.arguments {
                            out.push(format!(" {k}"));
                            out.push(template::value_text(v));
                        }
                    }
                }
                Message::Tool { content, .. } => {
                    out.push(template::render_result(content, usize::MAX))
                }
            }
        }
    }
    out
}
