//! Any OpenAI-compatible chat model as a predictor: each evaluation pair's prefix goes to the
//! endpoint with the task's tools, and the answer is read back as the pair's one call.
//!
//! The conversation is sent the way chat models expect it: earlier replies are assistant *text*
//! (the reply function is not offered as a tool, since the API requires a tool result after every
//! tool call), service calls are `tool_calls` with ids, followed by their `tool` results. The
//! answer is read, in order, from the message's `tool_calls` (the first call; more are counted),
//! from a `<tool_call>…</tool_call>` block in its text (Hermes/Qwen style), from text that is a
//! JSON call object, and otherwise as a reply: text becomes `respond(message = text)`, the same
//! rule the OpenAI reader applies to training files. A `<think>…</think>` preamble is dropped.
//!
//! Requests go through [`crate::llm::LlmClient`]: its concurrency limit, retries, budget and
//! response cache (an interrupted run repeats no request), and its rule that the API key is never
//! written anywhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tracelab_core::conversation::{Conversation, EvalPair, Message, ToolCall};
use tracelab_core::formats::openai::parse_call;
use tracelab_core::tools::{FunctionKind, ToolSet};

use crate::llm::{LlmClient, LlmError, LlmStats};

/// One pair's outcome: the call read from the answer, or why none could be read.
pub type Predicted = Result<ToolCall, String>;

/// What a run of the predictor did, for the step's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PredictorStats {
    /// Answers with more than one tool call (the first was kept).
    pub extra_calls: usize,
    /// Answers from which no call could be read.
    pub unreadable: usize,
    /// The client's counters.
    pub llm: LlmStats,
}

/// The OpenAI chat messages for a pair's prefix (see the module header): replies as text,
/// service calls with ids and their results as `tool` messages.
pub fn request_messages(question: &[Message], tools: &ToolSet) -> Value {
    let respond = tools.respond().map(|f| f.name.as_str());
    let mut conv = Conversation {
        messages: question.to_vec(),
        ..Default::default()
    };
    conv.assign_call_ids();
    let messages: Vec<Value> = conv
        .messages
        .iter()
        .map(|m| match m {
            Message::Assistant {
                content,
                tool_calls,
            } if tool_calls.len() == 1 && Some(tool_calls[0].name.as_str()) == respond => {
                let said = reply_text(&tool_calls[0]);
                let text = match content.as_deref().filter(|c| !c.trim().is_empty()) {
                    Some(c) if said.is_empty() => c.to_string(),
                    _ => said,
                };
                json!({"role": "assistant", "content": text})
            }
            other => serde_json::to_value(other).expect("messages serialize"),
        })
        .collect();
    Value::Array(messages)
}

/// The tools offered: every function but the reply function (a reply is plain text).
pub fn request_tools(tools: &ToolSet) -> Value {
    let offered = ToolSet {
        functions: tools
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::Respond)
            .cloned()
            .collect(),
    };
    offered.to_openai(false)
}

