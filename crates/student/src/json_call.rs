//! Schema-constrained decoding in the JSON call layout of Hugging Face chat templates (Qwen3's,
//! Hermes'): the assistant writes `{"name": "FindRestaurants", "arguments": {"city": "San Jose",
//! "cuisine": "Italian"}}` as Python's `json.dumps` writes it (the chat template's `tojson`),
//! between a prefix and a suffix the template adds (`<tool_call>\n` … `\n</tool_call>`), which
//! [`CallLayout::probe`] learns by rendering a probe call.
//!
//! The rules are those of [`crate::grammar`] (the tiny template's token layout): the name is one
//! of the tools, keys are that function's (each at most once, every required one present before
//! the object closes), enum and boolean values are among the allowed ones, integers are digits,
//! free text runs up to its closing quote, a value holds at most `max_value_tokens` tokens and the
//! whole call fits `max_new_tokens`. The layout differs: a byte-level BPE token can span several
//! JSON pieces (`"}}`, `": "`), so this machine advances byte by byte, and a token is allowed when
//! all its bytes are. Prefix queries over names, keys and enum values reuse
//! the grammar module's `trie_next`.

use serde_json::{json, Map, Value};
use tracelab_core::conversation::{Message, ToolCall};
use tracelab_core::tools::ToolSet;

use crate::chat_template::{python_json, ChatTemplate, TemplateError};
use crate::grammar::trie_next;
use crate::sampling::Sampler;

/// How an argument value is written.
#[derive(Debug, Clone)]
pub enum JsonKind {
    /// A JSON string of free text.
    Str,
    /// One of a fixed list (enum, boolean): the JSON text of each and the value it stands for.
    Choice(Vec<(Vec<u8>, Value)>),
    /// An optionally negative run of digits (JSON Schema `integer`).
    Integer,
    /// Digits with at most one decimal point (JSON Schema `number`).
    Number,
}

/// One argument as the decoder sees it.
#[derive(Debug, Clone)]
pub struct JsonParam {
    /// Argument name.
    pub key: String,
    /// The name as it appears between the quotes (JSON-escaped).
    key_bytes: Vec<u8>,
    /// How its value is written.
    pub kind: JsonKind,
}

/// One function as the decoder sees it.
#[derive(Debug, Clone)]
pub struct JsonFn {
    /// Function name.
    pub name: String,
    name_bytes: Vec<u8>,
    /// Arguments in schema order.
    pub params: Vec<JsonParam>,
    /// Indices of required arguments.
    pub required: Vec<usize>,
}

/// The tool schemas in the form the JSON decoder walks.
#[derive(Debug, Clone)]
pub struct JsonSchema {
    /// Callable functions.
    pub functions: Vec<JsonFn>,
}

/// The inside of a JSON string literal for `s` (what sits between the quotes).
fn escaped(s: &str) -> Vec<u8> {
    let q = serde_json::to_string(s).expect("strings serialize");
    q.as_bytes()[1..q.len() - 1].to_vec()
}

fn json_text(v: &Value) -> Vec<u8> {
    let mut out = String::new();
    python_json(v, None, 0, false, &mut out);
    out.into_bytes()
}

impl JsonSchema {
    /// The decoder's view of `tools`. A function with more than 64 arguments is refused (the
    /// state tracks used arguments in a bit set).
    pub fn new(tools: &ToolSet) -> Result<Self, String> {
        let mut functions = Vec::new();
        for f in &tools.functions {
            let names = f.parameter_names();
            if names.len() > 64 {
                return Err(format!(
                    "function {} has {} arguments; the JSON decoder handles at most 64",
                    f.name,
                    names.len()
                ));
            }
            let params = names
                .iter()
                .map(|k| {
                    let schema = f.parameter(k).cloned().unwrap_or(Value::Null);
                    let kind = if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                        JsonKind::Choice(values.iter().map(|v| (json_text(v), v.clone())).collect())
                    } else {
                        match schema.get("type").and_then(Value::as_str) {
                            Some("boolean") => JsonKind::Choice(vec![
                                (b"true".to_vec(), Value::Bool(true)),
                                (b"false".to_vec(), Value::Bool(false)),
                            ]),
                            Some("integer") => JsonKind::Integer,
                            Some("number") => JsonKind::Number,
                            _ => JsonKind::Str,
                        }
                    };
                    JsonParam {
                        key: k.to_string(),
                        key_bytes: escaped(k),
                        kind,
                    }
                })
                .collect();
            let required = f
                .required()
                .iter()
                .filter_map(|r| names.iter().position(|k| k == r))
                .collect();
            functions.push(JsonFn {
                name: f.name.clone(),
                name_bytes: escaped(&f.name),
                params,
                required,
            });
        }
        Ok(JsonSchema { functions })
    }
}

