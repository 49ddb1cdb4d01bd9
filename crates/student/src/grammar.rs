//! Schema-constrained decoding: a per-sequence state machine over the template's call layout that
//! says which tokens may come next, so every decoded call names an existing function, uses only
//! its argument keys (each at most once, every required one present), picks enum values among the
//! allowed ones and writes free text token by token up to a closer.
//!
//! This is the tiny template's layout, where names, keys and values are separated by special
//! tokens. Hugging Face students write calls as JSON text instead: [`crate::json_call`] applies
//! the same rules to that layout, byte by byte.

use serde_json::{Map, Value};
use tracelab::conversation::ToolCall;

use crate::template::{ChatTemplate, FnSpec, ValueKind};

/// Tokens allowed next.
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    /// Exactly these tokens.
    Only(Vec<u32>),
    /// Any ordinary (non-special) token except `banned`, or one of `closers`.
    Text {
        /// Closers allowed now.
        closers: Vec<u32>,
        /// Tokens that would repeat a bigram of the value (copy loops such as `Zabu Zabu Zabu`).
        banned: Vec<u32>,
    },
    /// A token of digits, or one of these.
    Digits(Vec<u32>),
}

#[derive(Debug, Clone)]
enum Phase {
    Name,
    Key,
    Value(usize),
    Done,
}

/// The decoding state of one sequence.
#[derive(Debug, Clone)]
pub struct CallState {
    phase: Phase,
    func: Option<usize>,
    used: Vec<usize>,
    item: Vec<u32>,
    args: Map<String, Value>,
    generated: usize,
}

/// Prefix-trie query over candidate sequences (token ids here, bytes in [`crate::json_call`]):
/// the items that may follow `prefix`, and whether `prefix` is itself complete.
pub(crate) fn trie_next<'a, T: Copy + PartialEq + 'a>(
    cands: impl Iterator<Item = &'a [T]>,
    prefix: &[T],
) -> (Vec<T>, bool) {
    let mut next = Vec::new();
    let mut complete = false;
    for c in cands {
        if c.len() >= prefix.len() && c[..prefix.len()] == *prefix {
            if c.len() == prefix.len() {
                complete = true;
            } else if !next.contains(&c[prefix.len()]) {
                next.push(c[prefix.len()]);
            }
        }
    }
    (next, complete)
}

/// Limits that keep a call short enough to finish within the token budget.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tokens in one free-text value.
    pub max_value_tokens: usize,
    /// Most tokens after `<|call|>` in all.
    pub max_new_tokens: usize,
}

impl Default for CallState {
    fn default() -> Self {
        Self::new()
    }
}

impl CallState {
    /// A fresh state, right after `<|call|>`.
    pub fn new() -> Self {
        CallState {
            phase: Phase::Name,
            func: None,
            used: Vec::new(),
            item: Vec::new(),
            args: Map::new(),
            generated: 0,
        }
    }

    /// Whether the call is complete.
    pub fn done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Whether the next token is an argument value token (or the closer after one): the positions
    /// where the copy head is mixed in.
    pub fn in_value(&self) -> bool {
        matches!(self.phase, Phase::Value(_))
    }

    fn missing_required(&self, f: &FnSpec) -> Vec<usize> {
        f.required
            .iter()
            .copied()
            .filter(|r| !self.used.contains(r))
            .collect()
    }

    /// Tokens still needed, at least, to finish the call validly from a closed value.
    fn min_finish(&self, tpl: &ChatTemplate, f: &FnSpec) -> usize {
        self.missing_required(f)
            .iter()
            .map(|&p| 2 + f.params[p].key_tokens.len() + 1 + choice_len(&f.params[p].kind))
            .sum::<usize>()
            + 1
            + usize::from(tpl.sp.end == tpl.sp.pad)
    }

    fn closers(&self, tpl: &ChatTemplate, f: &FnSpec, wrap_up: bool) -> Vec<u32> {
        let missing = self.missing_required(f);
        let mut c = Vec::new();
        let optional_left = self.used.len() < f.params.len();
        if !missing.is_empty() || (optional_left && !wrap_up) {
            c.push(tpl.sp.arg);
        }
        if missing.is_empty() {
            c.push(tpl.sp.end);
        }
        c
    }

    /// The tokens allowed next.
    pub fn allowed(&self, tpl: &ChatTemplate, lim: &Limits) -> Allowed {
        match &self.phase {
            Phase::Done => Allowed::Only(vec![tpl.sp.pad]),
            Phase::Name => {
                let (mut next, complete) = trie_next(
                    tpl.functions.iter().map(|f| f.name_tokens.as_slice()),
                    &self.item,
                );
                if complete {
                    let f = tpl
                        .functions
                        .iter()
                        .find(|f| f.name_tokens == self.item)
                        .expect("complete name");
                    if !f.params.is_empty() {
                        next.push(tpl.sp.arg);
                    }
                    if f.required.is_empty() {
                        next.push(tpl.sp.end);
                    }
                }
                Allowed::Only(next)
            }
            Phase::Key => {
                let f = &tpl.functions[self.func.expect("function chosen")];
                let left = lim.max_new_tokens.saturating_sub(self.generated);
                let wrap_up = self.item.is_empty() && left <= self.min_finish(tpl, f) + 4;
                let missing = self.missing_required(f);
                let keys = (0..f.params.len())
                    .filter(|p| !self.used.contains(p) && (!wrap_up || missing.contains(p)))
                    .map(|p| f.params[p].key_tokens.as_slice());
                let (mut next, complete) = trie_next(keys, &self.item);
                if complete {
                    next.push(tpl.sp.val);
                }
                Allowed::Only(next)
            }
            Phase::Value(p) => {
                let f = &tpl.functions[self.func.expect("function chosen")];
                let left = lim.max_new_tokens.saturating_sub(self.generated);
                let wrap_up = left <= self.min_finish(tpl, f) + 1;
                match &f.params[*p].kind {
                    ValueKind::Choice(values) => {
                        let (mut next, complete) =
                            trie_next(values.iter().map(|(t, _)| t.as_slice()), &self.item);
                        if complete {
                            next.extend(self.closers(tpl, f, wrap_up));
                        }
                        Allowed::Only(next)
                    }
                    ValueKind::Free | ValueKind::Integer => {
                        let has_text = !tpl.decode(&self.item).trim().is_empty();
                        let full = self.item.len() >= lim.max_value_tokens || wrap_up;
                        let closers = if has_text || full {
                            self.closers(tpl, f, wrap_up)
                        } else {
                            Vec::new()
                        };
                        if full {
                            Allowed::Only(closers)
                        } else if matches!(f.params[*p].kind, ValueKind::Integer) {
                            Allowed::Digits(closers)
                        } else {
                            Allowed::Text {
                                closers,
                                banned: self.repeat_banned(),
                            }
                        }
                    }
                }
            }
        }
    }