/// A reply call's text: its one string argument (`message` for the default reply function).
fn reply_text(call: &ToolCall) -> String {
    call.arguments
        .values()
        .find_map(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The call an assistant message makes (see the module header), and how many tool calls it had.
pub fn call_of(message: &Value, tools: &ToolSet) -> (Predicted, usize) {
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        if let Some(first) = calls.first() {
            return (parse_call(first), calls.len());
        }
    }
    let text = message.get("content").map(content_text).unwrap_or_default();
    (call_in_text(&text, tools), 0)
}

/// Message content as text: a string, or the text parts of a list.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A call written in text: a `<tool_call>` block, a JSON call object (fenced or not), or else
/// the text itself as a reply.
fn call_in_text(text: &str, tools: &ToolSet) -> Predicted {
    let text = match text.find("</think>") {
        Some(end) => &text[end + "</think>".len()..],
        None => text,
    };
    let text = text.trim();
    if let Some(start) = text.find("<tool_call>") {
        let rest = &text[start + "<tool_call>".len()..];
        let body = rest.find("</tool_call>").map_or(rest, |end| &rest[..end]);
        return serde_json::from_str::<Value>(body.trim())
            .map_err(|e| format!("<tool_call> block is not JSON: {e}"))
            .and_then(|v| parse_call(&v));
    }
    let unfenced = text
        .strip_prefix("```json")
        .or_else(|| text.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .unwrap_or(text)
        .trim();
    if unfenced.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<Value>(unfenced) {
            if v.get("name").is_some() || v.get("function").is_some() {
                return parse_call(&v);
            }
        }
    }
    if text.is_empty() {
        return Err("the answer has neither a tool call nor text".into());
    }
    let respond = tools
        .respond()
        .ok_or("the tool set has no reply function for a text answer")?;
    let key = respond
        .parameter_names()
        .first()
        .map_or("message", |k| *k)
        .to_string();
    let mut args = serde_json::Map::new();
    args.insert(key, Value::String(text.to_string()));
    Ok(ToolCall::new(respond.name.clone(), args))
}

/// Why a run of the predictor stopped.
#[derive(Debug, thiserror::Error)]
pub enum PredictorError {
    /// A request failed after its retries.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// The run was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// A request task panicked.
    #[error("request task failed: {0}")]
    Task(String),
}

/// Asks the endpoint for every pair (in parallel up to the client's concurrency) and returns the
/// calls in pair order. An answer that holds no readable call is an `Err` row, not a failure; a
/// request that fails after its retries fails the run (answers already accepted stay cached).
pub fn predict_all(
    client: Arc<LlmClient>,
    pairs: &[EvalPair],
    tools: &ToolSet,
    progress: &dyn Fn(usize),
    cancel: &AtomicBool,
) -> Result<(Vec<Predicted>, PredictorStats), PredictorError> {
    let offered = Arc::new(request_tools(tools));
    let shared = Arc::new(tools.clone());
    let answers = crate::steps::runtime().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (slot, pair) in pairs.iter().enumerate() {
            let messages = request_messages(&pair.question, tools);
            let (client, offered, tools) = (client.clone(), offered.clone(), shared.clone());
            set.spawn(async move {
                let r = client
                    .complete_message(&messages, &offered, 0, |m| Ok(call_of(m, &tools)))
                    .await;
                (slot, r.map(|(answer, _)| answer))
            });
        }
        let mut out = vec![None; pairs.len()];
        let mut done = 0;
        while let Some(joined) = set.join_next().await {
            let (slot, r) = joined.map_err(|e| PredictorError::Task(e.to_string()))?;
            out[slot] = Some(r?);
            done += 1;
            progress(done);
            if cancel.load(Ordering::Relaxed) {
                set.abort_all();
                return Err(PredictorError::Cancelled);
            }
        }
        Ok(out)
    })?;
    let mut stats = PredictorStats::default();
    let mut calls = Vec::with_capacity(pairs.len());
    for a in answers {
        let (call, n) = a.expect("every task joined");
        stats.extra_calls += usize::from(n > 1);
        stats.unreadable += usize::from(call.is_err());
        calls.push(call);
    }
    stats.llm = client.stats();
    Ok((calls, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracelab_core::tools::DEFAULT_RESPOND;

    fn tools() -> ToolSet {
        ToolSet::from_openai(
            &json!([{"type": "function", "function": {"name": "SearchHouse",
                "parameters": {"type": "object", "properties": {"where_to": {"type": "string"}},
                               "required": ["where_to"]}}}]),
            DEFAULT_RESPOND,
            &[],
            "test",
        )
        .unwrap()
    }

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall::new(name, args.as_object().unwrap().clone())
    }

    #[test]
    fn replies_are_sent_as_text_and_service_calls_with_paired_ids() {
        let q = vec![
            Message::User {
                content: "A house in Paris".into(),
            },
            Message::call(call("SearchHouse", json!({"where_to": "Paris"}))),
            Message::Tool {
                tool_call_id: String::new(),
                content: "[]".into(),
            },
            Message::call(call(DEFAULT_RESPOND, json!({"message": "None there."}))),
            Message::User {
                content: "London then".into(),
            },
        ];
        let m = request_messages(&q, &tools());
        assert_eq!(m[3], json!({"role": "assistant", "content": "None there."}));
        let id = m[1]["tool_calls"][0]["id"].as_str().unwrap();
        assert!(!id.is_empty());
        assert_eq!(m[2]["tool_call_id"], id);
        assert_eq!(
            m[1]["tool_calls"][0]["function"]["arguments"],
            "{\"where_to\":\"Paris\"}"
        );
        let offered = request_tools(&tools());
        assert_eq!(
            offered.as_array().unwrap().len(),
            1,
            "the reply function is not offered"
        );
        assert_eq!(offered[0]["function"]["name"], "SearchHouse");
    }

    #[test]
    fn the_call_is_read_from_tool_calls_tags_json_or_text() {
        let t = tools();
        let read = |m: Value| call_of(&m, &t);
        let search = call("SearchHouse", json!({"where_to": "Rome"}));
        let (c, n) = read(json!({"content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "SearchHouse", "arguments": "{\"where_to\": \"Rome\"}"}},
            {"id": "b", "type": "function", "function": {"name": "SearchHouse", "arguments": "{}"}}]}));
        assert_eq!((c.unwrap().to_plain_json(), n), (search.to_plain_json(), 2));
        let tagged = "<think>they want Rome</think>\n<tool_call>\n{\"name\": \"SearchHouse\", \"arguments\": {\"where_to\": \"Rome\"}}\n</tool_call>";
        assert_eq!(read(json!({"content": tagged})).0.unwrap(), search);
        let fenced =
            "```json\n{\"name\": \"SearchHouse\", \"arguments\": {\"where_to\": \"Rome\"}}\n```";
        assert_eq!(read(json!({"content": fenced})).0.unwrap(), search);
        assert_eq!(
            read(json!({"content": [{"type": "text", "text": "Which dates?"}]}))
                .0
                .unwrap(),
            call(DEFAULT_RESPOND, json!({"message": "Which dates?"}))
        );
        let bad = read(json!({"content": "<tool_call>{\"name\": \"SearchHouse\", "})).0;
        assert!(bad.unwrap_err().contains("not JSON"));
        assert!(read(json!({"content": "  "})).0.is_err());
        // Prose that merely starts with a brace is a reply, not a call.
        assert_eq!(
            read(json!({"content": "{braces} are fine"}))
                .0
                .unwrap()
                .name,
            DEFAULT_RESPOND
        );
    }
}