/// What the chat template writes around the call JSON of an assistant turn that makes one call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallLayout {
    /// Text between the generation prompt and the JSON (Qwen3: `<think>\n\n</think>\n\n<tool_call>\n`).
    pub prefix: String,
    /// Text after the JSON up to the end of the turn (Qwen3: `\n</tool_call><|im_end|>`).
    pub suffix: String,
}

impl CallLayout {
    /// Learns the layout by rendering a conversation whose last assistant turn makes a probe call
    /// and finding the call's `json.dumps` text in the assistant's part. Fails when the template
    /// writes calls some other way (then this decoder does not apply).
    pub fn probe(tpl: &ChatTemplate, tools: &ToolSet) -> Result<Self, TemplateError> {
        let args: Map<String, Value> = [("tracelab_key".to_string(), json!("probe value"))]
            .into_iter()
            .collect();
        let call = ToolCall::new("tracelab_probe", args.clone());
        let user = Message::User {
            content: "hello".into(),
        };
        let prompt = tpl.render_text(std::slice::from_ref(&user), Some(tools), true)?;
        let full = tpl.render_text(&[user, Message::call(call)], Some(tools), false)?;
        let fail = |why: &str| TemplateError::Spans {
            origin: "the chat template".into(),
            message: 1,
            why: why.to_string(),
        };
        let answer = full.strip_prefix(&prompt).ok_or_else(|| {
            fail("the conversation up to the assistant turn renders differently from the whole")
        })?;
        let mut expected = String::new();
        python_json(
            &json!({"name": "tracelab_probe", "arguments": Value::Object(args)}),
            None,
            0,
            false,
            &mut expected,
        );
        let at = answer.find(&expected).ok_or_else(|| {
            fail(&format!(
                "the template does not write a tool call as {expected} (the JSON layout of \
                 Qwen3-style templates, the only one the qwen3 decoder knows); it wrote {answer:?}"
            ))
        })?;
        Ok(CallLayout {
            prefix: answer[..at].to_string(),
            suffix: answer[at + expected.len()..].to_string(),
        })
    }
}

/// Every token's bytes, and indexes that keep the per-step search small.
#[derive(Debug, Clone)]
pub struct TokenBytes {
    bytes: Vec<Vec<u8>>,
    /// Tokens by first byte (allowed tokens are never empty).
    by_first: Vec<Vec<u32>>,
    /// Tokens that may sit anywhere inside a JSON string: printable or non-ASCII bytes, no quote
    /// or backslash.
    plain: Vec<bool>,
}

/// GPT-2's byte-to-character table of byte-level BPE, inverted: vocabulary characters to bytes.
fn byte_level_inverse() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::new();
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid char")
        };
        map.insert(c, b);
    }
    map
}

