//! The OpenAI Chat Completions protocol of `tracelab serve`, without the transport: a request
//! body checked into a [`ChatRequest`] (or an OpenAI-shaped [`ApiError`]), and an answered call
//! rendered as a completion object or as the chunks of a stream.
//!
//! A call of the reply function is served as plain assistant content (`finish_reason: "stop"`);
//! any other call as `tool_calls` (`finish_reason: "tool_calls"`). Which functions the student
//! may call follows the request: its `tools` (each must be one the student was trained on) and
//! `tool_choice` — `auto` (the tools or a reply), `none` (a reply), `required` (one of the
//! tools), or a named function (that one).

use serde_json::{json, Map, Value};
use tracelab_core::formats::openai::parse_messages;
use tracelab_core::job::Sampling;

/// An error as the OpenAI API returns it, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What is wrong.
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, `invalid_json`…).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: (!param.is_empty()).then(|| param.to_string()),
            code: None,
        }
    }

    /// A 500 (the worker failed).
    pub fn server(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind,
                         "param": self.param, "code": self.code}})
    }
}

/// A checked request: what to ask the worker and how to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The conversation so far (OpenAI messages; they parse).
    pub messages: Value,
    /// The functions the call may name (the reply function stands for plain content).
    pub functions: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// With `stream`, a last chunk carries the usage.
    pub include_usage: bool,
    /// A `temperature` above 0: draw tokens (with `top_p` and `seed`) instead of decoding greedily.
    pub sampling: Option<Sampling>,
}

/// What the served model offers: its name and functions.
#[derive(Debug, Clone)]
pub struct ModelCard {
    /// The `model` a request must name.
    pub name: String,
    /// Every function the student was trained on, the reply function included.
    pub functions: Vec<String>,
    /// The reply function's name.
    pub respond: String,
    /// Most tokens of one call; a smaller `max_tokens` is refused, not silently exceeded.
    pub max_call_tokens: usize,
}

/// Checks a request body (see the module header). `null` fields count as absent; fields this
/// server has no use for (`user`, `metadata`…) are ignored.
pub fn parse_request(body: &[u8], card: &ModelCard) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError {
        code: Some("invalid_json"),
        ..ApiError::invalid("", format!("the body is not valid JSON: {e}"))
    })?;
    let Value::Object(mut req) = v else {
        return Err(ApiError::invalid("", "the body must be a JSON object"));
    };
    req.retain(|_, v| !v.is_null());
    match req.get("model").and_then(Value::as_str) {
        None => return Err(ApiError::invalid("model", "`model` (a string) is required")),
        Some(m) if m != card.name => {
            return Err(ApiError {
                status: 404,
                kind: "invalid_request_error",
                code: Some("model_not_found"),
                ..ApiError::invalid(
                    "model",
                    format!(
                        "the model `{m}` does not exist; this server serves `{}`",
                        card.name
                    ),
                )
            })
        }
        Some(_) => {}
    }
    let messages = req
        .get("messages")
        .filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must be a non-empty array"))?
        .clone();
    parse_messages(&messages).map_err(|e| ApiError::invalid("messages", e))?;
    if let Some(n) = req.get("n") {
        if n.as_u64() != Some(1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    check_max_tokens(&req, card)?;
    let sampling = sampling(&req)?;
    let tools = request_tools(&req, card)?;
    let functions = callable(&req, tools, card)?;
    let stream = match req.get("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream", "`stream` must be a boolean")),
    };
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatRequest {
        messages,
        functions,
        stream,
        include_usage,
        sampling,
    })
}

