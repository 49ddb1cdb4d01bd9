//! Training the tiny student: windows from the chat template, length-bucketed batches, AdamW with
//! linear warm-up and cosine decay, gradient clipping and accumulation, bf16 autocast on GPU, and
//! a safetensors checkpoint with its `config.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Device, Tensor};
use tracelab_core::conversation::{Conversation, Message};
use tracelab_core::job::{RuleParams, TrainParams};
use tracelab_core::text::identifier_words;

use crate::model::{Tiny, TinyConfig};
use crate::normalize::folded;
use crate::template::{ChatTemplate, Target, ValueKind, Window};
use crate::{Progress, WorkerError};

/// What `model/config.json` holds: the family, the architecture and the template settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedConfig {
    /// Model family (`tiny`).
    pub family: String,
    /// Architecture.
    pub model: TinyConfig,
    /// Tool results keep at most this many records (as in training).
    pub max_records: usize,
    /// The reference date texts were normalized against (as in training).
    #[serde(default)]
    pub reference_date: Option<String>,
    /// What training showed about argument values (the keys are written at the top level of the
    /// file, as before the struct existed).
    #[serde(flatten)]
    pub rules: ValueRules,
}

/// What the training conversations taught decoding about argument values.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ValueRules {
    /// Per function, the arguments decoded as spans of the conversation and the shape of their
    /// values (see [`span_params`]).
    #[serde(default)]
    pub span_params: SpanParams,
    /// Per function, the span arguments whose values are nearly always a value the prompt
    /// already labels with the same key (see [`keyed_params`]).
    #[serde(default)]
    pub keyed_params: KeyedParams,
    /// Per function, the categorical arguments and the values training gave them (see
    /// [`vocab_params`]).
    #[serde(default)]
    pub vocab_params: VocabParams,
    /// Per function, the optional arguments that need evidence in the user's words, and those
    /// words (see [`evidence_params`]).
    #[serde(default)]
    pub evidence_params: EvidenceParams,
    /// Per function, per categorical argument, per value: the user's words that ask for it
    /// without saying it (see [`alias_params`]).
    #[serde(default)]
    pub alias_params: AliasParams,
    /// Per function, per span argument: the words that, said right before a value in the
    /// user's messages, mark it as this argument's and not another's (see [`cue_params`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cue_params: CueParams,
    /// The words of the training conversations' replies (lower-cased, apostrophes dropped):
    /// besides its prompt's, the only lower-case words a grounded reply writes (see
    /// [`crate::ground`]), so none is garbled ("landinging", "sixix").
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub reply_words: BTreeSet<String>,
    /// Per function, the word-shaped span arguments whose values take no word in lower case
    /// (see [`cased_params`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cased_params: KeyedParams,
}

impl ValueRules {
    /// What the manifest records of the rules: the span and keyed arguments, and the sizes of
    /// the word and value lists (so it stays readable).
    pub fn stats(&self) -> serde_json::Map<String, Value> {
        fn sizes<C>(
            rule: &BTreeMap<String, BTreeMap<String, C>>,
            len: impl Fn(&C) -> usize,
        ) -> BTreeMap<&str, BTreeMap<&str, usize>> {
            rule.iter()
                .map(|(f, args)| {
                    let n = args.iter().map(|(k, v)| (k.as_str(), len(v)));
                    (f.as_str(), n.collect())
                })
                .collect()
        }
        let mut stats = serde_json::Map::new();
        stats.insert("span_params".into(), json!(self.span_params));
        stats.insert("keyed_params".into(), json!(self.keyed_params));
        stats.insert(
            "evidence_params".into(),
            json!(sizes(&self.evidence_params, BTreeSet::len)),
        );
        stats.insert(
            "vocab_params".into(),
            json!(sizes(&self.vocab_params, Vec::len)),
        );
        stats.insert(
            "alias_params".into(),
            json!(sizes(&self.alias_params, BTreeMap::len)),
        );
        stats.insert("cue_params".into(), json!(self.cue_params));
        stats.insert("reply_words".into(), json!(self.reply_words.len()));
        stats
    }

    /// Learns every rule from the training conversations. A categorical argument is decoded as
    /// a span too (its vocabulary is a source besides the conversation), so it joins the span
    /// arguments before the keyed ones are chosen.
    pub fn learn(tpl: &ChatTemplate, conversations: &[Conversation], r: &RuleParams) -> ValueRules {
        let mut span_params = span_params(tpl, conversations, r.span_rate);
        let vocab_params = vocab_params(tpl, conversations, r.vocab_rate);
        for (f, args) in &vocab_params {
            for k in args.keys() {
                span_params
                    .entry(f.clone())
                    .or_default()
                    .entry(k.clone())
                    .or_insert(SpanShape::Words);
            }
        }
        let keyed_params = keyed_params(tpl, conversations, &span_params, r.keyed_rate);
        let cased_params = cased_params(tpl, conversations, &span_params, r.cased_rate);
        ValueRules {
            cue_params: cue_params(tpl, conversations, &span_params, r.cue_lift),
            alias_params: alias_params(tpl, conversations, &vocab_params, r),
            span_params,
            keyed_params,
            vocab_params,
            evidence_params: evidence_params(tpl, conversations, r),
            reply_words: reply_words(tpl, conversations),
            cased_params,
        }
    }
}

