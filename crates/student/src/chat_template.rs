//! Renders conversations through a checkpoint's own Jinja chat template (minijinja), so a real
//! student is trained on exactly the text layout it was pre-trained with, and finds which tokens
//! are the assistant's (the only ones with loss).
//!
//! The environment mirrors transformers' `apply_chat_template`: `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods (`startswith`, `split`, `rstrip`…), a
//! `tojson` that writes what Python's `json.dumps` writes (`", "` and `": "` separators, keys in
//! order, non-ASCII kept), `raise_exception`, and the tokenizer's special tokens as variables.
//! Tool calls are passed with their arguments as objects, the Hugging Face convention; Qwen3's
//! template then puts the tool list in the system prompt and each call in
//! `<tool_call>{"name": …, "arguments": …}</tool_call>`.
//!
//! Assistant spans are found by rendering: a turn starts where the rendering of the conversation
//! up to it with the generation prompt ends (checked to be a prefix of the full rendering), and
//! ends after the template's end-of-turn marker, which is learned by rendering a probe.

use std::ops::Range;
use std::path::Path;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as JValue};
use serde_json::{json, Map, Value};
use tracelab_core::conversation::Message;
use tracelab_core::tools::ToolSet;

/// What went wrong finding, compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// tokenizer_config.json does not parse.
    #[error("{path}:{line}:{column}: {message}")]
    Json {
        /// The file.
        path: String,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// What serde_json said.
        message: String,
    },
    /// The checkpoint has no chat template.
    #[error("{0}: no chat template (neither a \"chat_template\" field nor chat_template.jinja)")]
    Missing(String),
    /// The template does not compile.
    #[error("chat template from {origin}: {source:#}")]
    Syntax {
        /// Where the template came from.
        origin: String,
        /// minijinja's error, with line.
        source: JinjaError,
    },
    /// Rendering failed (a `raise_exception`, an unknown filter…).
    #[error("chat template from {origin}: rendering failed: {source:#}")]
    Render {
        /// Where the template came from.
        origin: String,
        /// minijinja's error, with line.
        source: JinjaError,
    },
    /// The template renders a conversation's beginning differently from the conversation itself,
    /// or has no recognizable end of turn, so assistant tokens cannot be located.
    #[error("chat template from {origin}: cannot locate assistant message {message}: {why}")]
    Spans {
        /// Where the template came from.
        origin: String,
        /// Index of the assistant message.
        message: usize,
        /// What did not line up.
        why: String,
    },
    /// Not even the last exchange of a conversation fits the context.
    #[error("the conversation does not fit {max_tokens} tokens even cut to its last exchange with an assistant turn (shortest: {tokens} tokens)")]
    TooLong {
        /// Tokens of the shortest cut tried (`usize::MAX` when no cut kept an assistant turn).
        tokens: usize,
        /// The context.
        max_tokens: usize,
    },
    /// Tokenizing the rendered text failed.
    #[error("tokenizing the rendered conversation: {0}")]
    Tokenize(String),
}

/// A rendered conversation: the text and the byte ranges of every assistant turn in it (content,
/// tool calls and the end-of-turn marker; not the role header).
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The full text.
    pub text: String,
    /// Byte ranges in `text`, one per assistant message, in order.
    pub assistant_spans: Vec<Range<usize>>,
}

/// Token ids of a rendered conversation and which of them carry loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids (no special tokens added beyond those the template wrote).
    pub ids: Vec<i64>,
    /// `true` for tokens that start inside an assistant span.
    pub loss_mask: Vec<bool>,
}

impl Encoded {
    /// Labels for [`crate::qwen3::causal_lm_loss`]: the id where the mask is set, `-100` elsewhere.
    pub fn labels(&self) -> Vec<i64> {
        self.ids
            .iter()
            .zip(&self.loss_mask)
            .map(|(&id, &m)| if m { id } else { crate::qwen3::IGNORE_INDEX })
            .collect()
    }
}