/// `temperature` (0 to 2; absent or 0 is greedy, as the predict step decodes), `top_p` (0 to 1)
/// and `seed` (absent: a fresh one per request).
fn sampling(req: &Map<String, Value>) -> Result<Option<Sampling>, ApiError> {
    let number = |key: &str, max: f64| -> Result<Option<f64>, ApiError> {
        match req.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| (0.0..=max).contains(x))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(key, format!("`{key}` must be a number from 0 to {max}"))
                }),
        }
    };
    let temperature = number("temperature", 2.0)?;
    let top_p = number("top_p", 1.0)?;
    let seed = match req.get("seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid("seed", "`seed` must be an integer"))?,
        ),
    };
    Ok(temperature.filter(|t| *t > 0.0).map(|t| Sampling {
        temperature: t as f32,
        top_p: top_p.unwrap_or(1.0) as f32,
        seed: seed.unwrap_or_else(fresh_seed),
    }))
}

/// A seed for a request that gives none: the clock's nanoseconds and a counter, so two requests
/// in the same instant still differ.
fn fresh_seed() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// `max_tokens` / `max_completion_tokens`: positive, and room for a whole call.
fn check_max_tokens(req: &Map<String, Value>, card: &ModelCard) -> Result<(), ApiError> {
    for key in ["max_tokens", "max_completion_tokens"] {
        let Some(v) = req.get(key) else { continue };
        let n = v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::invalid(key, format!("`{key}` must be a positive integer")))?;
        if (n as usize) < card.max_call_tokens {
            return Err(ApiError::invalid(
                key,
                format!(
                    "`{key}` = {n} is below the {} tokens this student may need for one call; \
                     a cut-off call would not be valid, so ask for at least that",
                    card.max_call_tokens
                ),
            ));
        }
    }
    Ok(())
}

/// The names of the request's `tools`, each checked against the student's functions.
fn request_tools(req: &Map<String, Value>, card: &ModelCard) -> Result<Vec<String>, ApiError> {
    let Some(tools) = req.get("tools") else {
        return Ok(Vec::new());
    };
    let list = tools
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "`tools` must be an array"))?;
    let mut names = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let name = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
            .ok_or_else(|| {
                ApiError::invalid(
                    &format!("tools[{i}]"),
                    "each tool must be {\"type\": \"function\", \"function\": {\"name\": …}}",
                )
            })?;
        names.push(name.to_string());
    }
    let unknown: Vec<&str> = names
        .iter()
        .filter(|n| !card.functions.contains(n))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "this student was not trained on {}; it knows {}",
                unknown.join(", "),
                card.functions
                    .iter()
                    .filter(|f| **f != card.respond)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(names)
}

/// The functions the call may name, from the tools and `tool_choice`.
fn callable(
    req: &Map<String, Value>,
    tools: Vec<String>,
    card: &ModelCard,
) -> Result<Vec<String>, ApiError> {
    let reply = || card.respond.clone();
    let bad = |m: &str| ApiError::invalid("tool_choice", m);
    let with_reply = |mut t: Vec<String>| {
        if !t.contains(&card.respond) {
            t.push(reply());
        }
        t
    };
    match req.get("tool_choice") {
        None => Ok(with_reply(tools)),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(with_reply(tools)),
            "none" => Ok(vec![reply()]),
            "required" if tools.is_empty() => Err(bad("`required` needs `tools`")),
            "required" => Ok(tools),
            _ => Err(bad(
                "`tool_choice` must be auto, none, required or a named function",
            )),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad("a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": …}}")
                })?;
            if !tools.iter().any(|t| t == name) {
                return Err(bad(&format!("`{name}` is not one of the request's tools")));
            }
            Ok(vec![name.to_string()])
        }
        Some(_) => Err(bad("`tool_choice` must be a string or a named function")),
    }
}

/// One answered call, ready to render.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The completion's id (`chatcmpl-…`).
    pub id: String,
    /// The tool call's id (`call_…`), unique per answer.
    pub call_id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// The call's function.
    pub name: String,
    /// Its arguments.
    pub arguments: Map<String, Value>,
    /// Whether it is the reply function (served as content).
    pub is_reply: bool,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose cache an earlier request's served.
    pub cached_tokens: usize,
}