/// The words of the replies of `conversations`, as [`crate::ground::words_of`] reads them.
fn reply_words(tpl: &ChatTemplate, conversations: &[Conversation]) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    for c in conversations {
        for m in &c.messages {
            let Message::Assistant { tool_calls, .. } = m else {
                continue;
            };
            for call in tool_calls.iter().filter(|c| c.name == tpl.respond_name()) {
                for text in call.arguments.values().filter_map(Value::as_str) {
                    words.extend(crate::ground::words_of(text));
                }
            }
        }
    }
    words
}

/// The span arguments not digits-shaped whose training values (at least 20 of them) take a word in
/// lower case in at most `rate` of them: names and places ("Foster City", "Luna Loca Mexican
/// Restaurant"; in SGD, 0% of the cities and 0.5% of the restaurant names, against 13% of the
/// film titles: "Josie and the Pussycats"). Decoding starts and continues their values only
/// with words that do not begin in lower case (see [`crate::grammar`]), so a copy stops before
/// "Foster city is" runs on. `rate` 0 learns none.
pub fn cased_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    spans: &SpanParams,
    rate: f64,
) -> KeyedParams {
    let mut tally: BTreeMap<(&str, &str), (usize, usize)> = BTreeMap::new();
    for c in conversations {
        for m in &c.messages {
            let Message::Assistant { tool_calls, .. } = m else {
                continue;
            };
            for call in tool_calls {
                let Some(args) = spans.get(&call.name) else {
                    continue;
                };
                for (k, shape) in args {
                    let Some(v) = call
                        .arguments
                        .get(k)
                        .filter(|_| *shape != SpanShape::Digits)
                    else {
                        continue;
                    };
                    let e = tally.entry((&call.name, k)).or_default();
                    e.0 += 1;
                    let lower = normalized(tpl, v)
                        .split_whitespace()
                        .any(|w| w.starts_with(char::is_lowercase));
                    e.1 += usize::from(lower);
                }
            }
        }
    }
    let mut out = KeyedParams::new();
    if rate <= 0.0 {
        return out;
    }
    for ((f, k), (n, lower)) in tally {
        if n >= 20 && lower as f64 <= rate * n as f64 {
            out.entry(f.to_string()).or_default().insert(k.to_string());
        }
    }
    out
}

/// An argument value as the template normalizes text (strings as they are, other JSON as
/// written).
fn normalized(tpl: &ChatTemplate, v: &Value) -> String {
    tpl.normalize(&match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Per function, per span argument, its cue words (see [`cue_params`]).
pub type CueParams = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Cue words of span arguments: where a function has several span arguments, the word the user
/// said right before an argument's value (its latest mention in the user's messages before the
/// call) tells which argument the value is for: "from Boston" is an origin, "to Denver" a
/// destination, in any language the traces use. A word is a cue of an argument when it came
/// before at least 3 of its values and at least `cue_lift` ([`RuleParams`]) times as often as
/// before the values of each other span argument of the function (once when never). Decoding
/// then does not start an argument's value after another argument's cue (see
/// [`crate::grammar`]). `cue_lift` 0 learns none.
pub fn cue_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    spans: &SpanParams,
    cue_lift: f64,
) -> CueParams {
    let mut out = CueParams::new();
    if cue_lift <= 0.0 {
        return out;
    }
    // Per function, per span argument, per word before its value: how often.
    let mut counts: BTreeMap<&str, BTreeMap<&str, BTreeMap<String, usize>>> = BTreeMap::new();
    for c in conversations {
        let mut said: Vec<Vec<String>> = Vec::new();
        for m in &c.messages {
            match m {
                Message::User { content } => {
                    let text = folded(&tpl.normalize(content));
                    said.push(text.split_whitespace().map(str::to_string).collect());
                }
                Message::Assistant { tool_calls, .. } => {
                    for call in tool_calls {
                        let Some((f, args)) = spans.get_key_value(&call.name) else {
                            continue;
                        };
                        if args.len() < 2 {
                            continue;
                        }
                        for (k, v) in &call.arguments {
                            let Some((k, _)) = args.get_key_value(k) else {
                                continue;
                            };
                            let value = folded(&normalized(tpl, v));
                            let value: Vec<&str> = value.split_whitespace().collect();
                            if let Some(w) = word_before(&said, &value) {
                                *counts
                                    .entry(f)
                                    .or_default()
                                    .entry(k)
                                    .or_default()
                                    .entry(w)
                                    .or_default() += 1;
                            }
                        }
                    }
                }
                Message::Tool { .. } | Message::System { .. } => {}
            }
        }
    }
    for (f, per_arg) in &counts {
        for (k, words) in per_arg {
            let cues: BTreeSet<String> = words
                .iter()
                .filter(|(w, &n)| {
                    n >= 3
                        && per_arg.iter().filter(|(o, _)| o != &k).all(|(_, other)| {
                            n as f64 >= cue_lift * other.get(*w).copied().unwrap_or(1) as f64
                        })
                })
                .map(|(w, _)| w.clone())
                .collect();
            if !cues.is_empty() {
                out.entry(f.to_string())
                    .or_default()
                    .insert(k.to_string(), cues);
            }
        }
    }
    out
}

/// The word right before the latest mention of `value` (folded words) in the user's messages
/// `said` (each a list of folded words); none when no message says it or it opens one.
fn word_before(said: &[Vec<String>], value: &[&str]) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    said.iter().rev().find_map(|m| {
        (1..m.len().saturating_sub(value.len() - 1))
            .rev()
            .find(|&i| m[i..i + value.len()].iter().zip(value).all(|(a, b)| a == b))
            .map(|i| m[i - 1].clone())
    })
}