/// A conversation encoded within a context length.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// Tokens and loss mask of what was kept.
    pub encoded: Encoded,
    /// Number of messages cut from the left (after the leading system messages).
    pub dropped: usize,
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    /// Variables passed to every rendering: the tokenizer's special tokens (`bos_token`,
    /// `eos_token`…) and any extra switches (e.g. `enable_thinking`).
    pub context: Map<String, Value>,
    end_marker: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("end_marker", &self.end_marker)
            .finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; `context` holds the special tokens and switches every rendering sees.
    /// `origin` names where the template came from, for errors.
    pub fn new(
        source: &str,
        context: Map<String, Value>,
        origin: &str,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<JValue, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|source| TemplateError::Syntax {
                origin: origin.to_string(),
                source,
            })?;
        let mut t = ChatTemplate {
            env,
            origin: origin.to_string(),
            context,
            end_marker: None,
        };
        t.end_marker = t.probe_end_marker()?;
        Ok(t)
    }

    /// Reads the template of a `tokenizer_config.json`: its `chat_template` field (a string, or
    /// a list of named templates, of which `default` is taken), or else `chat_template.jinja` next
    /// to it (where newer transformers save it). Special tokens come from the same file.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self, TemplateError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
            path: origin.clone(),
            source,
        })?;
        let cfg: Value = serde_json::from_str(&text).map_err(|e| TemplateError::Json {
            path: origin.clone(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        let mut context = Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            // A special token is either a string or an AddedToken object with "content".
            let token = match &cfg[key] {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            };
            if let Some(t) = token {
                context.insert(key.to_string(), Value::String(t));
            }
        }
        let source = match &cfg["chat_template"] {
            Value::String(s) => Some((s.clone(), origin.clone())),
            Value::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first())
                .and_then(|t| t["template"].as_str())
                .map(|s| (s.to_string(), origin.clone())),
            _ => None,
        };
        let source = match source {
            Some(s) => s,
            None => {
                let jinja = path.with_file_name("chat_template.jinja");
                match std::fs::read_to_string(&jinja) {
                    Ok(s) => (s, jinja.display().to_string()),
                    Err(_) => return Err(TemplateError::Missing(origin)),
                }
            }
        };
        Self::new(&source.0, context, &source.1)
    }

    /// The template of a model directory (its `tokenizer_config.json`).
    pub fn from_model_dir(dir: &Path) -> Result<Self, TemplateError> {
        Self::from_tokenizer_config(&dir.join("tokenizer_config.json"))
    }

    /// The end-of-turn text the template writes after an assistant message (`<|im_end|>` for
    /// Qwen3), learned by rendering a probe; `None` if it writes nothing recognizable.
    fn probe_end_marker(&self) -> Result<Option<String>, TemplateError> {
        const PROBE: &str = "\u{1}tracelab-probe\u{1}";
        let msgs = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": PROBE}),
        ];
        // A template may refuse this shape (e.g. demand a system message); spans then fall back
        // to the next turn's start.
        let Ok(text) = self.render_values(&msgs, None, false) else {
            return Ok(None);
        };
        Ok(text.rfind(PROBE).and_then(|at| {
            let tail = text[at + PROBE.len()..].trim_end();
            (!tail.is_empty()).then(|| tail.to_string())
        }))
    }

    /// Renders `messages` (and `tools`, when given) to text.
    pub fn render_text(
        &self,
        messages: &[Message],
        tools: Option<&ToolSet>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let msgs: Vec<Value> = messages.iter().map(message_value).collect();
        let tools = tools.map(|t| t.to_openai(false));
        self.render_values(&msgs, tools.as_ref(), add_generation_prompt)
    }

    /// Renders the whole conversation and locates every assistant message in the text.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&ToolSet>,
    ) -> Result<Rendered, TemplateError> {
        let msgs: Vec<Value> = messages.iter().map(message_value).collect();
        let tools = tools.map(|t| t.to_openai(false));
        let text = self.render_values(&msgs, tools.as_ref(), false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if !matches!(m, Message::Assistant { .. }) {
                continue;
            }
            let fail = |why: String| TemplateError::Spans {
                origin: self.origin.clone(),
                message: i,
                why,
            };
            let prefix = self.render_values(&msgs[..i], tools.as_ref(), true)?;
            if !text.starts_with(&prefix) {
                return Err(fail(
                    "the conversation up to it renders differently from the full conversation"
                        .into(),
                ));
            }
            let start = prefix.len();
            let end = match &self.end_marker {
                Some(marker) => match text[start..].find(marker.as_str()) {
                    Some(at) => start + at + marker.len(),
                    None => return Err(fail(format!("no end-of-turn marker {marker:?} after it"))),
                },
                None => {
                    let upto = self.render_values(&msgs[..=i], tools.as_ref(), false)?;
                    if !text.starts_with(&upto) {
                        return Err(fail("the conversation up to it renders differently from the full conversation".into()));
                    }
                    start + upto[start..].trim_end().len()
                }
            };
            spans.push(start..end);
        }
        Ok(Rendered {
            text,
            assistant_spans: spans,
        })
    }

    /// Renders and tokenizes a conversation; tokens that start inside an assistant span carry
    /// loss. No special tokens are added beyond those the template writes (as transformers does
    /// when it tokenizes a chat).
    pub fn encode(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        messages: &[Message],
        tools: Option<&ToolSet>,
    ) -> Result<Encoded, TemplateError> {
        let rendered = self.render(messages, tools)?;
        encode_rendered(tokenizer, &rendered)
    }

    /// Encodes the conversation within a context of `max_tokens`: when it is longer, whole
    /// exchanges are cut from the left (at user messages; leading system messages, and so the
    /// tool header, stay) until it fits. Fails when even the last exchange does not fit or the
    /// part that fits holds no assistant message.
    pub fn encode_within(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        messages: &[Message],
        tools: Option<&ToolSet>,
        max_tokens: usize,
    ) -> Result<Fitted, TemplateError> {
        let head = messages
            .iter()
            .take_while(|m| matches!(m, Message::System { .. }))
            .count();
        // Start of the body, then every later user message, are the places a cut may start.
        let cuts = std::iter::once(head).chain(
            (head + 1..messages.len()).filter(|&i| matches!(messages[i], Message::User { .. })),
        );
        let mut shortest = usize::MAX;
        for cut in cuts {
            let kept: Vec<Message> = messages[..head]
                .iter()
                .chain(&messages[cut..])
                .cloned()
                .collect();
            if !kept.iter().any(|m| matches!(m, Message::Assistant { .. })) {
                break;
            }
            let encoded = self.encode(tokenizer, &kept, tools)?;
            if encoded.ids.len() <= max_tokens {
                return Ok(Fitted {
                    encoded,
                    dropped: cut - head,
                });
            }
            shortest = shortest.min(encoded.ids.len());
        }
        Err(TemplateError::TooLong {
            tokens: shortest,
            max_tokens,
        })
    }

    fn render_values(
        &self,
        messages: &[Value],
        tools: Option<&Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let mut ctx = self.context.clone();
        ctx.insert("messages".into(), Value::Array(messages.to_vec()));
        if let Some(t) = tools {
            ctx.insert("tools".into(), t.clone());
        }
        ctx.insert(
            "add_generation_prompt".into(),
            Value::Bool(add_generation_prompt),
        );
        let render_err = |source| TemplateError::Render {
            origin: self.origin.clone(),
            source,
        };
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        tmpl.render(Value::Object(ctx)).map_err(render_err)
    }
}