impl Answer {
    fn usage(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.prompt_tokens + self.completion_tokens,
               "prompt_tokens_details": {"cached_tokens": self.cached_tokens}})
    }

    /// The reply text, for a reply call.
    fn text(&self) -> String {
        self.arguments
            .values()
            .find_map(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn arguments_json(&self) -> String {
        Value::Object(self.arguments.clone()).to_string()
    }

    /// The `chat.completion` object.
    pub fn completion(&self) -> Value {
        let (message, finish) = if self.is_reply {
            (
                json!({"role": "assistant", "content": self.text(), "refusal": null}),
                "stop",
            )
        } else {
            (
                json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                    {"id": self.call_id, "type": "function",
                     "function": {"name": self.name, "arguments": self.arguments_json()}}]}),
                "tool_calls",
            )
        };
        json!({"id": self.id, "object": "chat.completion", "created": self.created,
               "model": self.model, "system_fingerprint": null,
               "choices": [{"index": 0, "message": message, "logprobs": null,
                            "finish_reason": finish}],
               "usage": self.usage()})
    }

    /// The `chat.completion.chunk` objects of a stream (one id): the role and the call's id and
    /// name (or the start of the content), then pieces of the arguments (or of the content),
    /// then the finish reason, then (with `include_usage`) the usage on a chunk without choices.
    pub fn chunks(&self, include_usage: bool) -> Vec<Value> {
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({"id": self.id, "object": "chat.completion.chunk",
                "created": self.created, "model": self.model, "system_fingerprint": null,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut out = Vec::new();
        if self.is_reply {
            out.push(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            for piece in pieces(&self.text()) {
                out.push(chunk(json!({"content": piece}), Value::Null));
            }
            out.push(chunk(json!({}), json!("stop")));
        } else {
            out.push(chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"index": 0, "id": self.call_id, "type": "function",
                     "function": {"name": self.name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in pieces(&self.arguments_json()) {
                out.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
            out.push(chunk(json!({}), json!("tool_calls")));
        }
        if include_usage {
            out.push(json!({"id": self.id, "object": "chat.completion.chunk",
                "created": self.created, "model": self.model, "system_fingerprint": null,
                "choices": [], "usage": self.usage()}));
        }
        out
    }
}

/// A text in pieces of about 16 characters (on character boundaries), as a stream sends it.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(16).map(|c| c.iter().collect()).collect()
}

/// The body of a stream: one `data:` event per chunk, then `data: [DONE]`.
pub fn sse_body(chunks: &[Value]) -> String {
    let mut s = String::new();
    for c in chunks {
        s.push_str("data: ");
        s.push_str(&c.to_string());
        s.push_str("\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard {
            name: "student".into(),
            functions: vec![
                "SearchHouse".into(),
                "BookHouse".into(),
                "respond_to_user".into(),
            ],
            respond: "respond_to_user".into(),
            max_call_tokens: 64,
        }
    }

    fn tool(name: &str) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}})
    }

    fn req(extra: Value) -> Result<ChatRequest, ApiError> {
        let mut body = json!({"model": "student", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        parse_request(body.to_string().as_bytes(), &card())
    }

    #[test]
    fn temperature_above_zero_samples_with_its_seed_and_nucleus() {
        assert_eq!(req(json!({})).unwrap().sampling, None);
        assert_eq!(
            req(json!({"temperature": 0, "seed": 3})).unwrap().sampling,
            None
        );
        assert_eq!(req(json!({"top_p": 0.5})).unwrap().sampling, None);
        assert_eq!(
            req(json!({"temperature": 0.7, "top_p": 0.9, "seed": 3}))
                .unwrap()
                .sampling,
            Some(Sampling {
                temperature: 0.7,
                top_p: 0.9,
                seed: 3
            })
        );
        // No seed: each request draws its own.
        let a = req(json!({"temperature": 1})).unwrap().sampling.unwrap();
        let b = req(json!({"temperature": 1})).unwrap().sampling.unwrap();
        assert_eq!((a.top_p, a.temperature), (1.0, 1.0));
        assert_ne!(a.seed, b.seed);
        for bad in [
            json!({"temperature": 2.5}),
            json!({"temperature": -1}),
            json!({"temperature": "hot"}),
            json!({"top_p": 1.5}),
            json!({"seed": 1.5}),
        ] {
            let key = bad.as_object().unwrap().keys().next().unwrap().clone();
            let e = req(bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(key.as_str()));
            assert_eq!(e.status, 400);
        }
    }

    #[test]
    fn tool_choice_sets_what_may_be_called() {
        let tools = json!([tool("SearchHouse")]);
        assert_eq!(
            req(json!({"tools": tools})).unwrap().functions,
            ["SearchHouse", "respond_to_user"]
        );
        assert_eq!(
            req(json!({"tools": tools, "tool_choice": "none"}))
                .unwrap()
                .functions,
            ["respond_to_user"]
        );
        assert_eq!(
            req(json!({"tools": tools, "tool_choice": "required"}))
                .unwrap()
                .functions,
            ["SearchHouse"]
        );
        let named = json!({"type": "function", "function": {"name": "SearchHouse"}});
        assert_eq!(
            req(json!({"tools": tools, "tool_choice": named}))
                .unwrap()
                .functions,
            ["SearchHouse"]
        );
        assert_eq!(req(json!({})).unwrap().functions, ["respond_to_user"]);
        let other = json!({"type": "function", "function": {"name": "BookHouse"}});
        let e = req(json!({"tools": tools, "tool_choice": other})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        assert!(req(json!({"tool_choice": "required"})).is_err());
        assert!(req(json!({"tools": tools, "tool_choice": "sometimes"})).is_err());
    }

    #[test]
    fn bad_requests_get_openai_shaped_errors() {
        let e = parse_request(b"{not json", &card()).unwrap_err();
        assert_eq!((e.status, e.code), (400, Some("invalid_json")));
        let e = req(json!({"model": "gpt-4o"})).unwrap_err();
        assert_eq!((e.status, e.code), (404, Some("model_not_found")));
        let e = req(json!({"tools": [tool("SearchFlight"), tool("SearchHouse")]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        assert!(e.message.contains("SearchFlight") && !e.message.contains("SearchFlight,"));
        let e = req(json!({"messages": [{"role": "wizard", "content": "x"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = req(json!({"max_tokens": 5})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert!(req(json!({"max_completion_tokens": 512, "temperature": 0.7, "seed": 3})).is_ok());
        assert!(req(json!({"n": 2})).is_err());
        let body = e.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"].get("code").is_some());
    }

    #[test]
    fn nulls_are_absent() {
        let r = req(json!({"tools": null, "tool_choice": null, "stream": null,
                           "stream_options": null, "max_tokens": null}))
        .unwrap();
        assert!(!r.stream);
        assert_eq!(r.functions, ["respond_to_user"]);
    }

    #[test]
    fn a_streamed_call_carries_its_id_and_name_first_and_its_arguments_in_pieces() {
        let a = Answer {
            id: "chatcmpl-1".into(),
            call_id: "call_1".into(),
            created: 0,
            model: "student".into(),
            name: "SearchHouse".into(),
            arguments: json!({"where_to": "Paris, France", "number_of_adults": 2})
                .as_object()
                .unwrap()
                .clone(),
            is_reply: false,
            prompt_tokens: 10,
            completion_tokens: 7,
            cached_tokens: 4,
        };
        let chunks = a.chunks(true);
        let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (&first["id"], &first["function"]["name"]),
            (&json!("call_1"), &json!("SearchHouse"))
        );
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            Value::Object(a.arguments.clone())
        );
        assert!(chunks.len() > 3, "arguments come in more than one piece");
        assert_eq!(
            chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 17);
        assert!(sse_body(&chunks).ends_with("data: [DONE]\n\n"));
        assert_eq!(
            a.completion()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            a.arguments_json()
        );
    }
}