/// Per function, per span argument, the shape its training values had.
pub type SpanParams = BTreeMap<String, BTreeMap<String, SpanShape>>;

/// Per function, the span arguments decoding draws from values labelled with their own key.
pub type KeyedParams = BTreeMap<String, BTreeSet<String>>;

/// The span arguments whose training values repeat a value the prompt labels with the same key
/// (a result field, or an earlier call's argument, of that name) in at least `keyed_rate`
/// ([`RuleParams`]) of
/// the calls where such a value exists (and in at least 5). Decoding then takes those arguments
/// from values labelled with their key rather than from the same words in a sentence, and never
/// from a value labelled with another key (see [`crate::grammar`]).
pub fn keyed_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    spans: &SpanParams,
    keyed_rate: f64,
) -> KeyedParams {
    let text = |v: &Value| normalized(tpl, v).trim().to_string();
    // Per (function, argument): calls with a labelled value of the key, and repeats of one.
    let mut counts: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for c in conversations {
        let mut labelled: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in &c.messages {
            match m {
                Message::Tool { content, .. } => {
                    let records = match serde_json::from_str::<Value>(content) {
                        Ok(Value::Array(a)) => a,
                        Ok(other) => vec![other],
                        Err(_) => continue,
                    };
                    // Only the records the prompt shows.
                    for r in records.iter().take(tpl.max_records) {
                        for (k, v) in r.as_object().into_iter().flatten() {
                            labelled.entry(k.clone()).or_default().insert(text(v));
                        }
                    }
                }
                Message::Assistant { tool_calls, .. } => {
                    for call in tool_calls.iter().filter(|c| c.name != tpl.respond_name()) {
                        for (k, v) in &call.arguments {
                            let is_span = spans.get(&call.name).is_some_and(|a| a.contains_key(k));
                            if let (true, Some(seen)) = (is_span, labelled.get(k)) {
                                let e = counts.entry((call.name.clone(), k.clone())).or_default();
                                e.0 += 1;
                                e.1 += usize::from(seen.contains(&text(v)));
                            }
                        }
                        for (k, v) in &call.arguments {
                            labelled.entry(k.clone()).or_default().insert(text(v));
                        }
                    }
                }
                Message::User { .. } | Message::System { .. } => {}
            }
        }
    }
    let mut out = KeyedParams::new();
    for ((f, k), (n, repeats)) in counts {
        if n >= 5 && repeats as f64 >= keyed_rate * n as f64 {
            out.entry(f).or_default().insert(k);
        }
    }
    out
}

/// What every training value of a span argument looked like: decoding keeps to it, so a time
/// is never copied from a city's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanShape {
    /// No letters (`19:30`, `2019-03-08`).
    Digits,
    /// At least one letter (names, cities).
    Words,
    /// Both kinds occurred.
    Any,
}

/// The free-text arguments (of functions other than the reply) whose values, in at least
/// `span_rate` ([`RuleParams`]) of the training calls that pass them (and at least 5), appear verbatim in the
/// conversation before the call (after time and date normalization): names, cities and times
/// the user or a result said. Data-driven, so a schema's descriptive free-text argument (a note,
/// a query) is not forced into a span.
pub fn span_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    span_rate: f64,
) -> SpanParams {
    let free: Vec<(String, String)> = tpl
        .functions
        .iter()
        .filter(|f| f.name != tpl.respond_name())
        .flat_map(|f| {
            f.params
                .iter()
                .filter(|p| matches!(p.kind, ValueKind::Free))
                .map(|p| (f.name.clone(), p.key.clone()))
        })
        .collect();
    // Per argument: calls, values found in the conversation, values with a letter.
    let mut counts: BTreeMap<(String, String), (usize, usize, usize)> = BTreeMap::new();
    for c in conversations {
        let mut seen = String::new();
        for m in &c.messages {
            match m {
                Message::User { content } | Message::Tool { content, .. } => {
                    seen.push(' ');
                    seen.push_str(&tpl.normalize(content));
                }
                Message::Assistant { tool_calls, .. } => {
                    for call in tool_calls {
                        for (k, v) in &call.arguments {
                            let text = normalized(tpl, v);
                            if call.name == tpl.respond_name() {
                                seen.push(' ');
                                seen.push_str(&text);
                                continue;
                            }
                            let key = (call.name.clone(), k.clone());
                            if free.contains(&key) && !text.trim().is_empty() {
                                let e = counts.entry(key).or_default();
                                e.0 += 1;
                                e.1 += usize::from(seen.contains(text.trim()));
                                e.2 += usize::from(text.chars().any(char::is_alphabetic));
                            }
                        }
                    }
                }
                Message::System { .. } => {}
            }
        }
    }
    let mut out = SpanParams::new();
    for ((f, k), (n, hits, lettered)) in counts {
        if n >= 5 && hits as f64 >= span_rate * n as f64 {
            let shape = match lettered {
                0 => SpanShape::Digits,
                l if l == n => SpanShape::Words,
                _ => SpanShape::Any,
            };
            out.entry(f).or_default().insert(k, shape);
        }
    }
    out
}

