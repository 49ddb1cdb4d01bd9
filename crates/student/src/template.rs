//! The chat template: how a conversation becomes tokens, which tokens carry loss, how long
//! conversations are cut into context windows, and the token sequences the tool schemas allow.
//!
//! Layout (specials in `<|…|>`; every text and value starts with one space so a name is the same
//! tokens wherever it appears):
//!
//! ```text
//! <|tools|> <|fn|> FindRestaurants cuisine city … <|fn|> respond_to_user message
//! <|user|> I want Mexican food in San Jose.
//! <|call|> FindRestaurants <|arg|> cuisine <|val|> Mexican <|arg|> city <|val|> San Jose <|end|>
//! <|result|> city: San Jose, restaurant_name: Taqueria …
//! <|call|> respond_to_user <|arg|> message <|val|> How about Taqueria …? <|end|>
//! ```
//!
//! Loss falls only on assistant call tokens after `<|call|>` (name, keys, values, closers), so one
//! forward pass trains every assistant turn in the window. Value tokens (and the closer that ends a
//! value) are marked separately: there the copy head mixes in its distribution.

use serde_json::Value;
use tokenizers::Tokenizer;
use tracelab_core::conversation::{Message, ToolCall};
use tracelab_core::tools::{FunctionKind, ToolSet};

use crate::normalize::Normalizer;
use crate::tokenizer::SPECIAL_TOKENS;

/// What a token is, as a training target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Not predicted (context).
    None,
    /// A call's structure: function name, argument keys, `<|arg|>`, `<|val|>`, `<|end|>`.
    Structure,
    /// An argument value token or the closer right after a value (copy-head positions).
    Value,
}

/// Ids of the template's special tokens.
#[derive(Debug, Clone, Copy)]
pub struct Specials {
    /// Padding.
    pub pad: u32,
    /// Starts the tool header.
    pub tools: u32,
    /// Starts one function in the header.
    pub func: u32,
    /// Starts a system message.
    pub system: u32,
    /// Starts a user message.
    pub user: u32,
    /// Starts an assistant call.
    pub call: u32,
    /// Starts an argument.
    pub arg: u32,
    /// Separates an argument key from its value.
    pub val: u32,
    /// Ends a call.
    pub end: u32,
    /// Starts a tool result.
    pub result: u32,
}

/// A conversation rendered into tokens, with per-message segments for truncation.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// Token ids, header first.
    pub tokens: Vec<u32>,
    /// Target kind of each token.
    pub targets: Vec<Target>,
    /// Whether the copy head may point at each token: message text, result values and argument
    /// values, never the header, names, keys, result labels or special tokens.
    pub copyable: Vec<bool>,
    /// Length of the tool header at the start.
    pub header_len: usize,
    /// `[start, end)` of each message after the header.
    pub segments: Vec<(usize, usize)>,
}

/// One training window: a header plus consecutive messages that fit in the context.
#[derive(Debug, Clone)]
pub struct Window {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Target kind of each token.
    pub targets: Vec<Target>,
    /// Whether the copy head may point at each token.
    pub copyable: Vec<bool>,
}

/// A prediction prompt: tokens ending with `<|call|>` and which of them may be copied.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Whether the copy head may point at each token.
    pub copyable: Vec<bool>,
}

/// How an argument's value is decoded.
#[derive(Debug, Clone)]
pub enum ValueKind {
    /// Free text, token by token up to a closer.
    Free,
    /// One of a fixed list (enum, boolean): token sequences and the JSON value each stands for.
    Choice(Vec<(Vec<u32>, Value)>),
    /// Digits only (JSON Schema integer).
    Integer,
}

/// One argument of a function, as the decoder sees it.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    /// Argument name.
    pub key: String,
    /// Its tokens (with the leading space).
    pub key_tokens: Vec<u32>,
    /// How its value is decoded.
    pub kind: ValueKind,
}

/// One callable function, as the decoder sees it.
#[derive(Debug, Clone)]
pub struct FnSpec {
    /// Function name.
    pub name: String,
    /// Its tokens (with the leading space).
    pub name_tokens: Vec<u32>,
    /// Arguments in schema order.
    pub params: Vec<ParamSpec>,
    /// Indices into `params` of required arguments.
    pub required: Vec<usize>,
}

