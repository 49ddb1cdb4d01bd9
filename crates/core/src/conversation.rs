//! The conversation model every step speaks: messages, tool calls, tool results, evaluation pairs.
//!
//! Serialization is the standard OpenAI chat form (`tool_calls` with string `arguments`, results as
//! `tool` messages). Lenient readers for other shapes (arguments as objects, results as a user
//! message holding a JSON list) live in [`crate::formats`]; everything inside tracelab uses these
//! types.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Arguments of a tool call: always a JSON object.
pub type Arguments = Map<String, Value>;

/// One call of a function by the assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// Call id that the matching tool result refers to (OpenAI `tool_call_id`).
    pub id: String,
    /// Function name, e.g. `FindRestaurants` or `respond_to_user`.
    pub name: String,
    /// Arguments as a JSON object.
    pub arguments: Arguments,
}

impl ToolCall {
    /// A call with an empty id (ids are assigned when a conversation is written).
    pub fn new(name: impl Into<String>, arguments: Arguments) -> Self {
        ToolCall {
            id: String::new(),
            name: name.into(),
            arguments,
        }
    }

    /// The call as `{"name": …, "arguments": {…}}`, the form used in pairs, predictions and prompts.
    pub fn to_plain_json(&self) -> Value {
        serde_json::json!({ "name": self.name, "arguments": Value::Object(self.arguments.clone()) })
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// System prompt.
    System { content: String },
    /// What the user said.
    User { content: String },
    /// An assistant turn: optional text and the tool calls it makes (in this project, one call).
    Assistant {
        content: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of a tool call, as the text (usually a JSON list of records) the tool returned.
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl Message {
    /// The OpenAI role name of this message.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }

    /// An assistant message that makes exactly one call.
    pub fn call(call: ToolCall) -> Self {
        Message::Assistant {
            content: None,
            tool_calls: vec![call],
        }
    }

    /// The calls of an assistant message (empty for other roles).
    pub fn tool_calls(&self) -> &[ToolCall] {
        match self {
            Message::Assistant { tool_calls, .. } => tool_calls,
            _ => &[],
        }
    }
}

/// A conversation: an id, its messages in order, and free-form metadata (source file, service…).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    /// Stable identifier (SGD dialogue id, or `file:line` for JSONL input).
    pub id: String,
    /// Messages in order.
    pub messages: Vec<Message>,
    /// Metadata carried along (service name, scenario operator notes…). Not part of training text.
    pub meta: Map<String, Value>,
}

impl Conversation {
    /// Every tool call of the conversation, in order.
    pub fn calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.messages.iter().flat_map(|m| m.tool_calls().iter())
    }

    /// Number of assistant messages (the study's "assistant turns").
    pub fn assistant_turns(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count()
    }

    /// Gives every call without an id a deterministic one (`call_<n>`) and points the tool message
    /// that follows it at that id.
    pub fn assign_call_ids(&mut self) {
        let mut n = 0usize;
        let mut last_id: Option<String> = None;
        for m in &mut self.messages {
            match m {
                Message::Assistant { tool_calls, .. } => {
                    for c in tool_calls.iter_mut() {
                        if c.id.is_empty() {
                            c.id = format!("call_{n}");
                        }
                        n += 1;
                        last_id = Some(c.id.clone());
                    }
                }
                Message::Tool { tool_call_id, .. } if tool_call_id.is_empty() => {
                    if let Some(id) = &last_id {
                        *tool_call_id = id.clone();
                    }
                }
                _ => {}
            }
        }
    }
}

// ---- Standard OpenAI serialization -------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct WireFunction {
    name: String,
    arguments: String,
}

#[derive(Serialize, Deserialize)]
struct WireCall {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    function: WireFunction,
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireCall {
            id: self.id.clone(),
            kind: "function".into(),
            function: WireFunction {
                name: self.name.clone(),
                arguments: Value::Object(self.arguments.clone()).to_string(),
            },
        }
        .serialize(s)
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("role", self.role())?;
        match self {
            Message::System { content } | Message::User { content } => {
                m.serialize_entry("content", content)?;
            }
            Message::Assistant {
                content,
                tool_calls,
            } => {
                m.serialize_entry("content", content)?;
                if !tool_calls.is_empty() {
                    m.serialize_entry("tool_calls", tool_calls)?;
                }
            }
            Message::Tool {
                tool_call_id,
                content,
            } => {
                m.serialize_entry("tool_call_id", tool_call_id)?;
                m.serialize_entry("content", content)?;
            }
        }
        m.end()
    }
}

impl Serialize for Conversation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("messages", &self.messages)?;
        if !self.meta.is_empty() {
            m.serialize_entry("meta", &self.meta)?;
        }
        m.end()
    }
}

/// An evaluation pair: a conversation prefix ending right before an assistant call, and that call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalPair {
    /// `<conversation id>#<assistant turn index>`.
    pub id: String,
    /// The prefix the model sees (OpenAI messages).
    pub question: Vec<Message>,
    /// The reference call, as `{"name", "arguments"}`.
    #[serde(serialize_with = "plain_call")]
    pub answer: ToolCall,
}

fn plain_call<S: serde::Serializer>(c: &ToolCall, s: S) -> Result<S::Ok, S::Error> {
    c.to_plain_json().serialize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assistant_serializes_in_openai_form() {
        let mut args = Arguments::new();
        args.insert("city".into(), "San Jose".into());
        let mut c = Conversation {
            id: "x".into(),
            messages: vec![
                Message::User {
                    content: "hi".into(),
                },
                Message::call(ToolCall::new("FindRestaurants", args)),
                Message::Tool {
                    tool_call_id: String::new(),
                    content: "[]".into(),
                },
            ],
            meta: Map::new(),
        };
        c.assign_call_ids();
        let v = serde_json::to_value(&c).unwrap();
        let call = &v["messages"][1]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["arguments"], "{\"city\":\"San Jose\"}");
        assert_eq!(v["messages"][2]["tool_call_id"], call["id"]);
    }
}
