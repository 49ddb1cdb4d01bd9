//! What the judge reads from a row: the predicted and reference calls (in every shape other
//! systems write them) and a view of the conversation prefix — who said what, which calls were
//! made, and the records each call returned.
//!
//! The judge scores outputs of any system, so it reads leniently on purpose: arguments as objects
//! or JSON strings, `parameters` for `arguments`, calls wrapped in `<tool_call>…</tool_call>` or
//! in an OpenAI `tool_calls` list, and tool results either as `tool` messages or, as in the
//! study's files, as a user message whose content is the JSON list of records.

use serde_json::{Map, Value};

use crate::conversation::ToolCall;
use crate::judge::normalize::value_text;

/// Parses a call from any accepted shape: an object with `name` and `arguments`/`parameters`
/// (object or JSON string), an OpenAI tool call (`{"function": {…}}`) — both read by
/// [`crate::formats::parse_call`] — plus what model outputs add: an assistant message with
/// `tool_calls`, a one-element list, or a string holding any of these as JSON, possibly wrapped
/// in `<tool_call>…</tool_call>` (after `<think>` text) or a Markdown code fence. The error says
/// why not.
pub fn parse_call(value: &Value) -> Result<ToolCall, String> {
    parse_call_depth(value, 0)
}

fn parse_call_depth(value: &Value, depth: usize) -> Result<ToolCall, String> {
    if depth > 3 {
        return Err("call nested too deeply".into());
    }
    match value {
        Value::Null => Err("empty output".into()),
        Value::String(s) => parse_call_text(s, depth),
        Value::Array(a) => match a.as_slice() {
            [one] => parse_call_depth(one, depth + 1),
            [] => Err("empty list of calls".into()),
            _ => Err(format!("{} calls where one was expected", a.len())),
        },
        Value::Object(o) => match o.get("tool_calls") {
            // An assistant message: its (single) call.
            Some(calls) if calls.is_array() => parse_call_depth(calls, depth + 1),
            // Plain `{name, arguments|parameters}` or OpenAI `{function: {…}}`: the data
            // model's reader handles both.
            _ => crate::formats::parse_call(value),
        },
        _ => Err(format!("a call cannot be {value}")),
    }
}

fn parse_call_text(s: &str, depth: usize) -> Result<ToolCall, String> {
    let mut t = s.trim();
    if t.is_empty() {
        return Err("empty output".into());
    }
    if let Some(start) = t.find("<tool_call>") {
        let inner = &t[start + "<tool_call>".len()..];
        t = match inner.find("</tool_call>") {
            Some(end) => inner[..end].trim(),
            None => inner.trim(),
        };
        if t.is_empty() {
            return Err("empty <tool_call> block".into());
        }
    }
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        t = rest.strip_suffix("```").unwrap_or(rest).trim();
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ (Value::Object(_) | Value::Array(_))) => parse_call_depth(&v, depth + 1),
        Ok(Value::String(inner)) => parse_call_text(&inner, depth + 1),
        Ok(other) => Err(format!("output is JSON {other}, not a call")),
        Err(e) => {
            let shown: String = t.chars().take(60).collect();
            Err(format!("output is not a JSON call ({e}): {shown:?}"))
        }
    }
}

/// Who wrote a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The assistant (a reply or a service call).
    Assistant,
    /// A tool result.
    Tool,
}

/// One message of the prefix, reduced to what the judge needs.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Who wrote it.
    pub speaker: Speaker,
    /// Its text: user text, the assistant's reply (the respond call's message or content), or
    /// the raw tool result.
    pub text: String,
    /// The service call an assistant turn made (respond calls are folded into `text`).
    pub call: Option<ToolCall>,
}

/// The records one service call returned.
#[derive(Debug, Clone)]
pub struct ResultBlock {
    /// Index of the result in [`Context::turns`].
    pub turn: usize,
    /// The call that produced it, when the prefix shows one right before.
    pub call: Option<ToolCall>,
    /// The records, each field's value as text (`"True"`, `"moderate"`, …).
    pub records: Vec<Map<String, Value>>,
}

/// The conversation prefix as the judge sees it.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Messages in order.
    pub turns: Vec<Turn>,
    /// Every tool result that parsed as records, in order.
    pub results: Vec<ResultBlock>,
}