/// The chat template bound to a tokenizer and a tool set.
pub struct ChatTemplate {
    tok: Tokenizer,
    /// Special token ids.
    pub sp: Specials,
    /// Vocabulary size (including added tokens).
    pub vocab: usize,
    /// `true` for ids that are special tokens (never copied, never inside free text).
    pub is_special: Vec<bool>,
    header: Vec<u32>,
    respond_name: String,
    /// Tool results keep at most this many records.
    pub max_records: usize,
    /// The decoder's view of the tools.
    pub functions: Vec<FnSpec>,
    normalizer: Normalizer,
}

impl ChatTemplate {
    /// Binds the template to a tokenizer (which must contain [`SPECIAL_TOKENS`]) and tools.
    /// With a `reference_date` (`YYYY-MM-DD`, "today" in the data) dates in texts are rewritten
    /// to ISO form; clock times always become `HH:MM` (see [`crate::normalize`]).
    pub fn new(
        tok: Tokenizer,
        tools: &ToolSet,
        max_records: usize,
        reference_date: Option<&str>,
    ) -> Result<Self, String> {
        let id = |s: &str| {
            tok.token_to_id(s)
                .ok_or_else(|| format!("tokenizer lacks special token {s}"))
        };
        let sp = Specials {
            pad: id("<|pad|>")?,
            tools: id("<|tools|>")?,
            func: id("<|fn|>")?,
            system: id("<|system|>")?,
            user: id("<|user|>")?,
            call: id("<|call|>")?,
            arg: id("<|arg|>")?,
            val: id("<|val|>")?,
            end: id("<|end|>")?,
            result: id("<|result|>")?,
        };
        let vocab = tok.get_vocab_size(true);
        let mut is_special = vec![false; vocab];
        for s in SPECIAL_TOKENS {
            is_special[id(s)? as usize] = true;
        }
        for (t, added) in tok.get_added_tokens_decoder() {
            if added.special && (t as usize) < vocab {
                is_special[t as usize] = true;
            }
        }
        let mut tpl = ChatTemplate {
            tok,
            sp,
            vocab,
            is_special,
            header: Vec::new(),
            respond_name: tools
                .respond()
                .map(|f| f.name.clone())
                .unwrap_or_else(|| tracelab_core::tools::DEFAULT_RESPOND.to_string()),
            max_records,
            functions: Vec::new(),
            normalizer: Normalizer::new(reference_date),
        };
        let mut header = vec![sp.tools];
        for f in &tools.functions {
            header.push(sp.func);
            header.extend(tpl.encode(&format!(" {}", f.name)));
            for k in f.parameter_names() {
                header.extend(tpl.encode(&format!(" {k}")));
            }
        }
        tpl.header = header;
        tpl.functions = tools.functions.iter().map(|f| tpl.fn_spec(f)).collect();
        Ok(tpl)
    }

    /// Rewrites times and dates in `text` as rendering does.
    pub fn normalize(&self, text: &str) -> String {
        self.normalizer.text(text)
    }

    /// Name of the reply function.
    pub fn respond_name(&self) -> &str {
        &self.respond_name
    }

