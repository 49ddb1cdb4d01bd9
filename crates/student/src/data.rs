//! Reading the worker's inputs (conversations and evaluation pairs, through
//! `tracelab_core::formats`, so the worker accepts exactly what the orchestrator writes and reads) and
//! writing predictions. Every malformed line is an error naming file and line: the worker never
//! skips data silently.

use std::io::Write;
use std::path::{Path, PathBuf};

use tracelab_core::conversation::{Conversation, EvalPair, ToolCall};
use tracelab_core::formats::{self, FormatError, OnBadTrace};

/// Errors reading inputs or writing outputs.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a valid record (the message names file and line).
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// Reads conversations from a JSONL file (`{"id", "messages", "meta"}` a line).
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>, DataError> {
    Ok(formats::read_conversations(path, OnBadTrace::Error)?.conversations)
}

/// Reads evaluation pairs (`{"id", "question": [messages], "answer": {"name", "arguments"}}`).
pub fn read_pairs(path: &Path) -> Result<Vec<EvalPair>, DataError> {
    Ok(formats::read_pairs(path)?)
}

/// Writes predictions: one `{"id", "question", "answer", "prediction": {"name", "arguments"}}` a line.
pub fn write_predictions(
    path: &Path,
    pairs: &[EvalPair],
    predictions: &[ToolCall],
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for (p, call) in pairs.iter().zip(predictions) {
        let row = serde_json::json!({
            "id": p.id,
            "question": p.question,
            "answer": p.answer.to_plain_json(),
            "prediction": call.to_plain_json(),
        });
        writeln!(w, "{row}").map_err(io)?;
    }
    w.flush().map_err(io)
}