impl TokenBytes {
    /// Reads the bytes of ids `0..vocab` (the model's vocabulary, which may be larger than the
    /// tokenizer's). Added and special tokens (`<tool_call>`, `<|im_end|>`) and ids the tokenizer
    /// does not have get no bytes: they are never allowed inside the call.
    pub fn new(tok: &tokenizers::Tokenizer, vocab: usize) -> Self {
        let inverse = byte_level_inverse();
        let added = tok.get_added_tokens_decoder();
        let bytes: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                if added.contains_key(&id) {
                    return Vec::new();
                }
                let Some(piece) = tok.id_to_token(id) else {
                    return Vec::new();
                };
                // Byte-level vocabularies spell bytes as characters; others decode as text.
                piece
                    .chars()
                    .map(|c| inverse.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| tok.decode(&[id], false).unwrap_or_default().into_bytes())
            })
            .collect();
        let mut by_first = vec![Vec::new(); 256];
        for (id, b) in bytes.iter().enumerate() {
            if let Some(&first) = b.first() {
                by_first[first as usize].push(id as u32);
            }
        }
        let plain = bytes
            .iter()
            .map(|b| !b.is_empty() && b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\'))
            .collect();
        TokenBytes {
            bytes,
            by_first,
            plain,
        }
    }

    /// The bytes of token `id`.
    pub fn bytes(&self, id: u32) -> &[u8] {
        &self.bytes[id as usize]
    }
}

/// Fewest bytes of a value of this kind (`""` can only close under a tight budget; see feed).
fn min_value_len(kind: &JsonKind) -> usize {
    match kind {
        JsonKind::Str => 2,
        JsonKind::Integer | JsonKind::Number => 1,
        JsonKind::Choice(v) => v.iter().map(|(b, _)| b.len()).min().unwrap_or(1),
    }
}

/// Limits that keep a call short enough to finish within the token budget.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    /// Most tokens in one argument value.
    pub max_value_tokens: usize,
    /// Most tokens of the whole call.
    pub max_new_tokens: usize,
}

const OPEN: &[u8] = b"{\"name\": \"";
const ARGS: &[u8] = b", \"arguments\": {";
const KEY_SEP: &[u8] = b": ";
const NEXT_KEY: &[u8] = b" \"";

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Bytes of a fixed piece still to come, then `then`.
    Lit(&'static [u8], usize, Box<Phase>),
    Name,
    /// After `{` of the arguments, or after `, `: a quote opens a key, `}` closes the object.
    KeyOrClose,
    Key,
    /// The value of argument `p`; `open` once a string's opening quote is written.
    Value {
        p: usize,
        open: bool,
        escape: u8,
    },
    /// After a value: `,` or `}`.
    AfterValue,
    /// The closing `}` of the call object.
    Close,
    Done,
}

/// The decoding state of one call.
#[derive(Debug, Clone)]
pub struct JsonCallState {
    phase: Phase,
    func: Option<usize>,
    used: u64,
    /// Bytes of the current name, key or value.
    item: Vec<u8>,
    /// Tokens of the current value, and of the whole call.
    value_tokens: usize,
    generated: usize,
    args: Map<String, Value>,
}

impl Default for JsonCallState {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonCallState {
    /// A fresh state, right after the layout's prefix.
    pub fn new() -> Self {
        JsonCallState {
            phase: Phase::Lit(OPEN, 0, Box::new(Phase::Name)),
            func: None,
            used: 0,
            item: Vec::new(),
            value_tokens: 0,
            generated: 0,
            args: Map::new(),
        }
    }

    /// Whether the call's JSON is complete.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    fn missing(&self, f: &JsonFn) -> impl Iterator<Item = usize> + '_ {
        let used = self.used;
        f.required
            .clone()
            .into_iter()
            .filter(move |&r| used & (1 << r) == 0)
    }

    /// Fewest bytes of `, "key": value` for every required argument of `f` not in `used`.
    fn args_cost(f: &JsonFn, used: u64) -> usize {
        f.required
            .iter()
            .filter(|&&r| used & (1u64 << r) == 0)
            .map(|&p| {
                let key = &f.params[p];
                let value = min_value_len(&key.kind);
                // `, "key": value` (the first key has `"` instead of `, "`; an overestimate by 2)
                2 + 2 + key.key_bytes.len() + KEY_SEP.len() + value
            })
            .sum()
    }