    /// The underlying tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// Encodes text without special-token post-processing.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.tok
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// Decodes tokens back to text.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tok.decode(ids, false).unwrap_or_default()
    }

    fn fn_spec(&self, f: &tracelab_core::tools::Function) -> FnSpec {
        let names = f.parameter_names();
        let params: Vec<ParamSpec> = names
            .iter()
            .map(|k| {
                let schema = f.parameter(k).cloned().unwrap_or(Value::Null);
                let kind = if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                    ValueKind::Choice(
                        values
                            .iter()
                            .map(|v| (self.encode(&value_text(v)), v.clone()))
                            .collect(),
                    )
                } else {
                    match schema.get("type").and_then(Value::as_str) {
                        Some("boolean") => ValueKind::Choice(vec![
                            (self.encode(" true"), Value::Bool(true)),
                            (self.encode(" false"), Value::Bool(false)),
                        ]),
                        Some("integer") => ValueKind::Integer,
                        _ => ValueKind::Free,
                    }
                };
                ParamSpec {
                    key: k.to_string(),
                    key_tokens: self.encode(&format!(" {k}")),
                    kind,
                }
            })
            .collect();
        let required = f
            .required()
            .iter()
            .filter_map(|r| names.iter().position(|k| k == r))
            .collect();
        FnSpec {
            name: f.name.clone(),
            name_tokens: self.encode(&format!(" {}", f.name)),
            params,
            required,
        }
    }

    /// Index of the reply function in [`ChatTemplate::functions`], if the tools have one.
    pub fn respond_index(&self, tools: &ToolSet) -> Option<usize> {
        tools
            .functions
            .iter()
            .position(|f| f.kind == FunctionKind::Respond)
    }

    fn push(&self, r: &mut Rendered, ids: &[u32], target: Target) {
        r.tokens.extend_from_slice(ids);
        r.targets.extend(std::iter::repeat_n(target, ids.len()));
        r.copyable.extend(std::iter::repeat_n(false, ids.len()));
    }

    /// Like `push`, for text the copy head may copy from.
    fn push_copyable(&self, r: &mut Rendered, ids: &[u32], target: Target) {
        self.push(r, ids, target);
        let n = r.copyable.len();
        r.copyable[n - ids.len()..].fill(true);
    }

    /// A tool result: for JSON records, labels are context and values are copyable.
    fn push_result(&self, r: &mut Rendered, content: &str) {
        let Ok(v) = serde_json::from_str::<Value>(content) else {
            let text = self.normalizer.text(content);
            self.push_copyable(r, &self.encode(&format!(" {text}")), Target::None);
            return;
        };
        let records: Vec<&Value> = match &v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        if records.is_empty() {
            self.push(r, &self.encode(" no results"), Target::None);
            return;
        }
        let value = |v: &Value| match v {
            Value::String(s) => format!(" {}", self.normalizer.text(s)),
            other => value_text(other),
        };
        for rec in records.iter().take(self.max_records) {
            self.push(r, &self.encode("\n"), Target::None);
            match rec {
                Value::Object(m) => {
                    for (k, v) in m {
                        self.push(r, &self.encode(&format!(" {k}:")), Target::None);
                        self.push_copyable(r, &self.encode(&value(v)), Target::None);
                        self.push(r, &self.encode(","), Target::None);
                    }
                }
                other => self.push_copyable(r, &self.encode(&value(other)), Target::None),
            }
        }
        if records.len() > self.max_records {
            let more = format!("\n +{} more", records.len() - self.max_records);
            self.push(r, &self.encode(&more), Target::None);
        }
    }

    /// Renders a whole conversation (header first).
    pub fn render(&self, messages: &[Message]) -> Rendered {
        let mut r = Rendered::default();
        self.push(&mut r, &self.header, Target::None);
        r.header_len = r.tokens.len();
        for m in messages {
            let start = r.tokens.len();
            match m {
                Message::System { content } => {
                    self.push(&mut r, &[self.sp.system], Target::None);
                    let text = self.normalizer.text(content);
                    self.push_copyable(&mut r, &self.encode(&format!(" {text}")), Target::None);
                }
                Message::User { content } => {
                    self.push(&mut r, &[self.sp.user], Target::None);
                    let text = self.normalizer.text(content);
                    self.push_copyable(&mut r, &self.encode(&format!(" {text}")), Target::None);
                }
                Message::Assistant {
                    content,
                    tool_calls,
                } => {
                    let reply;
                    let calls: &[ToolCall] = if tool_calls.is_empty() {
                        let mut a = serde_json::Map::new();
                        a.insert(
                            "message".into(),
                            Value::String(content.clone().unwrap_or_default()),
                        );
                        reply = [ToolCall::new(self.respond_name.clone(), a)];
                        &reply
                    } else {
                        tool_calls
                    };
                    for c in calls {
                        self.push(&mut r, &[self.sp.call], Target::None);
                        self.call_tokens(c, &mut r);
                    }
                }
                Message::Tool { content, .. } => {
                    self.push(&mut r, &[self.sp.result], Target::None);
                    self.push_result(&mut r, content);
                }
            }
            r.segments.push((start, r.tokens.len()));
        }
        r
    }

    /// Appends a call's tokens (after `<|call|>`): name, then `<|arg|> key <|val|> value` per
    /// argument, then `<|end|>`. The token closing a value is a `Value` target.
    fn call_tokens(&self, call: &ToolCall, r: &mut Rendered) {
        self.push(
            r,
            &self.encode(&format!(" {}", call.name)),
            Target::Structure,
        );
        let mut after_value = false;
        for (k, v) in &call.arguments {
            self.push(
                r,
                &[self.sp.arg],
                if after_value {
                    Target::Value
                } else {
                    Target::Structure
                },
            );
            self.push(r, &self.encode(&format!(" {k}")), Target::Structure);
            self.push(r, &[self.sp.val], Target::Structure);
            let text = match v {
                Value::String(s) => format!(" {}", self.normalizer.text(s)),
                other => value_text(other),
            };
            self.push_copyable(r, &self.encode(&text), Target::Value);
            after_value = true;
        }
        self.push(
            r,
            &[self.sp.end],
            if after_value {
                Target::Value
            } else {
                Target::Structure
            },
        );
    }

    /// Cuts a rendered conversation into training windows of at most `context` tokens: each keeps
    /// the header and as many whole messages before its end as fit; windows partition the
    /// messages, so every assistant turn is trained once with the longest left context that fits.
    pub fn windows(&self, r: &Rendered, context: usize) -> Vec<Window> {
        let budget = context.saturating_sub(r.header_len).max(1);
        let mut out = Vec::new();
        let mut end = r.segments.len();
        while end > 0 {
            let mut start = end;
            let mut total = 0;
            while start > 0 {
                let (s, e) = r.segments[start - 1];
                if total + (e - s) > budget {
                    break;
                }
                total += e - s;
                start -= 1;
            }
            let (from, to) = if start == end {
                // One message longer than the budget: keep its end.
                start = end - 1;
                let (s, e) = r.segments[start];
                (e - budget.min(e - s), e)
            } else {
                (r.segments[start].0, r.segments[end - 1].1)
            };
            let mut tokens = r.tokens[..r.header_len].to_vec();
            let mut targets = r.targets[..r.header_len].to_vec();
            let mut copyable = r.copyable[..r.header_len].to_vec();
            tokens.extend_from_slice(&r.tokens[from..to]);
            targets.extend_from_slice(&r.targets[from..to]);
            copyable.extend_from_slice(&r.copyable[from..to]);
            if targets.iter().any(|t| *t != Target::None) {
                out.push(Window {
                    tokens,
                    targets,
                    copyable,
                });
            }
            end = start;
        }
        out.reverse();
        out
    }

    /// The prompt for predicting the next call after `messages`: header, the most recent whole
    /// messages that fit in `context - reserve` tokens, then `<|call|>`.
    pub fn prompt(&self, messages: &[Message], context: usize, reserve: usize) -> Prompt {
        let r = self.render(messages);
        let budget = context.saturating_sub(r.header_len + reserve + 1).max(1);
        let mut start = r.segments.len();
        let mut total = 0;
        while start > 0 {
            let (s, e) = r.segments[start - 1];
            if total + (e - s) > budget {
                break;
            }
            total += e - s;
            start -= 1;
        }
        let from = if start == r.segments.len() {
            r.tokens.len() - budget.min(r.tokens.len() - r.header_len)
        } else {
            r.segments[start].0
        };
        let mut tokens = r.tokens[..r.header_len].to_vec();
        let mut copyable = r.copyable[..r.header_len].to_vec();
        tokens.extend_from_slice(&r.tokens[from..]);
        copyable.extend_from_slice(&r.copyable[from..]);
        tokens.push(self.sp.call);
        copyable.push(false);
        Prompt { tokens, copyable }
    }
}

/// The text of an argument value as rendered: one leading space, strings verbatim, other JSON
/// values in their JSON form.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!(" {s}"),
        other => format!(" {other}"),
    }
}

/// Renders a tool result: a JSON list of records becomes `key: value,` pairs (values with their
/// leading space, as in calls), one record a line, at most `max_records` of them; anything else is
/// kept as text.
pub fn render_result(content: &str, max_records: usize) -> String {
    let Ok(v) = serde_json::from_str::<Value>(content) else {
        return format!(" {content}");
    };
    let records: Vec<&Value> = match &v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if records.is_empty() {
        return " no results".into();
    }
    let mut out = String::new();
    for rec in records.iter().take(max_records) {
        out.push('\n');
        match rec {
            Value::Object(m) => {
                for (k, v) in m {
                    out.push_str(&format!(" {k}:{},", value_text(v)));
                }
            }
            other => out.push_str(&value_text(other)),
        }
    }
    if records.len() > max_records {
        out.push_str(&format!("\n +{} more", records.len() - max_records));
    }
    out
}