impl Context {
    /// Reads an OpenAI message list; `respond` is the reply function's name. Errors name the
    /// message index and what is wrong.
    pub fn from_messages(messages: &Value, respond: &str) -> Result<Context, String> {
        let list = messages
            .as_array()
            .ok_or("question is not a list of messages")?;
        let mut ctx = Context::default();
        let mut last_call: Option<ToolCall> = None;
        for (i, m) in list.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("message {i} has no role"))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            match role {
                "system" | "developer" => ctx.push(Speaker::System, content, None),
                "user" => {
                    // The study's files deliver results as a user message holding the JSON list.
                    match records_of(&content) {
                        Some(records) if last_call.is_some() => {
                            ctx.push_result(content, records, last_call.take());
                        }
                        _ => ctx.push(Speaker::User, content, None),
                    }
                }
                "assistant" => {
                    let calls = m.get("tool_calls").and_then(Value::as_array);
                    let mut text = content;
                    let mut service = None;
                    for c in calls.into_iter().flatten() {
                        let call = parse_call(c).map_err(|e| format!("message {i}: {e}"))?;
                        if call.name == respond {
                            let msg = call.arguments.get("message").map(value_text);
                            text = msg.unwrap_or_default();
                        } else {
                            service = Some(call);
                        }
                    }
                    last_call = service.clone();
                    ctx.push(Speaker::Assistant, text, service);
                }
                "tool" | "function" | "ipython" => match records_of(&content) {
                    Some(records) => ctx.push_result(content, records, last_call.take()),
                    None => ctx.push(Speaker::Tool, content, None),
                },
                other => return Err(format!("message {i} has unknown role {other:?}")),
            }
        }
        Ok(ctx)
    }

    fn push(&mut self, speaker: Speaker, text: String, call: Option<ToolCall>) {
        // SGD's texts write "7 o\"clock" with a double quote for the apostrophe; read them as
        // people do.
        let text = if text.contains("o\"clock") {
            text.replace("o\"clock", "o'clock")
        } else {
            text
        };
        self.turns.push(Turn {
            speaker,
            text,
            call,
        });
    }

    fn push_result(
        &mut self,
        text: String,
        records: Vec<Map<String, Value>>,
        call: Option<ToolCall>,
    ) {
        self.results.push(ResultBlock {
            turn: self.turns.len(),
            call,
            records,
        });
        self.push(Speaker::Tool, text, None);
    }

    /// Every record of every result, latest block first.
    pub fn records(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.results.iter().rev().flat_map(|b| b.records.iter())
    }

    /// Text the user wrote, all turns.
    pub fn user_text(&self) -> impl Iterator<Item = &str> {
        self.turns
            .iter()
            .filter(|t| t.speaker == Speaker::User)
            .map(|t| t.text.as_str())
    }

    /// Whether the latest message is a tool result (so the reply reports on it directly).
    pub fn ends_with_result(&self) -> bool {
        self.turns
            .last()
            .is_some_and(|t| t.speaker == Speaker::Tool)
    }
}

/// Parses tool-result text as records: a JSON list of objects (possibly empty) or one object.
fn records_of(content: &str) -> Option<Vec<Map<String, Value>>> {
    let t = content.trim();
    if !(t.starts_with('[') || t.starts_with('{')) {
        return None;
    }
    match serde_json::from_str::<Value>(t).ok()? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Object(o) => Some(o),
                _ => None,
            })
            .collect(),
        Value::Object(o) => Some(vec![o]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepted_call_shapes() {
        let want = ToolCall::new(
            "FindRestaurants",
            json!({"city": "San Jose"}).as_object().unwrap().clone(),
        );
        let shapes = [
            json!({"name": "FindRestaurants", "arguments": {"city": "San Jose"}}),
            json!({"name": "FindRestaurants", "parameters": {"city": "San Jose"}}),
            json!({"name": "FindRestaurants", "arguments": "{\"city\": \"San Jose\"}"}),
            json!({"type": "function", "id": "x", "function": {"name": "FindRestaurants", "arguments": "{\"city\":\"San Jose\"}"}}),
            json!({"role": "assistant", "tool_calls": [{"function": {"name": "FindRestaurants", "arguments": {"city": "San Jose"}}}]}),
            json!("{\"name\": \"FindRestaurants\", \"arguments\": {\"city\": \"San Jose\"}}"),
            json!("<tool_call>\n{\"name\": \"FindRestaurants\", \"arguments\": {\"city\": \"San Jose\"}}\n</tool_call>"),
            json!("<think></think><tool_call>{\"name\": \"FindRestaurants\", \"parameters\": {\"city\": \"San Jose\"}}"),
            json!("```json\n{\"name\": \"FindRestaurants\", \"arguments\": {\"city\": \"San Jose\"}}\n```"),
            json!([{"name": "FindRestaurants", "arguments": {"city": "San Jose"}}]),
        ];
        for s in shapes {
            let got = parse_call(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (&got.name, &got.arguments),
                (&want.name, &want.arguments),
                "{s}"
            );
        }
        for (bad, why) in [
            (json!(null), "empty"),
            (json!(""), "empty"),
            (json!("I think you should eat sushi"), "not a JSON call"),
            (json!({"arguments": {}}), "without a name"),
            (
                json!({"name": "F", "arguments": "{broken"}),
                "not valid JSON",
            ),
            (json!({"name": "F", "arguments": [1]}), "not a JSON object"),
            (json!("<tool_call></tool_call>"), "empty <tool_call>"),
            (json!([{"name": "a"}, {"name": "b"}]), "2 calls"),
        ] {
            let e = parse_call(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn results_as_tool_messages_or_user_lists() {
        let msgs = json!([
            {"role": "user", "content": "Find me sushi in San Jose"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c0", "type": "function",
              "function": {"name": "FindRestaurants", "arguments": "{\"city\":\"San Jose\",\"cuisine\":\"Japanese\"}"}}]},
            {"role": "tool", "tool_call_id": "c0", "content": "[{\"restaurant_name\": \"Ariake\"}]"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "respond_to_user", "arguments": {"message": "Ariake is nice."}}}]},
            {"role": "user", "content": "Book it"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "ReserveRestaurant", "arguments": {"restaurant_name": "Ariake"}}}]},
            {"role": "user", "content": "[]"}
        ]);
        let ctx = Context::from_messages(&msgs, "respond_to_user").unwrap();
        assert_eq!(ctx.results.len(), 2);
        assert_eq!(ctx.results[0].records.len(), 1);
        assert_eq!(
            ctx.results[0].call.as_ref().unwrap().name,
            "FindRestaurants"
        );
        assert!(ctx.results[1].records.is_empty());
        assert_eq!(
            ctx.results[1].call.as_ref().unwrap().name,
            "ReserveRestaurant"
        );
        assert_eq!(ctx.turns[3].text, "Ariake is nice.");
        assert!(ctx.ends_with_result());
        assert_eq!(
            ctx.user_text().count(),
            2,
            "the user-list result is not user text"
        );
        let e =
            Context::from_messages(&json!([{"role": "robot", "content": ""}]), "r").unwrap_err();
        assert!(e.contains("unknown role"), "{e}");
    }
}