/// Tokenizes a rendered conversation and marks the tokens that start inside assistant spans.
pub fn encode_rendered(
    tokenizer: &tokenizers::Tokenizer,
    rendered: &Rendered,
) -> Result<Encoded, TemplateError> {
    let enc = tokenizer
        .encode(rendered.text.as_str(), false)
        .map_err(|e| TemplateError::Tokenize(e.to_string()))?;
    let ids = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
    // Offsets are byte offsets into the text, like the spans.
    let loss_mask = enc
        .get_offsets()
        .iter()
        .map(|&(start, _)| rendered.assistant_spans.iter().any(|s| s.contains(&start)))
        .collect();
    Ok(Encoded { ids, loss_mask })
}

/// A message in the form chat templates expect: OpenAI roles, tool-call arguments as objects.
fn message_value(m: &Message) -> Value {
    match m {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut v = json!({"role": "assistant", "content": content});
            if !tool_calls.is_empty() {
                v["tool_calls"] = tool_calls
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "type": "function",
                               "function": {"name": c.name, "arguments": Value::Object(c.arguments.clone())}})
                    })
                    .collect();
            }
            v
        }
        Message::Tool {
            tool_call_id,
            content,
        } => {
            json!({"role": "tool", "tool_call_id": tool_call_id, "content": content})
        }
    }
}