/// Per function, per categorical argument, its training values (most frequent first).
pub type VocabParams = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// The free-text arguments (of functions other than the reply) whose training values are a small
/// set of words that repeat: at least 20 calls, every value with a letter, at most
/// `vocab_rate` ([`RuleParams`]) distinct values per call: a cuisine (41 values in 237
/// clean-trace searches) or a city (57 in 237) is; a restaurant's name (291 in 412 bookings) is
/// not, and a vocabulary of names would only offer the student names to invent. Decoding may write such an argument as one of these
/// values even where the conversation words it otherwise (the user asks for "ramen", the
/// search wants `Japanese`; "SFO" is `San Francisco`), and otherwise copies a whole word span:
/// never a piece of a word (`plings` from "Dumplings") or a date for a cuisine.
pub fn vocab_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    vocab_rate: f64,
) -> VocabParams {
    let mut values: BTreeMap<(String, String), BTreeMap<String, usize>> = BTreeMap::new();
    for c in conversations {
        for m in &c.messages {
            let Message::Assistant { tool_calls, .. } = m else {
                continue;
            };
            for call in tool_calls.iter().filter(|c| c.name != tpl.respond_name()) {
                let Some(f) = tpl.functions.iter().find(|f| f.name == call.name) else {
                    continue;
                };
                for (k, v) in &call.arguments {
                    let free = f
                        .params
                        .iter()
                        .any(|p| p.key == *k && matches!(p.kind, ValueKind::Free));
                    let text = normalized(tpl, v).trim().to_string();
                    if free && !text.is_empty() {
                        *values
                            .entry((call.name.clone(), k.clone()))
                            .or_default()
                            .entry(text)
                            .or_default() += 1;
                    }
                }
            }
        }
    }
    let mut out = VocabParams::new();
    for ((f, k), counts) in values {
        let n: usize = counts.values().sum();
        let lettered = counts.keys().all(|v| v.chars().any(char::is_alphabetic));
        if n < 20 || !lettered || counts.len() as f64 > vocab_rate * n as f64 {
            continue;
        }
        let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.entry(f)
            .or_default()
            .insert(k, ranked.into_iter().map(|(v, _)| v).collect());
    }
    out
}

/// Per function, per categorical argument, per value: the words that ask for it.
pub type AliasParams = BTreeMap<String, BTreeMap<String, BTreeMap<String, BTreeSet<String>>>>;