    /// Fewest bytes (so at most this many tokens) that complete the call from here.
    fn min_finish(&self, s: &JsonSchema) -> usize {
        let func = self.func.map(|f| &s.functions[f]);
        let rest_args = |st: &Self| -> usize { func.map_or(0, |f| Self::args_cost(f, st.used)) };
        match &self.phase {
            Phase::Done => 0,
            Phase::Close => 1,
            Phase::Lit(lit, at, then) => {
                let mut next = self.clone();
                next.phase = (**then).clone();
                lit.len() - at + next.min_finish(s)
            }
            Phase::Name => s
                .functions
                .iter()
                .filter(|f| f.name_bytes.starts_with(&self.item))
                .map(|f| {
                    f.name_bytes.len() - self.item.len()
                        + 1
                        + ARGS.len()
                        + Self::args_cost(f, 0)
                        + 2
                })
                .min()
                .unwrap_or(0),
            Phase::KeyOrClose | Phase::AfterValue => rest_args(self) + 2,
            Phase::Key => {
                // The key being written counts as used: its value is part of this estimate,
                // not of the required arguments still to come.
                let f = func.expect("function chosen");
                f.params
                    .iter()
                    .enumerate()
                    .filter(|(i, k)| {
                        self.used & (1u64 << i) == 0 && k.key_bytes.starts_with(&self.item)
                    })
                    .map(|(i, k)| {
                        k.key_bytes.len() - self.item.len()
                            + 1
                            + KEY_SEP.len()
                            + min_value_len(&k.kind)
                            + Self::args_cost(f, self.used | (1u64 << i))
                            + 2
                    })
                    .min()
                    .unwrap_or(0)
            }
            Phase::Value { p, open, .. } => {
                let f = func.expect("function chosen");
                let value_left = match &f.params[*p].kind {
                    JsonKind::Str if !*open => 2,
                    JsonKind::Str => 1,
                    JsonKind::Integer | JsonKind::Number => usize::from(self.item.is_empty()),
                    JsonKind::Choice(v) => v
                        .iter()
                        .filter(|(b, _)| b.starts_with(&self.item))
                        .map(|(b, _)| b.len() - self.item.len())
                        .min()
                        .unwrap_or(0),
                };
                value_left + rest_args(self) + 2
            }
        }
    }