// ---- Python-compatible tojson ---------------------------------------------------------------------

/// `tojson(indent=None, ensure_ascii=False, sort_keys=False)` as transformers defines it: the text
/// of Python's `json.dumps`.
fn tojson(value: JValue, kwargs: Kwargs) -> Result<String, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&v, indent, 0, sort_keys.unwrap_or(false), &mut out);
    if ensure_ascii.unwrap_or(false) {
        out = out
            .chars()
            .flat_map(|c| {
                if c.is_ascii() {
                    vec![c.to_string()]
                } else {
                    let mut buf = [0u16; 2];
                    c.encode_utf16(&mut buf)
                        .iter()
                        .map(|u| format!("\\u{u:04x}"))
                        .collect()
                }
            })
            .collect();
    }
    Ok(out)
}

/// Writes `v` as Python's `json.dumps(v, indent=indent)` would (with `ensure_ascii=False`).
pub fn python_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    sort_keys: bool,
    out: &mut String,
) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&python_number(n)),
        Value::String(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(x, indent, depth + 1, sort_keys, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(o) if o.is_empty() => out.push_str("{}"),
        Value::Object(o) => {
            let mut entries: Vec<(&String, &Value)> = o.iter().collect();
            if sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).expect("strings serialize"));
                out.push_str(": ");
                python_json(x, indent, depth + 1, sort_keys, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

/// A JSON number as Python's `repr` writes it: integers as is, floats with a `.0` or an exponent
/// of at least two digits (`1e-05`, `1e+16`).
fn python_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let s = n.to_string();
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp.strip_prefix('+').unwrap_or(exp)),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = json!({"name": "FindRestaurants", "arguments": {"city": "Zürich", "n": 2, "x": [1.5, true, null], "e": {}}});
        let mut out = String::new();
        python_json(&v, None, 0, false, &mut out);
        // json.dumps(v, ensure_ascii=False)
        assert_eq!(
            out,
            r#"{"name": "FindRestaurants", "arguments": {"city": "Zürich", "n": 2, "x": [1.5, true, null], "e": {}}}"#
        );
        let mut pretty = String::new();
        python_json(&json!({"a": [1, 2]}), Some(2), 0, false, &mut pretty);
        assert_eq!(pretty, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
    }

    #[test]
    fn template_and_special_tokens_come_from_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer_config.json");
        let cfg = json!({
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}",
            "bos_token": "<s>",
            "eos_token": {"content": "</s>", "special": true},
        });
        std::fs::write(&path, cfg.to_string()).unwrap();
        let t = ChatTemplate::from_tokenizer_config(&path).unwrap();
        let msgs = [Message::User {
            content: "hi".into(),
        }];
        assert_eq!(t.render_text(&msgs, None, false).unwrap(), "<s>hi</s>");
        std::fs::write(&path, "{}").unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path).unwrap_err();
        assert!(matches!(err, TemplateError::Missing(_)), "{err}");
    }

    #[test]
    fn spans_cover_assistant_turns_only() {
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src, Map::new(), "test").unwrap();
        let msgs = vec![
            Message::User {
                content: "hello".into(),
            },
            Message::Assistant {
                content: Some("hi there".into()),
                tool_calls: vec![],
            },
        ];
        let r = t.render(&msgs, None).unwrap();
        assert_eq!(r.assistant_spans.len(), 1);
        assert_eq!(&r.text[r.assistant_spans[0].clone()], "hi there<|im_end|>");
    }
}