    /// Tokens that, after the value's last token, would form a bigram the value already has.
    fn repeat_banned(&self) -> Vec<u32> {
        let Some(&last) = self.item.last() else {
            return Vec::new();
        };
        self.item
            .windows(2)
            .filter(|w| w[0] == last)
            .map(|w| w[1])
            .collect()
    }

    /// Advances the state by one chosen token (which must be allowed).
    pub fn push(&mut self, tpl: &ChatTemplate, token: u32) {
        self.generated += 1;
        match self.phase.clone() {
            Phase::Done => {}
            Phase::Name => {
                if token == tpl.sp.arg || token == tpl.sp.end {
                    self.func = tpl
                        .functions
                        .iter()
                        .position(|f| f.name_tokens == self.item);
                    self.item.clear();
                    self.phase = if token == tpl.sp.arg {
                        Phase::Key
                    } else {
                        Phase::Done
                    };
                } else {
                    self.item.push(token);
                }
            }
            Phase::Key => {
                if token == tpl.sp.val {
                    let f = &tpl.functions[self.func.expect("function chosen")];
                    let p = f
                        .params
                        .iter()
                        .enumerate()
                        .position(|(i, p)| !self.used.contains(&i) && p.key_tokens == self.item)
                        .expect("complete key");
                    self.used.push(p);
                    self.item.clear();
                    self.phase = Phase::Value(p);
                } else {
                    self.item.push(token);
                }
            }
            Phase::Value(p) => {
                if token == tpl.sp.arg || token == tpl.sp.end {
                    let f = &tpl.functions[self.func.expect("function chosen")];
                    let value = match &f.params[p].kind {
                        ValueKind::Choice(values) => values
                            .iter()
                            .find(|(t, _)| *t == self.item)
                            .map(|(_, v)| v.clone())
                            .unwrap_or(Value::Null),
                        ValueKind::Integer => tpl
                            .decode(&self.item)
                            .trim()
                            .parse::<i64>()
                            .map(Value::from)
                            .unwrap_or(Value::from(0)),
                        ValueKind::Free => Value::String(tpl.decode(&self.item).trim().to_string()),
                    };
                    self.args.insert(f.params[p].key.clone(), value);
                    self.item.clear();
                    self.phase = if token == tpl.sp.arg {
                        Phase::Key
                    } else {
                        Phase::Done
                    };
                } else {
                    self.item.push(token);
                }
            }
        }
    }

    /// The decoded call (valid once [`CallState::done`]).
    pub fn call(&self, tpl: &ChatTemplate) -> ToolCall {
        let name = self
            .func
            .map(|f| tpl.functions[f].name.clone())
            .unwrap_or_default();
        ToolCall::new(name, self.args.clone())
    }
}

fn choice_len(kind: &ValueKind) -> usize {
    match kind {
        ValueKind::Choice(v) => v.iter().map(|(t, _)| t.len()).max().unwrap_or(1),
        _ => 1,
    }
}

/// Picks the best allowed token from log-probabilities `scores` (one row of length V).
pub fn pick(allowed: &Allowed, scores: &[f32], tpl: &ChatTemplate, digit: &[bool]) -> u32 {
    let mut best = (f32::NEG_INFINITY, tpl.sp.pad);
    let mut consider = |t: u32| {
        let s = scores[t as usize];
        if s > best.0 || best.0 == f32::NEG_INFINITY && best.1 == tpl.sp.pad {
            best = (s, t);
        }
    };
    match allowed {
        Allowed::Only(list) => list.iter().copied().for_each(&mut consider),
        Allowed::Text { closers, banned } => {
            (0..scores.len())
                .filter(|&t| !tpl.is_special[t] && !banned.contains(&(t as u32)))
                .for_each(|t| consider(t as u32));
            closers.iter().copied().for_each(&mut consider);
        }
        Allowed::Digits(extra) => {
            (0..scores.len())
                .filter(|&t| digit[t])
                .for_each(|t| consider(t as u32));
            extra.iter().copied().for_each(&mut consider);
        }
    }
    best.1
}

/// Marks tokens that decode to digits (optionally after one leading space).
pub fn digit_tokens(tpl: &ChatTemplate) -> Vec<bool> {
    (0..tpl.vocab)
        .map(|t| {
            if tpl.is_special[t] {
                return false;
            }
            let s = tpl.decode(&[t as u32]);
            let s = s.strip_prefix(' ').unwrap_or(&s);
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
        })
        .collect()
}
