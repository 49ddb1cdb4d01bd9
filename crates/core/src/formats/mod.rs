//! Reading and writing trace files: OpenAI chat JSONL (lenient in, standard out) and evaluation
//! pairs. (The SGD dataset's own layout is read by the orchestrator's `formats::sgd`.)
//!
//! Everything inside tracelab speaks [`crate::conversation`]; this module is the only place that
//! knows about other shapes. Readers are lenient about *form* (arguments as a string or an object,
//! tool results as `tool` messages or as a user message holding a JSON list) and strict about
//! *content*: a line that cannot be understood is an error naming `file:line` and the problem, or,
//! with [`OnBadTrace::Skip`], is skipped and reported in [`ReadOutcome::skipped`] — never dropped
//! silently.

pub mod openai;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::{Conversation, EvalPair, ToolCall};

pub use openai::parse_call;

/// What a reader does with a trace it cannot understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadTrace {
    /// Stop with an error naming file, line and problem.
    #[default]
    Error,
    /// Leave the trace out and list it in [`ReadOutcome::skipped`].
    Skip,
}

/// The result of reading a trace file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadOutcome {
    /// The conversations that were read, in file order.
    pub conversations: Vec<Conversation>,
    /// The 1-based line each conversation was read from (parallel to `conversations`).
    pub lines: Vec<usize>,
    /// One entry per skipped trace, `"file:line: why"` (only with [`OnBadTrace::Skip`]).
    pub skipped: Vec<String>,
}

/// Errors reading trace files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file (or directory) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// What was asked for is not in the data (an SGD service no `schema.json` lists). There is
    /// no line to point at: the request, not the file, is wrong.
    #[error("{path}: {message}")]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
        /// What is missing, and what is there instead.
        message: String,
    },
    /// A line or record is malformed.
    #[error("{file}:{line}: {message}")]
    Invalid {
        /// The file, as given.
        file: String,
        /// 1-based line (for JSON documents: the line the problem was found on, or 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl FormatError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads an OpenAI chat JSONL file: one `{"messages": [...]}` object a line (optional `id`,
/// `meta`, `tools`). Blank lines are ignored. See [`openai`] for the accepted shapes.
pub fn read_conversations(path: &Path, on_bad: OnBadTrace) -> Result<ReadOutcome, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let file = path.display().to_string();
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    let mut out = ReadOutcome::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        match openai::parse_line(line, &format!("{stem}:{lineno}")) {
            Ok(c) => {
                out.conversations.push(c);
                out.lines.push(lineno);
            }
            Err(message) => match on_bad {
                OnBadTrace::Error => {
                    return Err(FormatError::Invalid {
                        file,
                        line: lineno,
                        message,
                    })
                }
                OnBadTrace::Skip => out.skipped.push(format!("{file}:{lineno}: {message}")),
            },
        }
    }
    Ok(out)
}

/// The tool list an OpenAI chat JSONL file declares in its lines' `tools` keys (the study's files
/// carry one per line). All lines that have one must agree; lines without one are fine. Errors:
/// no line declares tools, lines disagree, or a line is not JSON.
pub fn declared_tools(path: &Path) -> Result<Value, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let file = path.display().to_string();
    let mut found: Option<(usize, Value)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = line
            .parse()
            .map_err(|e: serde_json::Error| FormatError::Invalid {
                file: file.clone(),
                line: i + 1,
                message: format!("bad JSON: {e}"),
            })?;
        let Some(tools) = v.get("tools").filter(|t| !t.is_null()) else {
            continue;
        };
        match &found {
            None => found = Some((i + 1, tools.clone())),
            Some((first, t)) if t != tools => {
                return Err(FormatError::Invalid {
                    file,
                    line: i + 1,
                    message: format!(
                        "these tools differ from those of line {first}; give the target tools file explicitly"
                    ),
                })
            }
            Some(_) => {}
        }
    }
    found.map(|(_, t)| t).ok_or(FormatError::Invalid {
        file,
        line: 1,
        message: "no line declares \"tools\"; give the target tools file explicitly".into(),
    })
}

/// Writes conversations as standard OpenAI chat JSONL (`{"id","messages","meta"}` a line, string
/// `arguments`, results as `tool` messages). Calls without ids get deterministic ones. The file is
/// written next to its destination and renamed, so readers never see half a file.
pub fn write_conversations(path: &Path, convs: &[Conversation]) -> std::io::Result<()> {
    write_lines(path, convs.iter(), |c| {
        if c.calls().any(|call| call.id.is_empty()) {
            let mut c = c.clone();
            c.assign_call_ids();
            serde_json::to_string(&c)
        } else {
            serde_json::to_string(c)
        }
    })
}

/// Reads `pairs.jsonl`: one `{"id", "question": [messages], "answer": {"name", "arguments"}}` a
/// line. Any malformed line is an error.
pub fn read_pairs(path: &Path) -> Result<Vec<EvalPair>, FormatError> {
    let text = std::fs::read_to_string(path).map_err(|e| FormatError::io(path, e))?;
    let file = path.display().to_string();
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |message: String| FormatError::Invalid {
            file: file.clone(),
            line: i + 1,
            message,
        };
        let v: Value = line
            .parse()
            .map_err(|e: serde_json::Error| invalid(format!("bad JSON: {e}")))?;
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("pair without a string \"id\"".into()))?
            .to_string();
        let question = v
            .get("question")
            .ok_or_else(|| invalid("pair without \"question\"".into()))?;
        let question = openai::parse_messages(question).map_err(invalid)?;
        let answer = v
            .get("answer")
            .ok_or_else(|| invalid("pair without \"answer\"".into()))?;
        let answer = parse_call(answer).map_err(|e| invalid(format!("answer: {e}")))?;
        pairs.push(EvalPair {
            id,
            question,
            answer,
        });
    }
    Ok(pairs)
}

/// Writes `pairs.jsonl` (see [`read_pairs`]), atomically.
pub fn write_pairs(path: &Path, pairs: &[EvalPair]) -> std::io::Result<()> {
    write_lines(path, pairs.iter(), serde_json::to_string)
}

/// Writes one JSON line per item into a temporary sibling file, then renames it into place.
fn write_lines<T>(
    path: &Path,
    items: impl Iterator<Item = T>,
    mut line: impl FnMut(T) -> serde_json::Result<String>,
) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = match dir {
        Some(d) => d.join(&tmp_name),
        None => PathBuf::from(&tmp_name),
    };
    let result = (|| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for item in items {
            let l = line(item).map_err(std::io::Error::other)?;
            w.write_all(l.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A call as `ToolCall` from any accepted JSON form; convenience for tests and callers that hold
/// a JSON string.
pub fn parse_call_str(text: &str) -> Result<ToolCall, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
    parse_call(&v)
}