/// The user's words that name a categorical argument's value without saying it: SGD's searches
/// want `Italian` where the user said "pizza" or "pasta", `Indian` for "Punjabi", `San
/// Francisco` for "SF". Per categorical argument (see [`vocab_params`]), over its training calls
/// whose user messages so far do not say the value: a word of those messages is an alias of the
/// value when at least `alias_min_calls` such calls had it and at least `alias_share` of
/// all the argument's calls with the word in the user's messages had that value. Words of any
/// learned value (a city's "park", a cuisine's "american") are no alias. Decoding treats a value
/// whose alias the user said like a value the user said.
pub fn alias_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    vocab: &VocabParams,
    r: &RuleParams,
) -> AliasParams {
    let value_words: BTreeSet<String> = vocab
        .values()
        .flat_map(|args| args.values().flatten())
        .flat_map(|v| {
            folded(v)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    // Per (function, argument): calls per user word, and per (word, value) the calls with the
    // word whose user messages did not say the value.
    #[derive(Default)]
    struct Tally {
        with_word: BTreeMap<String, usize>,
        unsaid: BTreeMap<(String, String), usize>,
    }
    let mut tallies: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    for c in conversations {
        let mut text = String::new();
        for m in &c.messages {
            match m {
                Message::User { content } => text.push_str(&folded(content)),
                Message::Assistant { tool_calls, .. } => {
                    let words: BTreeSet<&str> = text.split_whitespace().collect();
                    for call in tool_calls {
                        let Some(args) = vocab.get(&call.name) else {
                            continue;
                        };
                        for (k, v) in &call.arguments {
                            let Some((key, _)) = args.get_key_value(k) else {
                                continue;
                            };
                            let value = normalized(tpl, v).trim().to_string();
                            let said = text.contains(&folded(&value));
                            let t = tallies
                                .entry((call.name.as_str(), key.as_str()))
                                .or_default();
                            for w in &words {
                                *t.with_word.entry(w.to_string()).or_default() += 1;
                                if !said {
                                    *t.unsaid.entry((w.to_string(), value.clone())).or_default() +=
                                        1;
                                }
                            }
                        }
                    }
                }
                Message::Tool { .. } | Message::System { .. } => {}
            }
        }
    }
    let mut out = AliasParams::new();
    for ((f, k), t) in tallies {
        for ((w, v), n) in t.unsaid {
            if n >= r.alias_min_calls
                && n as f64 >= r.alias_share * t.with_word[&w] as f64
                && !value_words.contains(&w)
            {
                out.entry(f.to_string())
                    .or_default()
                    .entry(k.to_string())
                    .or_default()
                    .entry(v)
                    .or_default()
                    .insert(w);
            }
        }
    }
    out
}

/// Per function, per optional argument, the words whose presence in the user's messages
/// announces it.
pub type EvidenceParams = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The optional arguments (of functions other than the reply) that training passed only when
/// the user's words asked for them, with those words. Per optional argument passed in at least
/// 5 training calls and left out in at least 10: a word of the user's messages so far may be
/// evidence when at least 3 calls passing the argument had it and it is `evidence_lift` times
/// as frequent before those calls as before the others ("pricey", "affordable", "moderate" for
/// a search's `price_range`); of those, the likeliest words that together cover
/// `evidence_coverage` of the calls passing it are ([`fewest_covering`]). Without such words
/// the argument needs no evidence. Decoding then opens the argument only after a user's
/// message with an evidence word: the student, having seen the price range in a third of the
/// searches, otherwise adds one to searches where nobody mentioned a price.
pub fn evidence_params(
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    r: &RuleParams,
) -> EvidenceParams {
    // Per (function, optional argument): the user's words before each call passing it, the
    // number of calls leaving it out, and per word the calls of each kind that had it.
    #[derive(Default)]
    struct Tally {
        passing: Vec<BTreeSet<String>>,
        without: usize,
        per_word: BTreeMap<String, (usize, usize)>,
    }
    let mut tallies: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for c in conversations {
        let mut words: BTreeSet<String> = BTreeSet::new();
        for m in &c.messages {
            match m {
                Message::User { content } => {
                    words.extend(folded(content).split_whitespace().map(str::to_string));
                }
                Message::Assistant { tool_calls, .. } => {
                    for call in tool_calls.iter().filter(|c| c.name != tpl.respond_name()) {
                        let Some(f) = tpl.functions.iter().find(|f| f.name == call.name) else {
                            continue;
                        };
                        for (i, p) in f.params.iter().enumerate() {
                            if f.required.contains(&i) {
                                continue;
                            }
                            let passed = call.arguments.contains_key(&p.key);
                            let t = tallies.entry((f.name.clone(), p.key.clone())).or_default();
                            if passed {
                                t.passing.push(words.clone());
                            } else {
                                t.without += 1;
                            }
                            for w in &words {
                                let e = t.per_word.entry(w.clone()).or_default();
                                if passed {
                                    e.0 += 1;
                                } else {
                                    e.1 += 1;
                                }
                            }
                        }
                    }
                }
                Message::Tool { .. } | Message::System { .. } => {}
            }
        }
    }
    let mut out = EvidenceParams::new();
    for ((f, k), t) in tallies {
        let (with, without) = (t.passing.len(), t.without);
        if with < 5 || without < 10 {
            continue;
        }
        let lift = |(a, b): (usize, usize)| {
            (a as f64 / with as f64) / ((b as f64 + 1.0) / (without as f64 + 1.0))
        };
        let mut candidates: Vec<(String, f64)> = t
            .per_word
            .into_iter()
            .filter(|(_, (a, _))| *a >= 3)
            .map(|(w, n)| (w, lift(n)))
            .filter(|(_, l)| *l >= r.evidence_lift)
            .collect();
        // The schema's own words for the argument come first: a synthetic pool's users may
        // ask for it always with one phrasing ("it has to be refundable"), whose other words
        // are then as good predictors there, and junk with real users.
        let own = schema_words(tpl, &f, &k);
        candidates.sort_by(|x, y| {
            own.contains(&y.0)
                .cmp(&own.contains(&x.0))
                .then_with(|| y.1.total_cmp(&x.1))
                .then_with(|| x.0.cmp(&y.0))
        });
        if let Some(evidence) = fewest_covering(candidates, &t.passing, r.evidence_coverage) {
            out.entry(f).or_default().insert(k, evidence);
        }
    }
    out
}

/// The words the schema has for a function's argument: its name's ("seating", "class") and its
/// enumerated values' ("economy", "business").
fn schema_words(tpl: &ChatTemplate, func: &str, key: &str) -> BTreeSet<String> {
    let Some(p) = tpl
        .functions
        .iter()
        .find(|f| f.name == func)
        .and_then(|f| f.params.iter().find(|p| p.key == key))
    else {
        return BTreeSet::new();
    };
    let mut words: BTreeSet<String> = identifier_words(key).into_iter().collect();
    if let ValueKind::Choice(values) = &p.kind {
        for v in values.iter().filter_map(|(_, v)| v.as_str()) {
            words.extend(folded(v).split_whitespace().map(str::to_string));
        }
    }
    words
}

/// The evidence words: `candidates` in order (the schema's words first, then by lift), each kept only where it covers a call
/// passing the argument that no likelier word covers, until `coverage` of the `passing` calls
/// (each the user's words before it) is covered; `None` when all of them cover less. Words that
/// merely pass the lift by chance (the 3 calls of "one" in "one way", "has", "should": a
/// synthetic flight pool, MEASUREMENTS.md session 37) then stay out where a real cue word
/// ("refundable") already covers their calls, and cannot open the argument elsewhere.
fn fewest_covering(
    candidates: Vec<(String, f64)>,
    passing: &[BTreeSet<String>],
    coverage: f64,
) -> Option<BTreeSet<String>> {
    let mut covered = vec![false; passing.len()];
    let mut evidence = BTreeSet::new();
    let enough = |covered: &[bool]| {
        covered.iter().filter(|&&c| c).count() as f64 >= coverage * passing.len() as f64
    };
    for (w, _) in candidates {
        if enough(&covered) {
            break;
        }
        let mut new = false;
        for (c, words) in covered.iter_mut().zip(passing) {
            if !*c && words.contains(&w) {
                *c = true;
                new = true;
            }
        }
        if new {
            evidence.insert(w);
        }
    }
    enough(&covered).then_some(evidence)
}

/// File names inside `model/`.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file inside `model/`.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// One micro-batch as tensors.
pub struct Batch {
    /// Tokens `(B, T)`, right-padded.
    pub tokens: Tensor,
    /// Flat positions `(N)` whose next token is a target.
    pub at: Tensor,
    /// Target ids `(N)`.
    pub targets: Tensor,
    /// Whether each target is a value token `(N)`.
    pub value: Tensor,
    /// Whether the copy head may point at each token `(B, T)`.
    pub copyable: Tensor,
    /// Real tokens in the batch.
    pub real_tokens: usize,
    /// Targets in the batch.
    pub n_targets: usize,
}

/// Packs windows into a batch (right padding with `pad`).
pub fn make_batch(windows: &[&Window], pad: u32, device: Device) -> Batch {
    let t = windows.iter().map(|w| w.tokens.len()).max().unwrap_or(1);
    let b = windows.len();
    let mut tokens = vec![pad as i64; b * t];
    let mut copyable = vec![false; b * t];
    let (mut at, mut targets, mut value) = (Vec::new(), Vec::new(), Vec::new());
    let mut real = 0;
    for (i, w) in windows.iter().enumerate() {
        real += w.tokens.len();
        for (j, &tok) in w.tokens.iter().enumerate() {
            tokens[i * t + j] = tok as i64;
            copyable[i * t + j] = w.copyable[j];
            if j > 0 && w.targets[j] != Target::None {
                at.push((i * t + j - 1) as i64);
                targets.push(tok as i64);
                value.push(w.targets[j] == Target::Value);
            }
        }
    }
    let n = at.len();
    Batch {
        tokens: Tensor::from_slice(&tokens)
            .reshape([b as i64, t as i64])
            .to_device(device),
        at: Tensor::from_slice(&at).to_device(device),
        targets: Tensor::from_slice(&targets).to_device(device),
        value: Tensor::from_slice(&value).to_device(device),
        copyable: Tensor::from_slice(&copyable)
            .reshape([b as i64, t as i64])
            .to_device(device),
        real_tokens: real,
        n_targets: n,
    }
}

/// Groups windows into micro-batches of at most `batch_tokens` (padded) tokens: shuffled, then
/// sorted by length inside chunks so batches hold similar lengths, then the batches shuffled.
pub fn plan_batches(lens: &[usize], batch_tokens: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lens.len()).collect();
    idx.shuffle(rng);
    let mut batches = Vec::new();
    for chunk in idx.chunks(64) {
        let mut c = chunk.to_vec();
        c.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
        let mut cur: Vec<usize> = Vec::new();
        for i in c {
            let longest = cur.first().map_or(lens[i], |&f| lens[f]);
            if !cur.is_empty() && longest * (cur.len() + 1) > batch_tokens {
                batches.push(std::mem::take(&mut cur));
            }
            cur.push(i);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
    }
    batches.shuffle(rng);
    batches
}

/// Which micro-batches each optimizer step trains on: `epochs` passes of length-bucketed
/// batches ([`plan_batches`], replanned at every pass), `grad_accum` micro-batches a step.
pub struct Schedule {
    lens: Vec<usize>,
    batch_tokens: usize,
    rng: ChaCha8Rng,
    queue: Vec<Vec<usize>>,
    micro: usize,
    total_micro: usize,
    accum: usize,
    /// Optimizer steps in the run.
    pub total_steps: usize,
}

impl Schedule {
    /// A schedule over examples of lengths `lens`; batch orders are drawn from `p.seed`.
    pub fn new(lens: Vec<usize>, p: &TrainParams) -> Schedule {
        let rng = ChaCha8Rng::seed_from_u64(p.seed);
        let per_epoch = plan_batches(&lens, p.batch_tokens, &mut rng.clone()).len();
        let total_micro = ((per_epoch as f64) * p.epochs).ceil().max(1.0) as usize;
        let accum = p.grad_accum.max(1);
        Schedule {
            lens,
            batch_tokens: p.batch_tokens,
            rng,
            queue: Vec::new(),
            micro: 0,
            total_micro,
            accum,
            total_steps: total_micro.div_ceil(accum),
        }
    }

    /// The micro-batches (example indices) of the next optimizer step.
    pub fn next_step(&mut self) -> Vec<Vec<usize>> {
        let mut group = Vec::new();
        while group.len() < self.accum && self.micro < self.total_micro {
            if self.queue.is_empty() {
                self.queue = plan_batches(&self.lens, self.batch_tokens, &mut self.rng);
                self.queue.reverse();
            }
            group.push(self.queue.pop().expect("refilled"));
            self.micro += 1;
        }
        group
    }
}

/// The learning rate of optimizer step `step` of `total_steps`: linear warm-up over
/// `warmup_steps` (at most half the run), then cosine decay to `min_lr_ratio` of the peak.
pub fn lr_at(p: &TrainParams, step: usize, total_steps: usize) -> f64 {
    let warmup = p.warmup_steps.min(total_steps / 2).max(1);
    if step < warmup {
        p.lr * (step + 1) as f64 / warmup as f64
    } else {
        let t = (step - warmup) as f64 / (total_steps - warmup).max(1) as f64;
        let min = p.lr * p.min_lr_ratio;
        min + 0.5 * (p.lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// The SwiGLU width for a model width when the parameter says 0 (8/3 of it, a multiple of 16).
pub fn default_ffn(width: i64) -> i64 {
    ((width * 8 / 3) + 15) / 16 * 16
}

/// Resolves the device choice.
pub fn device(choice: tracelab_core::job::DeviceChoice) -> Result<Device, WorkerError> {
    use tracelab_core::job::DeviceChoice as D;
    match choice {
        D::Cpu => Ok(Device::Cpu),
        D::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        D::Cuda => Err(WorkerError::Invalid(
            "device = \"cuda\" but no CUDA device is visible".into(),
        )),
        D::Auto => Ok(Device::cuda_if_available()),
    }
}

/// The tiny architecture `p` asks for over a vocabulary of `vocab` tokens.
pub fn tiny_config(p: &TrainParams, vocab: usize) -> Result<TinyConfig, WorkerError> {
    if p.family != "tiny" {
        return Err(WorkerError::Invalid(format!(
            "family {:?} is not built into this worker (known: tiny)",
            p.family
        )));
    }
    if p.width % p.heads != 0 || (p.width / p.heads) % 2 != 0 {
        return Err(WorkerError::Invalid(format!(
            "width {} must be a multiple of heads {} with an even head size",
            p.width, p.heads
        )));
    }
    Ok(TinyConfig {
        vocab: vocab as i64,
        layers: p.layers,
        width: p.width,
        heads: p.heads,
        ffn: if p.ffn > 0 {
            p.ffn
        } else {
            default_ffn(p.width)
        },
        context: p.context,
        dropout: p.dropout,
        copy_dim: p.copy_dim,
    })
}

/// A trained model and its training statistics.
pub struct Fitted {
    /// The weights.
    pub vs: nn::VarStore,
    /// Steps, tokens, loss curve, parameters, windows, device.
    pub stats: serde_json::Map<String, Value>,
}

/// Trains a tiny model on `windows` (rendered by templates over `tpl`'s tokenizer, whose
/// special tokens the model needs): from random weights, or from the student saved in `base`
/// (`pretrain`'s model), which must have the same architecture.
pub fn fit(
    p: &TrainParams,
    cfg: &TinyConfig,
    tpl: &ChatTemplate,
    windows: &[Window],
    base: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, WorkerError> {
    let dev = device(p.device)?;
    tch::manual_seed(p.seed as i64);
    if windows.is_empty() {
        return Err(WorkerError::Invalid(
            "no assistant tool calls to train on in the traces".into(),
        ));
    }
    let lens: Vec<usize> = windows.iter().map(|w| w.tokens.len()).collect();
    let mut vs = nn::VarStore::new(dev);
    let model = Tiny::new(
        &vs.root(),
        cfg.clone(),
        &tpl.is_special,
        [tpl.sp.arg, tpl.sp.end],
    );
    if let Some(dir) = base {
        load_base(&mut vs, cfg, dir)?;
    }
    let n_params = Tiny::parameter_count(&vs);
    let mut opt = nn::AdamW {
        wd: p.weight_decay,
        ..Default::default()
    }
    .build(&vs, p.lr)
    .map_err(|e| WorkerError::Torch(e.to_string()))?;

    let mut schedule = Schedule::new(lens, p);
    let total_steps = schedule.total_steps;
    let mut log = LossLog::new(total_steps);
    for step in 0..total_steps {
        opt.set_lr(lr_at(p, step, total_steps));
        let group = schedule.next_step();
        let batches: Vec<Batch> = group
            .iter()
            .map(|ids| {
                let ws: Vec<&Window> = ids.iter().map(|&i| &windows[i]).collect();
                make_batch(&ws, tpl.sp.pad, dev)
            })
            .collect();
        let n_all: usize = batches.iter().map(|b| b.n_targets).sum();
        let mut step_loss = 0f64;
        for b in &batches {
            if b.n_targets == 0 {
                continue;
            }
            let loss = tch::autocast(dev.is_cuda(), || {
                model.loss(&b.tokens, &b.copyable, &b.at, &b.targets, &b.value, true)
            });
            let w = b.n_targets as f64 / n_all.max(1) as f64;
            (&loss * w).backward();
            step_loss += loss.double_value(&[]) * w;
            log.tokens_seen += b.real_tokens;
        }
        opt.clip_grad_norm(p.grad_clip);
        opt.step();
        opt.zero_grad();
        log.step(step, step_loss, progress);
    }
    let mut stats = log.stats();
    stats.insert("parameters".into(), json!(n_params));
    stats.insert("windows".into(), json!(windows.len()));
    stats.insert("device".into(), json!(format!("{dev:?}")));
    Ok(Fitted { vs, stats })
}

/// Loads a pretrained base's weights into `vs`, after checking that its architecture is `cfg`'s
/// (dropout aside, which is a training setting).
fn load_base(vs: &mut nn::VarStore, cfg: &TinyConfig, dir: &Path) -> Result<(), WorkerError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| WorkerError::io(&cfg_path, e))?;
    let saved: SavedConfig = serde_json::from_str(&text)
        .map_err(|e| WorkerError::Invalid(format!("{}: {e}", cfg_path.display())))?;
    let base = TinyConfig {
        dropout: cfg.dropout,
        ..saved.model
    };
    if &base != cfg {
        return Err(WorkerError::Invalid(format!(
            "the pretrained base ({}) is {base:?}, but train asks for {cfg:?}: pretrain and \
             train must agree on the architecture and the tokenizer",
            dir.display()
        )));
    }
    let weights = dir.join(WEIGHTS_FILE);
    vs.load(&weights)
        .map_err(|e| WorkerError::Torch(format!("{}: {e}", weights.display())))
}

/// Trains the tiny student on the cell's conversations (from `base`'s weights when given) and
/// saves it, with no value rules: `predict` and `serve` learn those from the same conversations
/// ([`ValueRules::learn`]), so a change to them retrains nothing.
pub fn train(
    p: &TrainParams,
    tpl: &ChatTemplate,
    conversations: &[Conversation],
    reference_date: Option<&str>,
    base: Option<&Path>,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value, WorkerError> {
    let cfg = tiny_config(p, tpl.vocab)?;
    let windows: Vec<Window> = conversations
        .iter()
        .flat_map(|c| tpl.windows(&tpl.render(&c.messages), p.context as usize))
        .collect();
    let Fitted { vs, mut stats } = fit(p, &cfg, tpl, &windows, base, progress)?;
    save(
        &vs,
        &cfg,
        p.max_records,
        reference_date,
        &ValueRules::default(),
        out,
    )?;
    stats.insert("base".into(), json!(base.is_some()));
    Ok(Value::Object(stats))
}

/// The bookkeeping both families' training loops share: per-window mean loss, the loss curve
/// for the manifest, tokens/s and ETA progress lines about 40 times a run.
pub struct LossLog {
    started: Instant,
    total_steps: usize,
    report_every: usize,
    window_loss: f64,
    window_n: usize,
    /// Tokens trained on so far.
    pub tokens_seen: usize,
    /// `{"step", "loss"}` points.
    pub curve: Vec<Value>,
}

impl LossLog {
    /// Starts the clock for a run of `total_steps` optimizer steps.
    pub fn new(total_steps: usize) -> LossLog {
        LossLog {
            started: Instant::now(),
            total_steps,
            report_every: (total_steps / 40).max(1),
            window_loss: 0.0,
            window_n: 0,
            tokens_seen: 0,
            curve: Vec::new(),
        }
    }

    /// Records optimizer step `step` (0-based) and its loss; reports progress at window ends.
    pub fn step(&mut self, step: usize, loss: f64, progress: &mut dyn FnMut(Progress)) {
        self.window_loss += loss;
        self.window_n += 1;
        if !(step + 1).is_multiple_of(self.report_every) && step + 1 != self.total_steps {
            return;
        }
        let secs = self.seconds();
        let tps = self.tokens_seen as f64 / secs.max(1e-9);
        let avg = self.window_loss / self.window_n as f64;
        self.curve
            .push(json!({"step": step + 1, "loss": round4(avg)}));
        let eta = secs / (step + 1) as f64 * (self.total_steps - step - 1) as f64;
        progress(Progress {
            done: (step + 1) as u64,
            total: Some(self.total_steps as u64),
            message: format!("loss {avg:.3}, {:.1}k tok/s, ETA {eta:.0}s", tps / 1000.0),
        });
        self.window_loss = 0.0;
        self.window_n = 0;
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The statistics every training reports: steps, tokens, time, speed, final loss and curve.
    pub fn stats(&self) -> serde_json::Map<String, Value> {
        let secs = self.seconds();
        let mut m = serde_json::Map::new();
        m.insert("steps".into(), json!(self.total_steps));
        m.insert("train_tokens".into(), json!(self.tokens_seen));
        m.insert("train_seconds".into(), json!(round4(secs)));
        m.insert(
            "tokens_per_second".into(),
            json!((self.tokens_seen as f64 / secs.max(1e-9)).round()),
        );
        m.insert(
            "final_loss".into(),
            self.curve
                .last()
                .map(|c| c["loss"].clone())
                .unwrap_or(Value::Null),
        );
        m.insert("loss_curve".into(), Value::Array(self.curve.clone()));
        m
    }
}

/// `x` rounded to four decimals (for statistics).
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Writes `config.json` and `model.safetensors` into `out`.
pub fn save(
    vs: &nn::VarStore,
    cfg: &TinyConfig,
    max_records: usize,
    reference_date: Option<&str>,
    rules: &ValueRules,
    out: &Path,
) -> Result<(), WorkerError> {
    std::fs::create_dir_all(out).map_err(|e| WorkerError::io(out, e))?;
    let saved = SavedConfig {
        family: "tiny".into(),
        model: cfg.clone(),
        max_records,
        reference_date: reference_date.map(str::to_string),
        rules: rules.clone(),
    };
    let cfg_path = out.join(CONFIG_FILE);
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&saved).expect("config serializes"),
    )
    .map_err(|e| WorkerError::io(&cfg_path, e))?;
    vs.save(out.join(WEIGHTS_FILE))
        .map_err(|e| WorkerError::Torch(e.to_string()))
}

/// Loads a saved student: its config and a model with the weights.
pub fn load(
    dir: &Path,
    special: &[bool],
    closers: [u32; 2],
    dev: Device,
) -> Result<(SavedConfig, nn::VarStore, Tiny), WorkerError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| WorkerError::io(&cfg_path, e))?;
    let saved: SavedConfig = serde_json::from_str(&text)
        .map_err(|e| WorkerError::Invalid(format!("{}: {e}", cfg_path.display())))?;
    if saved.family != "tiny" {
        return Err(WorkerError::Invalid(format!(
            "{}: family {:?} is not built into this worker",
            cfg_path.display(),
            saved.family
        )));
    }
    if saved.model.vocab as usize != special.len() {
        return Err(WorkerError::Invalid(format!(
            "model vocabulary {} does not match the tokenizer's {}",
            saved.model.vocab,
            special.len()
        )));
    }
    let mut vs = nn::VarStore::new(dev);
    let model = Tiny::new(&vs.root(), saved.model.clone(), special, closers);
    vs.load(dir.join(WEIGHTS_FILE))
        .map_err(|e| WorkerError::Torch(format!("{}: {e}", dir.join(WEIGHTS_FILE).display())))?;
    Ok((saved, vs, model))
}
