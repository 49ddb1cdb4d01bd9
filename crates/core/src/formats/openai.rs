//! Lenient reading of OpenAI chat messages and tool calls into the conversation model.
//!
//! Accepted per line: `{"messages": [...], "id"?, "meta"?, "tools"?}` or a bare array of
//! messages. Other top-level keys (e.g. `parallel_tool_calls`) are ignored; `tools`, when present,
//! must be an array and is kept in `meta.tools` so a round trip preserves it.
//!
//! Accepted per message:
//! - roles `system` (also `developer`), `user`, `assistant`, `tool` (also legacy `function`);
//!   any other role is an error;
//! - `content` as a string, `null`, or a list of `{"type": "text", "text": …}` parts;
//! - assistant `tool_calls` entries in OpenAI form (`{"id", "type": "function", "function":
//!   {"name", "arguments"}}`) or plain (`{"name", "arguments" | "parameters"}`), arguments as an
//!   object or as a JSON string holding an object; legacy `function_call` as one call;
//! - tool results as `tool` messages, or as a **user message whose content is a JSON list** right
//!   after an assistant service call (the study's files do this): it becomes a `tool` message
//!   answering that call. A call to `respond_to_user` is never answered this way, so a user who
//!   types a JSON list after a reply stays a user;
//! - **an assistant text without a call becomes `respond_to_user(message = text)`**: in this
//!   project every assistant turn is exactly one call, and the reply function is the task's
//!   `respond_to_user` (the default name; tasks with another reply name rename it downstream).
//!
//! Errors (the reader adds `file:line`): bad JSON, missing `messages`, unknown role, a call without
//! a name, arguments that are not an object, an assistant message with neither text nor call.
//! A tool result before any call is accepted: scenarios such as trace mixing shuffle messages on
//! purpose, and their output must read back.

use serde_json::{Map, Value};

use crate::conversation::{Arguments, Conversation, Message, ToolCall};
use crate::tools::DEFAULT_RESPOND;

/// Parses one JSONL line into a conversation; `default_id` is used when the line has no `id`.
pub fn parse_line(line: &str, default_id: &str) -> Result<Conversation, String> {
    let v: Value = line
        .parse()
        .map_err(|e: serde_json::Error| format!("bad JSON: {e}"))?;
    parse_conversation(&v, default_id)
}

/// Parses one conversation object (see the module documentation).
pub fn parse_conversation(v: &Value, default_id: &str) -> Result<Conversation, String> {
    let (obj, messages) = match v {
        Value::Array(_) => (None, v),
        Value::Object(o) => (
            Some(o),
            o.get("messages")
                .ok_or("expected an object with a \"messages\" list")?,
        ),
        _ => return Err("expected a JSON object with a \"messages\" list".into()),
    };
    let messages = parse_messages(messages)?;
    let mut meta = Map::new();
    let mut id = default_id.to_string();
    if let Some(o) = obj {
        match o.get("id") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => id = s.clone(),
            Some(Value::Number(n)) => id = n.to_string(),
            Some(other) => return Err(format!("\"id\" must be a string, got {other}")),
        }
        match o.get("meta") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => meta = m.clone(),
            Some(_) => return Err("\"meta\" must be an object".into()),
        }
        match o.get("tools") {
            None | Some(Value::Null) => {}
            Some(t @ Value::Array(_)) => {
                meta.entry("tools").or_insert_with(|| t.clone());
            }
            Some(_) => return Err("\"tools\" must be a list of tool definitions".into()),
        }
    }
    let mut c = Conversation { id, messages, meta };
    c.assign_call_ids();
    Ok(c)
}