    /// Advances by one byte; `false` (state unspecified) when the byte is not allowed. `tight`
    /// means the token budget is nearly spent: optional keys are closed off and values must end.
    fn feed(&mut self, s: &JsonSchema, b: u8, lim: &JsonLimits, tight: bool) -> bool {
        match &mut self.phase {
            Phase::Done => false,
            Phase::Lit(lit, at, then) => {
                if lit[*at] != b {
                    return false;
                }
                *at += 1;
                if *at == lit.len() {
                    self.phase = std::mem::replace(then.as_mut(), Phase::Done);
                }
                true
            }
            Phase::Name => {
                let names = s.functions.iter().map(|f| f.name_bytes.as_slice());
                let (next, complete) = trie_next(names, &self.item);
                if complete && b == b'"' {
                    self.func = s.functions.iter().position(|f| f.name_bytes == self.item);
                    self.item.clear();
                    self.phase = Phase::Lit(ARGS, 0, Box::new(Phase::KeyOrClose));
                    true
                } else if next.contains(&b) {
                    self.item.push(b);
                    true
                } else {
                    false
                }
            }
            Phase::KeyOrClose | Phase::AfterValue => {
                let f = &s.functions[self.func.expect("function chosen")];
                let after_value = self.phase == Phase::AfterValue;
                let missing = self.missing(f).count();
                let unused = (0..f.params.len()).any(|i| self.used & (1 << i) == 0);
                match b {
                    b'}' if missing == 0 => {
                        self.phase = Phase::Close;
                        true
                    }
                    b'"' if !after_value && unused && (missing > 0 || !tight) => {
                        self.phase = Phase::Key;
                        true
                    }
                    b',' if after_value && unused && (missing > 0 || !tight) => {
                        self.phase = Phase::Lit(NEXT_KEY, 0, Box::new(Phase::Key));
                        true
                    }
                    _ => false,
                }
            }
            Phase::Key => {
                let f = &s.functions[self.func.expect("function chosen")];
                let used = self.used;
                let missing: Vec<usize> = self.missing(f).collect();
                let keys = f
                    .params
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| used & (1 << i) == 0 && (!tight || missing.contains(i)))
                    .map(|(_, k)| k.key_bytes.as_slice());
                let (next, complete) = trie_next(keys, &self.item);
                if complete && b == b'"' {
                    let p = f
                        .params
                        .iter()
                        .enumerate()
                        .position(|(i, k)| used & (1 << i) == 0 && k.key_bytes == self.item)
                        .expect("complete key");
                    self.used |= 1 << p;
                    self.item.clear();
                    self.value_tokens = 0;
                    let value = Phase::Value {
                        p,
                        open: false,
                        escape: 0,
                    };
                    self.phase = Phase::Lit(KEY_SEP, 0, Box::new(value));
                    true
                } else if next.contains(&b) {
                    self.item.push(b);
                    true
                } else {
                    false
                }
            }
            Phase::Value { p, open, escape } => {
                let p = *p;
                let f = &s.functions[self.func.expect("function chosen")];
                let full = self.value_tokens >= lim.max_value_tokens || tight;
                match &f.params[p].kind {
                    JsonKind::Choice(values) => {
                        let (next, complete) =
                            trie_next(values.iter().map(|(t, _)| t.as_slice()), &self.item);
                        if complete && (b == b',' || b == b'}') {
                            let value = values
                                .iter()
                                .find(|(t, _)| *t == self.item)
                                .map(|(_, v)| v.clone())
                                .unwrap_or(Value::Null);
                            self.close_value(f, p, value);
                            self.phase = Phase::AfterValue;
                            return self.feed(s, b, lim, tight);
                        }
                        if next.contains(&b) {
                            self.item.push(b);
                            return true;
                        }
                        false
                    }
                    JsonKind::Integer | JsonKind::Number => {
                        let number = matches!(f.params[p].kind, JsonKind::Number);
                        let digits = self.item.iter().filter(|c| c.is_ascii_digit()).count();
                        if digits > 0 && (b == b',' || b == b'}') {
                            let text = String::from_utf8_lossy(&self.item).into_owned();
                            let value = serde_json::from_str::<Value>(&text)
                                .unwrap_or_else(|_| Value::from(0));
                            self.close_value(f, p, value);
                            self.phase = Phase::AfterValue;
                            return self.feed(s, b, lim, tight);
                        }
                        let ok = !full
                            && (b.is_ascii_digit()
                                || (b == b'-' && self.item.is_empty())
                                || (number
                                    && b == b'.'
                                    && digits > 0
                                    && !self.item.contains(&b'.')));
                        if ok {
                            self.item.push(b);
                        }
                        ok
                    }
                    JsonKind::Str => {
                        if !*open {
                            if b == b'"' {
                                *open = true;
                                return true;
                            }
                            return false;
                        }
                        if *escape > 0 {
                            // After a backslash: one of the escapes, or four hex digits of \u.
                            let ok = if *escape == 1 {
                                if b == b'u' {
                                    *escape = 5;
                                    true
                                } else {
                                    *escape = 0;
                                    b"\"\\/bfnrt".contains(&b)
                                }
                            } else {
                                *escape = if *escape == 2 { 0 } else { *escape - 1 };
                                b.is_ascii_hexdigit()
                            };
                            if ok {
                                self.item.push(b);
                            }
                            return ok;
                        }
                        if b == b'"' {
                            let has_text = self.item.iter().any(|c| !c.is_ascii_whitespace());
                            if !has_text && !full {
                                return false;
                            }
                            let mut quoted = Vec::with_capacity(self.item.len() + 2);
                            quoted.push(b'"');
                            quoted.extend_from_slice(&self.item);
                            quoted.push(b'"');
                            let value =
                                serde_json::from_slice::<String>(&quoted).unwrap_or_else(|_| {
                                    String::from_utf8_lossy(&self.item).into_owned()
                                });
                            self.close_value(f, p, Value::String(value.trim().to_string()));
                            self.phase = Phase::AfterValue;
                            return true;
                        }
                        if full || b < 0x20 {
                            return false;
                        }
                        if b == b'\\' {
                            *escape = 1;
                        }
                        self.item.push(b);
                        true
                    }
                }
            }
            Phase::Close => {
                if b == b'}' {
                    self.phase = Phase::Done;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn close_value(&mut self, f: &JsonFn, p: usize, value: Value) {
        self.args.insert(f.params[p].key.clone(), value);
        self.item.clear();
    }

    fn in_value(&self) -> bool {
        matches!(self.phase, Phase::Value { .. })
    }

    /// Whether `left` tokens are few enough that the call must head for its end: no optional
    /// keys, values close.
    fn tight(&self, s: &JsonSchema, left: usize) -> bool {
        left <= self.min_finish(s) + 2
    }

    /// The state after `bytes`, when every byte is allowed and the call can still finish within
    /// the budget afterwards.
    fn after(
        &self,
        s: &JsonSchema,
        bytes: &[u8],
        lim: &JsonLimits,
        left: usize,
        tight: bool,
    ) -> Option<JsonCallState> {
        if bytes.is_empty() {
            return None;
        }
        let mut next = self.clone();
        for &b in bytes {
            if next.done() || !next.feed(s, b, lim, tight) {
                return None;
            }
        }
        (next.min_finish(s) < left).then_some(next)
    }

    /// Inside an open string, tokens without quote or backslash only add text: one check covers
    /// them all (whether one more text byte is allowed). Everything else is simulated byte by byte.
    fn plain_ok(&self, s: &JsonSchema, lim: &JsonLimits, left: usize, tight: bool) -> bool {
        let open_string = matches!(self.phase, Phase::Value { open: true, escape: 0, .. })
            && self
                .func
                .is_some_and(|f| matches!(self.phase, Phase::Value { p, .. } if matches!(s.functions[f].params[p].kind, JsonKind::Str)));
        open_string && self.after(s, b"a", lim, left, tight).is_some()
    }

    /// Every token [`JsonCallState::step`] may pick from here (indexed by id): the whole mask,
    /// which `step` itself never builds. For measurements and comparisons with other
    /// constraint engines (`benches/constraints.rs`).
    pub fn allowed(&self, s: &JsonSchema, table: &TokenBytes, lim: &JsonLimits) -> Vec<bool> {
        let left = lim.max_new_tokens.saturating_sub(self.generated);
        let tight = self.tight(s, left);
        let plain_ok = self.plain_ok(s, lim, left, tight);
        let mut mask = if plain_ok {
            table.plain.clone()
        } else {
            vec![false; table.bytes.len()]
        };
        self.others(s, table, lim, (left, tight), plain_ok, &mut |id, _| {
            mask[id as usize] = true
        });
        mask
    }

    /// The best-scoring allowed token and the state after it (greedy decoding).
    fn best(
        &self,
        s: &JsonSchema,
        table: &TokenBytes,
        scores: &[f32],
        lim: &JsonLimits,
        (left, tight): (usize, bool),
        plain_ok: bool,
    ) -> Option<(u32, JsonCallState)> {
        let mut best: Option<(f32, u32, JsonCallState)> = None;
        let mut consider = |id: u32, st: JsonCallState| {
            let sc = scores[id as usize];
            if best.as_ref().is_none_or(|(b, _, _)| sc > *b) {
                best = Some((sc, id, st));
            }
        };
        if plain_ok {
            let mut top: Option<(f32, u32)> = None;
            for (id, &plain) in table.plain.iter().enumerate() {
                if plain && top.is_none_or(|(b, _)| scores[id] > b) {
                    top = Some((scores[id], id as u32));
                }
            }
            if let Some((_, id)) = top {
                consider(id, self.with_plain(table, id));
            }
        }
        self.others(s, table, lim, (left, tight), plain_ok, &mut consider);
        best.map(|(_, id, st)| (id, st))
    }

    /// The state after a plain string token (no quote, no backslash: it only adds text).
    fn with_plain(&self, table: &TokenBytes, id: u32) -> JsonCallState {
        let mut st = self.clone();
        st.item.extend_from_slice(table.bytes(id));
        st
    }

    /// Calls `f(token, state after it)` for every allowed token that is not plain string text
    /// (when `plain_ok`, those are covered at once by the caller).
    fn others(
        &self,
        s: &JsonSchema,
        table: &TokenBytes,
        lim: &JsonLimits,
        (left, tight): (usize, bool),
        plain_ok: bool,
        f: &mut dyn FnMut(u32, JsonCallState),
    ) {
        for first in 0..=255u8 {
            let mut probe = self.clone();
            if probe.done() || !probe.feed(s, first, lim, tight) {
                continue;
            }
            for &id in &table.by_first[first as usize] {
                if plain_ok && table.plain[id as usize] {
                    continue;
                }
                if let Some(st) = self.after(s, table.bytes(id), lim, left, tight) {
                    f(id, st);
                }
            }
        }
    }

    /// Picks the allowed token with the best score (or draws one with `sampler`) and advances
    /// the state by it. Returns `None` when no token is allowed (the state stays as it was).
    pub fn step(
        &mut self,
        s: &JsonSchema,
        table: &TokenBytes,
        scores: &[f32],
        lim: &JsonLimits,
        sampler: Option<&mut Sampler>,
    ) -> Option<u32> {
        let left = lim.max_new_tokens.saturating_sub(self.generated);
        let tight = self.tight(s, left);
        let plain_ok = self.plain_ok(s, lim, left, tight);
        let (id, mut st) = match sampler {
            None => self.best(s, table, scores, lim, (left, tight), plain_ok)?,
            Some(sampler) => {
                let mut candidates = Vec::new();
                if plain_ok {
                    candidates.extend(
                        (0..table.plain.len())
                            .filter(|&id| table.plain[id])
                            .map(|id| (id as u32, scores[id])),
                    );
                }
                self.others(s, table, lim, (left, tight), plain_ok, &mut |id, _| {
                    candidates.push((id, scores[id as usize]))
                });
                let id = sampler.draw(&mut candidates)?;
                let st = if plain_ok && table.plain[id as usize] {
                    self.with_plain(table, id)
                } else {
                    self.after(s, table.bytes(id), lim, left, tight)?
                };
                (id, st)
            }
        };
        st.generated = self.generated + 1;
        st.value_tokens = if st.in_value() && self.in_value() {
            self.value_tokens + 1
        } else if st.in_value() {
            1
        } else {
            0
        };
        *self = st;
        Some(id)
    }

    /// The decoded call: the function and the arguments closed so far (complete once
    /// [`JsonCallState::done`]).
    pub fn call(&self, s: &JsonSchema) -> ToolCall {
        let name = self
            .func
            .map(|f| s.functions[f].name.clone())
            .unwrap_or_default();
        ToolCall::new(name, self.args.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracelab_core::job::Sampling;

    fn schema() -> JsonSchema {
        let tools = json!([
            {"type": "function", "function": {"name": "FindRestaurants", "description": "",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string"},
                    "cuisine": {"type": "string", "enum": ["Italian", "Mexican"]},
                    "party": {"type": "integer"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "respond_to_user", "description": "",
                "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
                "required": ["message"]}}}
        ]);
        JsonSchema::new(&ToolSet::from_openai(&tools, "respond_to_user", &[], "t").unwrap())
            .unwrap()
    }

    const LIM: JsonLimits = JsonLimits {
        max_value_tokens: 40,
        max_new_tokens: 200,
    };

    /// Feeds `text` as one-byte tokens through `after`, as decoding would.
    fn run(s: &JsonSchema, text: &str) -> Option<JsonCallState> {
        let mut st = JsonCallState::new();
        for b in text.bytes() {
            let left = LIM.max_new_tokens - st.generated;
            st = st.after(s, &[b], &LIM, left, st.tight(s, left))?;
            st.generated += 1;
        }
        Some(st)
    }

    #[test]
    fn accepts_the_json_dumps_layout_and_builds_the_call() {
        let s = schema();
        let st = run(
            &s,
            r#"{"name": "FindRestaurants", "arguments": {"cuisine": "Mexican", "city": "San \"Jose\"", "party": 4}}"#,
        )
        .expect("valid");
        assert!(st.done());
        let call = st.call(&s);
        assert_eq!(call.name, "FindRestaurants");
        assert_eq!(
            Value::Object(call.arguments),
            json!({"cuisine": "Mexican", "city": "San \"Jose\"", "party": 4})
        );
    }

    #[test]
    fn refuses_what_the_schema_does_not_allow() {
        let s = schema();
        for bad in [
            r#"{"name": "Find"#.to_string() + "X",
            r#"{"name": "FindRestaurants", "arguments": {}}"#.into(), // city is required
            r#"{"name": "FindRestaurants", "arguments": {"cuisine": "Thai"#.into(),
            r#"{"name": "FindRestaurants", "arguments": {"town"#.into(),
            r#"{"name": "FindRestaurants", "arguments": {"city": "A", "city"#.into(),
            r#"{"name": "FindRestaurants", "arguments": {"city": "A", "party": 4x"#.into(),
            r#"{"name": "FindRestaurants", "arguments": {"city": ""#.to_string() + "\"",
        ] {
            assert!(run(&s, &bad).is_none(), "accepted {bad}");
        }
    }

    /// Bytes as tokens, plus one "San Jose" token.
    fn byte_table() -> TokenBytes {
        let mut table_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        table_bytes.push(b"San Jose".to_vec());
        let mut by_first = vec![Vec::new(); 256];
        for (id, b) in table_bytes.iter().enumerate() {
            by_first[b[0] as usize].push(id as u32);
        }
        let plain = table_bytes
            .iter()
            .map(|b| b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\'))
            .collect();
        TokenBytes {
            bytes: table_bytes,
            by_first,
            plain,
        }
    }

    /// Checks `call` against [`schema`]'s function as a tool set validates it.
    fn assert_valid(call: &ToolCall) {
        let tools = ToolSet::from_openai(
            &json!([{"type": "function", "function": {"name": "FindRestaurants",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string"},
                    "cuisine": {"type": "string", "enum": ["Italian", "Mexican"]},
                    "party": {"type": "integer"}}, "required": ["city"]}}}]),
            "respond_to_user",
            &[],
            "t",
        )
        .unwrap();
        tools
            .validator()
            .check(call)
            .unwrap_or_else(|e| panic!("{call:?}: {e}"));
    }

    /// Decodes to the end with `scores` at every step, within `lim`.
    fn decode(
        s: &JsonSchema,
        table: &TokenBytes,
        scores: &[f32],
        lim: &JsonLimits,
        mut sampler: Option<Sampler>,
    ) -> ToolCall {
        let mut st = JsonCallState::new();
        let mut n = 0;
        while !st.done() {
            if st.step(s, table, scores, lim, sampler.as_mut()).is_none() {
                panic!("no token allowed after {n} tokens: {st:?}");
            }
            n += 1;
            assert!(n <= lim.max_new_tokens, "over budget");
        }
        st.call(s)
    }

    #[test]
    fn a_tight_budget_still_ends_in_a_valid_call() {
        let s = schema();
        // Prefer ever more text, so only the budget ends the value.
        let table = byte_table();
        let lim = JsonLimits {
            max_value_tokens: 5,
            max_new_tokens: 60,
        };
        let mut scores = vec![0f32; table.bytes.len()];
        scores[b'x' as usize] = 5.0; // the model would write x forever
        scores[256] = 1.0;
        assert_valid(&decode(&s, &table, &scores, &lim, None));
    }

    #[test]
    fn sampled_calls_are_valid_and_repeat_with_their_seed() {
        let s = schema();
        let table = byte_table();
        let lim = JsonLimits {
            max_value_tokens: 6,
            max_new_tokens: 80,
        };
        // Every token equally likely: only the constraints shape what is drawn.
        let scores = vec![0f32; table.bytes.len()];
        let sampler = |seed| {
            Some(Sampler::new(&Sampling {
                temperature: 1.0,
                top_p: 1.0,
                seed,
            }))
        };
        let calls: Vec<ToolCall> = (0..6)
            .map(|seed| decode(&s, &table, &scores, &lim, sampler(seed)))
            .collect();
        calls.iter().for_each(assert_valid);
        assert_eq!(calls[2], decode(&s, &table, &scores, &lim, sampler(2)));
        assert!(calls.iter().any(|c| c != &calls[0]), "six seeds, one call");
    }
}
