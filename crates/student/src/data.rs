//! Reading the worker's inputs (conversations, evaluation pairs, tool schemas) and writing
//! predictions.
//!
//! Conversations and pairs are read in the standard OpenAI chat form (`tool_calls` whose
//! `arguments` are a JSON string or object, results as `tool` messages). Every malformed line is
//! an error naming file and line: the worker never skips data silently.
// TODO(merge): switch to `tracelab::formats::read_conversations` once the data branch lands.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tracelab::conversation::{Arguments, Conversation, EvalPair, Message, ToolCall};

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
    /// A line is not a valid record.
    #[error("{path}:{line}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect())
}

fn parse_arguments(v: &Value) -> Result<Arguments, String> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("tool call arguments are not a JSON object".into()),
            Err(e) => Err(format!("tool call arguments are not JSON: {e}")),
        },
        Value::Null => Ok(Map::new()),
        _ => Err("tool call arguments must be an object or a JSON string".into()),
    }
}

fn parse_call(v: &Value) -> Result<ToolCall, String> {
    let f = v.get("function").unwrap_or(v);
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or("tool call without a function name")?;
    let arguments = parse_arguments(f.get("arguments").unwrap_or(&Value::Null))?;
    Ok(ToolCall {
        id: v
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        name: name.to_string(),
        arguments,
    })
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parses one OpenAI chat message.
pub fn parse_message(v: &Value) -> Result<Message, String> {
    let role = v
        .get("role")
        .and_then(Value::as_str)
        .ok_or("message without a role")?;
    let content = v.get("content").unwrap_or(&Value::Null);
    Ok(match role {
        "system" => Message::System {
            content: text_of(content),
        },
        "user" => Message::User {
            content: text_of(content),
        },
        "assistant" => {
            let calls = match v.get("tool_calls") {
                Some(Value::Array(a)) => a.iter().map(parse_call).collect::<Result<_, _>>()?,
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err("tool_calls must be a list".into()),
            };
            Message::Assistant {
                content: match content {
                    Value::Null => None,
                    c => Some(text_of(c)),
                },
                tool_calls: calls,
            }
        }
        "tool" => Message::Tool {
            tool_call_id: v
                .get("tool_call_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            content: text_of(content),
        },
        other => return Err(format!("unknown role {other:?}")),
    })
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<Message>, String> {
    v.and_then(Value::as_array)
        .ok_or("missing \"messages\" list")?
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(m).map_err(|e| format!("message {i}: {e}")))
        .collect()
}

/// Reads conversations from a JSONL file (`{"id", "messages", "meta"}` a line).
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>, DataError> {
    let mut out = Vec::new();
    for (line, text) in read_lines(path)? {
        let bad = |message: String| DataError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let messages = parse_messages(v.get("messages")).map_err(bad)?;
        out.push(Conversation {
            id: v
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}:{line}", path.display())),
            messages,
            meta: v
                .get("meta")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

/// Reads evaluation pairs (`{"id", "question": [messages], "answer": {"name", "arguments"}}`).
pub fn read_pairs(path: &Path) -> Result<Vec<EvalPair>, DataError> {
    let mut out = Vec::new();
    for (line, text) in read_lines(path)? {
        let bad = |message: String| DataError::Bad {
            path: path.to_path_buf(),
            line,
            message,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let question = parse_messages(v.get("question")).map_err(bad)?;
        let answer = parse_call(
            v.get("answer")
                .ok_or_else(|| bad("missing \"answer\"".into()))?,
        )
        .map_err(bad)?;
        out.push(EvalPair {
            id: v
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing \"id\"".into()))?
                .to_string(),
            question,
            answer,
        });
    }
    Ok(out)
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