/// Parses a list of OpenAI messages (see the module documentation).
pub fn parse_messages(v: &Value) -> Result<Vec<Message>, String> {
    let list = v.as_array().ok_or("\"messages\" must be a list")?;
    let mut out = Vec::with_capacity(list.len());
    // Ids of service calls that still wait for their result, oldest first.
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = |e: String| format!("message {i}: {e}");
        let obj = m.as_object().ok_or_else(|| at("not an object".into()))?;
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no \"role\"".into()))?;
        let content = content_text(obj.get("content")).map_err(at)?;
        match role {
            "system" | "developer" => {
                out.push(Message::System {
                    content: content.unwrap_or_default(),
                });
            }
            "user" => {
                let text = content.unwrap_or_default();
                let is_result =
                    !open_calls.is_empty() && text.parse::<Value>().is_ok_and(|v| v.is_array());
                if is_result {
                    out.push(Message::Tool {
                        tool_call_id: open_calls.remove(0),
                        content: text,
                    });
                } else {
                    open_calls.clear();
                    out.push(Message::User { content: text });
                }
            }
            "assistant" => {
                let mut calls = Vec::new();
                if let Some(tc) = obj.get("tool_calls").filter(|v| !v.is_null()) {
                    let tc = tc
                        .as_array()
                        .ok_or_else(|| at("\"tool_calls\" must be a list".into()))?;
                    for (j, c) in tc.iter().enumerate() {
                        calls.push(parse_call(c).map_err(|e| at(format!("tool call {j}: {e}")))?);
                    }
                }
                if let Some(fc) = obj.get("function_call").filter(|v| !v.is_null()) {
                    calls.push(parse_call(fc).map_err(|e| at(format!("function_call: {e}")))?);
                }
                let content = content.filter(|t| !t.is_empty());
                open_calls.clear();
                if calls.is_empty() {
                    let text = content.ok_or_else(|| {
                        at("assistant message with neither text nor a tool call".into())
                    })?;
                    let mut args = Arguments::new();
                    args.insert("message".into(), Value::String(text));
                    calls.push(ToolCall::new(DEFAULT_RESPOND, args));
                    out.push(Message::call(calls.pop().expect("just pushed")));
                    continue;
                }
                for (n, c) in calls.iter_mut().enumerate() {
                    if c.id.is_empty() {
                        // Give the call a provisional id now so a result can point at it;
                        // unique within the conversation.
                        c.id = format!("call_{}_{n}", out.len());
                    }
                    if c.name != DEFAULT_RESPOND {
                        open_calls.push(c.id.clone());
                    }
                }
                out.push(Message::Assistant {
                    content,
                    tool_calls: calls,
                });
            }
            "tool" | "function" => {
                let id = match obj.get("tool_call_id") {
                    Some(Value::String(s)) => s.clone(),
                    None | Some(Value::Null) => {
                        if open_calls.is_empty() {
                            String::new()
                        } else {
                            open_calls.remove(0)
                        }
                    }
                    Some(_) => return Err(at("\"tool_call_id\" must be a string".into())),
                };
                open_calls.retain(|c| *c != id);
                out.push(Message::Tool {
                    tool_call_id: id,
                    content: content.unwrap_or_default(),
                });
            }
            other => return Err(at(format!("unknown role {other:?}"))),
        }
    }
    Ok(out)
}

/// Message content as text: a string, `null`, a list of text parts, or (for tool results) any
/// other JSON value, which is kept as its JSON text.
fn content_text(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts))
            if !parts.is_empty()
                && parts
                    .iter()
                    .all(|p| p.get("type").and_then(Value::as_str) == Some("text")) =>
        {
            let mut s = String::new();
            for p in parts {
                let t = p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or("content part of type text without a \"text\" string")?;
                s.push_str(t);
            }
            Ok(Some(s))
        }
        Some(other) => Ok(Some(other.to_string())),
    }
}

/// Parses one tool call from any accepted form: OpenAI `{"id"?, "type": "function", "function":
/// {"name", "arguments"}}` or plain `{"name", "arguments" | "parameters"}`; arguments as an object,
/// a JSON string holding an object, or absent/empty (no arguments). A JSON string holding one of
/// these objects is accepted too. Errors: no name, arguments that are not an object.
pub fn parse_call(value: &Value) -> Result<ToolCall, String> {
    if let Value::String(s) = value {
        let inner: Value =
            serde_json::from_str(s).map_err(|e| format!("call is a string but not JSON: {e}"))?;
        if inner.is_string() {
            return Err("call is a JSON string, expected an object".into());
        }
        return parse_call(&inner);
    }
    let outer = value
        .as_object()
        .ok_or_else(|| format!("call must be an object, got {}", short(value)))?;
    let inner = match outer.get("function") {
        Some(Value::Object(f)) => f,
        Some(_) => return Err("\"function\" must be an object".into()),
        None => outer,
    };
    let name = match inner.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err("tool call without a name".into())
        }
        Some(other) => {
            return Err(format!(
                "tool call name must be a string, got {}",
                short(other)
            ))
        }
    };
    let raw = inner.get("arguments").or_else(|| inner.get("parameters"));
    let arguments = match raw {
        None | Some(Value::Null) => Arguments::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => Arguments::new(),
        Some(Value::String(s)) => match s.parse::<Value>() {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                return Err(format!(
                    "arguments of {name} are not a JSON object: {}",
                    short(&other)
                ))
            }
            Err(e) => return Err(format!("arguments of {name} are not valid JSON: {e}")),
        },
        Some(other) => {
            return Err(format!(
                "arguments of {name} are not a JSON object: {}",
                short(other)
            ))
        }
    };
    let id = match outer.get("id") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    Ok(ToolCall {
        id,
        name,
        arguments,
    })
}

/// A JSON value shortened for error messages.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_forms() {
        let a = parse_call(&json!({"name": "F", "arguments": {"x": 1}})).unwrap();
        let b = parse_call(&json!({"name": "F", "parameters": {"x": 1}})).unwrap();
        let c = parse_call(&json!({"id": "c1", "type": "function",
            "function": {"name": "F", "arguments": "{\"x\": 1}"}}))
        .unwrap();
        assert_eq!(a.arguments, b.arguments);
        assert_eq!(a.arguments, c.arguments);
        assert_eq!(c.id, "c1");
        let d = parse_call(&json!("{\"name\": \"F\", \"arguments\": {\"x\": 1}}")).unwrap();
        assert_eq!(d.arguments, a.arguments);
        assert!(parse_call(&json!({"name": "F"}))
            .unwrap()
            .arguments
            .is_empty());
        assert!(parse_call(&json!({"arguments": {}}))
            .unwrap_err()
            .contains("without a name"));
        assert!(parse_call(&json!({"name": "F", "arguments": "[1]"}))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_call(&json!({"name": "F", "arguments": 3}))
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_call(&json!({"name": "F", "arguments": "{"}))
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn user_list_after_service_call_is_a_tool_result() {
        let v = json!({"messages": [
            {"role": "user", "content": "food in SF"},
            {"role": "assistant", "tool_calls": [{"name": "Find", "arguments": {"city": "SF"}}]},
            {"role": "user", "content": "[{\"name\": \"A\"}]"},
            {"role": "assistant", "tool_calls": [{"name": "respond_to_user", "arguments": {"message": "A?"}}]},
            {"role": "user", "content": "[1, 2]"},
            {"role": "assistant", "content": "ok"}
        ]});
        let c = parse_conversation(&v, "x:1").unwrap();
        assert_eq!(c.id, "x:1");
        assert!(matches!(&c.messages[2], Message::Tool { tool_call_id, .. }
            if *tool_call_id == c.messages[1].tool_calls()[0].id));
        assert!(matches!(&c.messages[4], Message::User { .. }));
        assert_eq!(c.messages[5].tool_calls()[0].name, "respond_to_user");
        assert_eq!(c.messages[5].tool_calls()[0].arguments["message"], "ok");
    }
}
