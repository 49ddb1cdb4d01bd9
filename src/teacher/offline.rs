//! The offline teacher: a schema-guided dialogue simulator that needs no model.
//!
//! What is *correct* comes only from the tool schema and the task policy: which functions exist,
//! their required and optional arguments, search as soon as the search function's required
//! arguments are known, ask for missing ones with the reply function, present results, let the
//! user change a value or search again, call the transaction once the user confirms and its
//! required arguments are known, then close; or, where the user names what to book, collect the
//! transaction's arguments, confirm and book with no search. The traces supply only domain
//! signal ([`Domain`]): argument values, result records, user/assistant phrasings delexicalized
//! into templates and refilled with other values, and how often each flow occurs ([`Flows`]).
//! Which function a trace called, when, and under which name is never copied: the simulator
//! writes every call itself from the schema.
//!
//! Nothing here knows about restaurants: search vs transaction comes from
//! [`FunctionKind`], the "entity" field (the name a transaction
//! books) is the transaction's required argument that search results carry and search does not
//! take.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{Map, Value};

use super::builtin::{self, Role, Said};
use super::phrasebook::Phrasebook;
use super::spoken::{format_date, parse_date, Spoken};
use super::{Context, Failure, Job, Outcome, Teacher, TeacherError};
use crate::conversation::{Conversation, Message, ToolCall};
use crate::dates::{MONTHS, WEEKDAYS};
use crate::judge::normalize::UNITS;
use crate::tools::{Function, FunctionKind, ToolSet};
use tracelab_core::text::date::parse_iso_value;
use tracelab_core::text::time::parse_clock;

/// A result record: field name → value as text (SGD results are all strings).
pub type Record = BTreeMap<String, String>;

/// One argument of a target function, with what the simulator needs to fill it.
struct Arg {
    name: String,
    schema: Value,
    validator: jsonschema::Validator,
    /// Text → JSON conversion and validation result cache is cheap enough to do per value.
    is_flag: bool,
    /// The phrase a user says to ask for a true flag ("has live music").
    predicate: String,
    /// What kind of thing the value is, which decides how built-in phrasings say it.
    role: Role,
}

impl Arg {
    fn new(name: &str, schema: &Value) -> Arg {
        let validator = jsonschema::validator_for(schema).unwrap_or_else(|_| {
            jsonschema::validator_for(&Value::Bool(true)).expect("true is a schema")
        });
        let enums: Vec<String> = schema
            .get("enum")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(value_text).collect())
            .unwrap_or_default();
        let is_flag = schema.get("type").and_then(Value::as_str) == Some("boolean")
            || (!enums.is_empty()
                && enums
                    .iter()
                    .all(|e| e.eq_ignore_ascii_case("true") || e.eq_ignore_ascii_case("false")));
        let description = schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("");
        Arg {
            name: name.to_string(),
            schema: schema.clone(),
            validator,
            is_flag,
            predicate: flag_predicate(name, description),
            role: Role::of_schema(name, schema),
        }
    }

    /// The JSON value for a text, if it fits the argument's schema.
    fn json(&self, text: &str) -> Option<Value> {
        let types: Vec<&str> = match self.schema.get("type") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec!["string"],
        };
        let mut candidates = Vec::new();
        for t in types {
            match t {
                "integer" => {
                    if let Ok(i) = text.trim().parse::<i64>() {
                        candidates.push(Value::from(i));
                    }
                }
                "number" => {
                    if let Ok(f) = text.trim().parse::<f64>() {
                        if let Some(n) = serde_json::Number::from_f64(f) {
                            candidates.push(Value::Number(n));
                        }
                    }
                }
                "boolean" => match text.trim().to_ascii_lowercase().as_str() {
                    "true" => candidates.push(Value::Bool(true)),
                    "false" => candidates.push(Value::Bool(false)),
                    _ => {}
                },
                _ => candidates.push(Value::String(text.to_string())),
            }
        }
        candidates.into_iter().find(|v| self.validator.is_valid(v))
    }
}

/// "Boolean flag indicating if the restaurant has live music" → "has live music".
fn flag_predicate(name: &str, description: &str) -> String {
    let lower = description.to_lowercase();
    for marker in [" if the ", " whether the ", " if it ", " whether it "] {
        if let Some(p) = lower.find(marker) {
            let rest = &description[p + marker.len()..];
            // Skip the subject noun after "the" ("restaurant has …" → "has …").
            let rest = if marker.ends_with("the ") {
                rest.split_once(' ').map(|x| x.1).unwrap_or(rest)
            } else {
                rest
            };
            let rest = rest.trim().trim_end_matches('.');
            if !rest.is_empty() {
                return rest.to_string();
            }
        }
    }
    format!("has {}", human(name))
}

/// `street_address` → `street address`.
fn human(name: &str) -> String {
    name.replace('_', " ")
}

/// A JSON scalar as the text a person would say.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A schema function prepared for simulation.
struct Func {
    name: String,
    kind: FunctionKind,
    required: Vec<usize>,
    optional: Vec<usize>,
    args: Vec<Arg>,
    /// What a search finds, in words ("restaurant"), from its description.
    noun: String,
    /// What a transaction does, without and with the booked thing's name (`{}`), from its
    /// description ("reserve a table", "reserve a table at {}").
    act: (String, String),
}

impl Func {
    fn new(f: &Function) -> Func {
        let required: BTreeSet<&str> = f.required().into_iter().collect();
        let args: Vec<Arg> = f
            .parameter_names()
            .into_iter()
            .map(|n| Arg::new(n, f.parameter(n).expect("listed")))
            .collect();
        let (req, opt): (Vec<usize>, Vec<usize>) =
            (0..args.len()).partition(|i| required.contains(args[*i].name.as_str()));
        let noun = builtin::search_noun(&f.description);
        Func {
            name: f.name.clone(),
            kind: f.kind,
            required: req,
            optional: opt,
            args,
            act: builtin::transaction_phrase(&f.description, &noun),
            noun,
        }
    }

    fn arg(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }
}

/// Phrasing templates, with `{arg}` placeholders, learned from traces.
#[derive(Debug, Default, Clone)]
pub struct Templates {
    /// User messages giving values, keyed by the sorted set of placeholders they contain.
    pub inform: BTreeMap<Vec<String>, Vec<String>>,
    /// The subset of `inform` that led to a transaction (the next call books): requests such as
    /// "Book {restaurant_name} for {time}", not questions that merely name a result.
    pub request: BTreeMap<Vec<String>, Vec<String>>,
    /// User messages that asked for a search again with changed values ("Anything cheaper in
    /// {city}?"), keyed like `inform`.
    pub research: BTreeMap<Vec<String>, Vec<String>>,
    /// Value-free first user messages ("I'm hungry, find me a place to eat.").
    pub opener: Vec<String>,
    /// Assistant questions for one argument.
    pub ask: BTreeMap<String, Vec<String>>,
    /// Assistant messages presenting a search result (contain the entity placeholder).
    pub present: Vec<String>,
    /// User questions about one result field.
    pub detail_q: BTreeMap<String, Vec<String>>,
    /// Assistant answers giving one result field.
    pub detail_a: BTreeMap<String, Vec<String>>,
    /// Value-free user requests for another result ("What other restaurants are there?"),
    /// answered by presenting another record of the same search.
    pub another: Vec<String>,
    /// Assistant confirmations before a transaction.
    pub confirm_a: Vec<String>,
    /// Value-free user confirmations.
    pub confirm_u: Vec<String>,
    /// Assistant messages after a successful transaction.
    pub success: Vec<String>,
    /// Assistant messages after a transaction that returned nothing (it failed).
    pub failure: Vec<String>,
    /// Value-free user closings.
    pub thanks: Vec<String>,
    /// Assistant closings.
    pub close: Vec<String>,
}

impl Templates {
    /// How many phrasings the templates hold, of every kind.
    pub fn count(&self) -> usize {
        let by_args = [&self.inform, &self.request, &self.research];
        let by_field = [&self.ask, &self.detail_q, &self.detail_a];
        let lists = [
            &self.opener,
            &self.present,
            &self.another,
            &self.confirm_a,
            &self.confirm_u,
            &self.success,
            &self.failure,
            &self.thanks,
            &self.close,
        ];
        let sum = |v: &Vec<String>| v.len();
        by_args
            .iter()
            .flat_map(|m| m.values())
            .map(sum)
            .sum::<usize>()
            + by_field
                .iter()
                .flat_map(|m| m.values())
                .map(sum)
                .sum::<usize>()
            + lists.iter().map(|l| l.len()).sum::<usize>()
    }
}

/// The domain signal extracted from traces: values per argument, result records, phrasings.
#[derive(Debug, Default, Clone)]
pub struct Domain {
    /// Distinct accepted values per target argument name (sorted).
    pub values: BTreeMap<String, Vec<String>>,
    /// Search result records.
    pub records: Vec<Record>,
    /// Phrasing templates.
    pub templates: Templates,
    /// Name of the result field that identifies what a transaction books, if any.
    pub entity: Option<String>,
    /// Per function, the share of its trace calls that pass each argument (optional arguments
    /// a service fills in by default, such as a booking's date, are in nearly every call).
    pub arg_rates: BTreeMap<String, BTreeMap<String, f64>>,
    /// How the traces' conversations go: which flows, how often.
    pub flows: Flows,
}

/// The shares of conversation flows in the traces, which the simulator reproduces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flows {
    /// Share of conversations whose first service call is a transaction: the user names what
    /// to book and no search comes first (42% of the clean SGD restaurant traces).
    pub transaction_first: f64,
    /// Share of the conversations that start with a search and go on to book (all of them in
    /// the SGD restaurant traces).
    pub search_then_book: f64,
}

impl Default for Flows {
    /// Without traces: mostly searches, most of them booked.
    fn default() -> Flows {
        Flows {
            transaction_first: 0.25,
            search_then_book: 0.8,
        }
    }
}

impl Flows {
    /// Counts the flows of the traces (those with a service call). Estimates are shrunk
    /// towards the defaults by two pseudo-conversations, so that a handful of traces does not
    /// decide them alone, and kept off the extremes: searches and searches without a booking
    /// always remain.
    fn of(traces: &[Vec<Event<'_>>]) -> Flows {
        let (mut n, mut first, mut searched, mut booked) = (0.0, 0.0, 0.0, 0.0);
        for ev in traces {
            let kinds: Vec<FunctionKind> = ev
                .iter()
                .filter_map(|e| match e {
                    Event::Call(_, k) => Some(*k),
                    _ => None,
                })
                .collect();
            let Some(k) = kinds.first() else {
                continue;
            };
            n += 1.0;
            if *k == FunctionKind::Transaction {
                first += 1.0;
            } else {
                searched += 1.0;
                if kinds.contains(&FunctionKind::Transaction) {
                    booked += 1.0;
                }
            }
        }
        let prior = Flows::default();
        let share = |hits: f64, n: f64, prior: f64| (hits + 2.0 * prior) / (n + 2.0);
        Flows {
            transaction_first: share(first, n, prior.transaction_first).min(0.9),
            search_then_book: share(booked, searched, prior.search_then_book).clamp(0.1, 0.95),
        }
    }
}

/// A message of a trace reduced to what extraction needs.
enum Event<'a> {
    User(&'a str),
    Say(&'a str),
    Call(&'a ToolCall, FunctionKind),
    Results(Vec<Record>),
}

fn parse_records(text: &str) -> Option<Vec<Record>> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => vec![Value::Object(o)],
        _ => return None,
    };
    list.iter()
        .map(|r| {
            r.as_object().map(|o| {
                o.iter()
                    .filter(|(_, v)| !v.is_null() && !v.is_object() && !v.is_array())
                    .map(|(k, v)| (k.clone(), value_text(v)))
                    .collect()
            })
        })
        .collect()
}

fn events<'a>(c: &'a Conversation, tools: &ToolSet, respond_arg: &str) -> Vec<Event<'a>> {
    let mut out = Vec::new();
    let mut after_service_call = false;
    for m in &c.messages {
        match m {
            Message::User { content } => {
                // Some trace files carry results as a user message holding a JSON list.
                match after_service_call.then(|| parse_records(content)).flatten() {
                    Some(r) => out.push(Event::Results(r)),
                    None => out.push(Event::User(content)),
                }
                after_service_call = false;
            }
            Message::Assistant { tool_calls, .. } => {
                after_service_call = false;
                for call in tool_calls {
                    match tools.get(&call.name).map(|f| f.kind) {
                        Some(FunctionKind::Respond) => {
                            if let Some(t) = call.arguments.get(respond_arg).and_then(Value::as_str)
                            {
                                out.push(Event::Say(t));
                            }
                        }
                        Some(kind) => {
                            out.push(Event::Call(call, kind));
                            after_service_call = true;
                        }
                        None => {}
                    }
                }
            }
            Message::Tool { content, .. } => {
                if let Some(r) = parse_records(content) {
                    out.push(Event::Results(r));
                }
            }
            Message::System { .. } => {}
        }
    }
    out
}

/// Replaces every whole-word occurrence of a value, or of a spoken form of it ("7 pm" for
/// `19:00`, "tomorrow" for a date, "four" for `4`), with its `{name}` placeholder. Longer forms
/// go first so "7:30 pm" is not cut into "{time} pm"; case is ignored ("san jose").
fn delexicalize(text: &str, values: &[(String, String)], spoken: &Spoken) -> String {
    let mut forms: Vec<(&str, String)> = Vec::new();
    for (name, value) in values.iter().filter(|(_, v)| !v.is_empty()) {
        for f in spoken.forms(value) {
            forms.push((name.as_str(), f.to_ascii_lowercase()));
        }
    }
    forms.sort_by(|a, b| {
        b.1.len()
            .cmp(&a.1.len())
            .then(a.0.cmp(b.0))
            .then(a.1.cmp(&b.1))
    });
    forms.dedup();
    let mut out = text.to_string();
    for (name, form) in forms {
        // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `out`.
        let lower = out.to_ascii_lowercase();
        let mut result = String::with_capacity(out.len());
        let mut copied = 0;
        // Boundaries are judged in the whole text, not in what is left after a match ("22").
        for (p, _) in lower.match_indices(form.as_str()) {
            if p < copied {
                continue;
            }
            let before = out[..p].chars().next_back();
            let after = out[p + form.len()..].chars().next();
            let bounded = !before.is_some_and(|c| c.is_alphanumeric() || c == '{')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '}');
            if bounded {
                result.push_str(&out[copied..p]);
                result.push('{');
                result.push_str(name);
                result.push('}');
                copied = p + form.len();
            }
        }
        result.push_str(&out[copied..]);
        out = result;
    }
    out
}

/// Placeholder names in a template, sorted and distinct.
pub(crate) fn placeholders(t: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    let mut rest = t;
    while let Some(a) = rest.find('{') {
        let Some(b) = rest[a..].find('}') else { break };
        out.insert(rest[a + 1..a + b].to_string());
        rest = &rest[a + b + 1..];
    }
    out.into_iter().collect()
}

/// Fills `{name}` placeholders; `None` if one has no value.
fn fill(t: &str, values: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::with_capacity(t.len() + 32);
    let mut rest = t;
    while let Some(a) = rest.find('{') {
        let b = rest[a..].find('}')?;
        out.push_str(&rest[..a]);
        out.push_str(values.get(&rest[a + 1..a + b])?);
        rest = &rest[a + b + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Known values, bucketed by first character so a template is checked in one pass over its
/// word starts instead of one search per value.
#[derive(Default)]
struct Leftovers {
    by_first: BTreeMap<char, Vec<String>>,
}

impl Leftovers {
    fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Leftovers {
        let mut by_first: BTreeMap<char, Vec<String>> = BTreeMap::new();
        for v in values {
            if let Some(c) = v.chars().next() {
                by_first.entry(c).or_default().push(v.clone());
            }
        }
        Leftovers { by_first }
    }

    /// Whether `s` contains a known value as whole words.
    fn found_in(&self, s: &str) -> bool {
        s.char_indices().any(|(p, c)| {
            self.by_first.get(&c).is_some_and(|vals| {
                vals.iter()
                    .any(|v| s[p..].starts_with(v.as_str()) && word_bounded(s, p, v.len()))
            })
        })
    }
}

/// A template is usable when nothing value-like is left in it: digits mean a time, count or
/// number that was said in a form the call did not use, so refilling would contradict the call.
fn clean_template(t: &str, leftovers: &Leftovers) -> bool {
    let outside: String = {
        let mut s = String::new();
        let mut depth = 0;
        for c in t.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                c if depth == 0 => s.push(c),
                _ => {}
            }
        }
        s
    };
    !outside.chars().any(|c| c.is_ascii_digit())
        && !t.contains("{}")
        && t.len() <= 400
        && !leftovers.found_in(&outside)
}

fn word_bounded(s: &str, p: usize, len: usize) -> bool {
    !s[..p]
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric)
        && !s[p + len..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
}

fn push_unique(v: &mut Vec<String>, t: String) {
    if !v.contains(&t) {
        v.push(t);
    }
}

impl Domain {
    /// Extracts domain signal from traces whose calls already use the target schema's names
    /// (the filter relabels them). Values are accepted per argument only where they agree with
    /// the result records (a call value for an argument that results also carry must occur there),
    /// so permuted or foreign values in noisy calls are ignored.
    pub fn extract(ctx: &Context<'_>) -> Domain {
        let tools = ctx.tools;
        let respond = tools.respond();
        let respond_arg = respond
            .and_then(|f| f.required().first().map(|s| s.to_string()))
            .unwrap_or_else(|| "message".into());
        let traces: Vec<Vec<Event<'_>>> = ctx
            .traces
            .iter()
            .map(|c| events(c, tools, &respond_arg))
            .collect();
        let target_args: BTreeSet<&str> = tools
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::Respond)
            .flat_map(|f| f.parameter_names())
            .collect();

        // Pass 1: result records (the reliable part of a trace) and their field values.
        let mut records = Vec::new();
        let mut field_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for ev in &traces {
            let mut last_kind = None;
            for e in ev {
                match e {
                    Event::Call(_, k) => last_kind = Some(*k),
                    Event::Results(rs) if last_kind == Some(FunctionKind::Search) => {
                        for r in rs {
                            for (k, v) in r {
                                field_values.entry(k.clone()).or_default().insert(v.clone());
                            }
                            records.push(r.clone());
                        }
                    }
                    _ => {}
                }
            }
        }
        records.sort();
        records.dedup();

        // Pass 2: call values that fit the schema and agree with the records.
        let funcs: Vec<Func> = tools
            .functions
            .iter()
            .filter(|f| f.kind != FunctionKind::Respond)
            .map(Func::new)
            .collect();
        let accept = |fname: &str, arg: &str, text: &str| -> bool {
            let Some(a) = funcs
                .iter()
                .find(|f| f.name == fname)
                .and_then(|f| f.arg(arg))
            else {
                return false;
            };
            a.json(text).is_some()
                && field_values
                    .get(arg)
                    .is_none_or(|vals| vals.contains(text) || a.is_flag)
        };
        let mut values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut local: Vec<Vec<(String, String)>> = Vec::with_capacity(traces.len());
        let mut calls: BTreeMap<String, usize> = BTreeMap::new();
        let mut arg_counts: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for ev in &traces {
            let mut mine = Vec::new();
            for e in ev {
                if let Event::Call(c, _) = e {
                    *calls.entry(c.name.clone()).or_default() += 1;
                    for k in c.arguments.keys() {
                        *arg_counts
                            .entry(c.name.clone())
                            .or_default()
                            .entry(k.clone())
                            .or_default() += 1;
                    }
                    for (k, v) in &c.arguments {
                        let text = value_text(v);
                        if accept(&c.name, k, &text) {
                            values.entry(k.clone()).or_default().insert(text.clone());
                            if !funcs
                                .iter()
                                .find(|f| f.name == c.name)
                                .and_then(|f| f.arg(k))
                                .is_some_and(|a| a.is_flag)
                            {
                                mine.push((k.clone(), text));
                            }
                        }
                    }
                }
            }
            local.push(mine);
        }
        // Result fields named like target arguments are values of those arguments too.
        for (k, vals) in &field_values {
            if target_args.contains(k.as_str()) {
                for v in vals {
                    if funcs
                        .iter()
                        .any(|f| f.arg(k).is_some_and(|a| a.json(v).is_some()))
                    {
                        values.entry(k.clone()).or_default().insert(v.clone());
                    }
                }
            }
        }

        let entity = entity_field(tools, &records);
        // Values that must not survive in a template outside a placeholder (long enough to be
        // unambiguous): any known value of any field.
        let leftovers: BTreeSet<String> = values
            .values()
            .flatten()
            .chain(field_values.values().flatten())
            .filter(|v| {
                v.chars().count() >= 4
                    && !v.eq_ignore_ascii_case("true")
                    && !v.eq_ignore_ascii_case("false")
            })
            .cloned()
            .collect();

        // Words the domain uses: what users say, values, records, the schema's own words. An
        // assistant phrasing outside it (a reply from another service in a noisy trace) is not
        // learned.
        let mut vocabulary: BTreeSet<String> = COMMON_WORDS.iter().map(|w| w.to_string()).collect();
        for ev in &traces {
            for e in ev {
                if let Event::User(t) = e {
                    vocabulary.extend(words(t));
                }
            }
        }
        for v in leftovers.iter() {
            vocabulary.extend(words(v));
        }
        for f in &tools.functions {
            vocabulary.extend(words(&f.name));
            vocabulary.extend(words(&f.description));
            vocabulary.extend(words(&f.parameters.to_string()));
        }
        let mut values_vocabulary: BTreeSet<String> =
            leftovers.iter().flat_map(|v| words(v)).collect();
        for f in &tools.functions {
            values_vocabulary.extend(words(&f.name));
            values_vocabulary.extend(words(&f.description));
            values_vocabulary.extend(words(&f.parameters.to_string()));
        }
        // Flags are only ever said through the simulator's own predicate phrases: a learned
        // phrasing that mentions one ("they do not serve alcohol") could contradict the results.
        let flag_words: BTreeSet<String> = funcs
            .iter()
            .flat_map(|f| f.args.iter())
            .filter(|a| a.is_flag)
            .flat_map(|a| words(&a.predicate).collect::<Vec<_>>())
            .collect();
        let guards = Guards {
            leftovers: Leftovers::new(&leftovers),
            vocabulary,
            values_vocabulary,
            flag_words,
            arg_names: target_args.iter().map(|s| s.to_string()).collect(),
            spoken: Spoken::new(&ctx.task.settings.reference_date),
        };
        let mut t = Templates::default();
        for (ev, mine) in traces.iter().zip(&local) {
            learn_templates(ev, mine, &entity, &guards, &mut t);
        }
        Domain {
            flows: Flows::of(&traces),
            values: values
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            records,
            templates: t,
            entity,
            arg_rates: arg_counts
                .into_iter()
                .map(|(f, args)| {
                    let n = calls[&f] as f64;
                    (
                        f,
                        args.into_iter().map(|(a, c)| (a, c as f64 / n)).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// The field a transaction books by: a required transaction argument that search results carry
/// and that no search function takes (or, failing that, that some search does not require: an
/// event's name is found by one search and looked up by name in another).
fn entity_field(tools: &ToolSet, records: &[Record]) -> Option<String> {
    let searches: Vec<&Function> = tools.of_kind(FunctionKind::Search).collect();
    let in_records = |n: &str| records.iter().any(|r| r.contains_key(n));
    let required: Vec<&str> = tools
        .of_kind(FunctionKind::Transaction)
        .flat_map(|f| f.required())
        .filter(|n| in_records(n))
        .collect();
    let taken_by_none = |n: &&&str| searches.iter().all(|s| s.parameter(n).is_none());
    let required_by_some_not_all = |n: &&&str| searches.iter().any(|s| !s.required().contains(*n));
    required
        .iter()
        .find(taken_by_none)
        .or_else(|| required.iter().find(required_by_some_not_all))
        .map(|s| s.to_string())
}

/// Frequent English words of four letters or more that say nothing about a domain; with them a
/// small trace pool does not make every ordinary question look foreign.
const COMMON_WORDS: &[&str] = &[
    "about",
    "again",
    "also",
    "anything",
    "anywhere",
    "around",
    "available",
    "because",
    "before",
    "better",
    "could",
    "does",
    "done",
    "each",
    "else",
    "enjoy",
    "even",
    "every",
    "find",
    "found",
    "from",
    "give",
    "glad",
    "good",
    "great",
    "have",
    "help",
    "here",
    "just",
    "know",
    "like",
    "look",
    "looking",
    "make",
    "many",
    "more",
    "most",
    "much",
    "need",
    "nice",
    "okay",
    "only",
    "other",
    "please",
    "really",
    "right",
    "should",
    "some",
    "something",
    "sorry",
    "sure",
    "tell",
    "than",
    "thank",
    "thanks",
    "that",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "this",
    "those",
    "want",
    "welcome",
    "well",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "will",
    "with",
    "would",
    "your",
    "yours",
];

/// Lowercase alphabetic words of at least 4 letters (the content words a domain check needs).
fn words(t: &str) -> impl Iterator<Item = String> + '_ {
    t.split(|c: char| !c.is_alphabetic())
        .filter(|w| w.chars().count() >= 4)
        .map(str::to_lowercase)
}

/// What a learned template must pass.
struct Guards {
    /// Known values that may not remain outside placeholders.
    leftovers: Leftovers,
    /// Content words of the domain.
    vocabulary: BTreeSet<String>,
    /// Words of known values and of the schema: the only proper nouns a template may keep.
    values_vocabulary: BTreeSet<String>,
    /// Words of flag predicates.
    flag_words: BTreeSet<String>,
    /// Argument names of the schema (a question for one must not name another).
    arg_names: BTreeSet<String>,
    /// Spoken forms of values, for delexicalization.
    spoken: Spoken,
}

/// Words that carry a value said in a form no call uses ("at one in the afternoon", "for two",
/// "next Thursday"): a template keeping one would contradict the values refilled around it.
/// Besides these: number words up to twelve, weekday names and month names but "may" (a verb
/// far more often than a month).
const VALUE_WORDS: &[&str] = &[
    "half",
    "quarter",
    "noon",
    "midnight",
    "morning",
    "afternoon",
    "evening",
    "night",
    "tonight",
    "today",
    "tomorrow",
    "yesterday",
    "weekend",
    "o'clock",
    "pm",
];

fn is_value_word(w: &str) -> bool {
    VALUE_WORDS.contains(&w)
        || UNITS[1..=12].contains(&w)
        || WEEKDAYS.contains(&w)
        || (w != "may" && MONTHS.contains(&w))
}

impl Guards {
    /// No value-like leftovers, no value words, no flag talk, no proper noun that is not a known
    /// value.
    fn user(&self, t: &str) -> bool {
        if !clean_template(t, &self.leftovers) {
            return false;
        }
        let outside_words = t
            .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '{' && c != '}')
            .filter(|w| !w.contains('{'))
            .map(|w| w.trim_matches('\'').to_lowercase());
        if outside_words.into_iter().any(|w| is_value_word(&w)) {
            return false;
        }
        let mut sentence_start = true;
        for w in t.split_inclusive(|c: char| !c.is_alphanumeric() && c != '{' && c != '}') {
            let word: String = w.chars().take_while(|c| c.is_alphabetic()).collect();
            let lower = word.to_lowercase();
            if self.flag_words.contains(&lower) {
                return false;
            }
            if !sentence_start
                && word.chars().count() >= 2
                && word.chars().next().is_some_and(char::is_uppercase)
                && !self.values_vocabulary.contains(&lower)
            {
                return false;
            }
            let tail = w.trim_end();
            if tail.ends_with(['.', '!', '?']) {
                sentence_start = true;
            } else if !word.is_empty() || w.contains('{') {
                sentence_start = false;
            }
        }
        true
    }

    /// Assistant phrasings must also stay in the domain's words: no unknown proper noun, and at
    /// most a quarter unknown content words.
    fn assistant(&self, t: &str) -> bool {
        if !self.user(t) {
            return false;
        }
        let mut total = 0usize;
        let mut unknown = 0usize;
        for (i, w) in t
            .split(|c: char| !c.is_alphabetic() && c != '{' && c != '}')
            .enumerate()
        {
            if w.contains('{') || w.chars().count() < 4 {
                continue;
            }
            total += 1;
            if !self.vocabulary.contains(&w.to_lowercase()) {
                if i > 0 && w.chars().next().is_some_and(char::is_uppercase) {
                    return false;
                }
                unknown += 1;
            }
        }
        unknown * 4 <= total
    }
}

/// A short reply without a question (confirmations, thanks): nothing in it needs an answer.
fn short_statement(t: &str) -> bool {
    !t.contains('?') && t.split_whitespace().count() <= 10
}

fn learn_templates(
    ev: &[Event<'_>],
    local: &[(String, String)],
    entity: &Option<String>,
    guards: &Guards,
    t: &mut Templates,
) {
    let mut shown: Option<Record> = None;
    let mut last_call: Option<(&ToolCall, FunctionKind)> = None;
    let mut searched = false;
    let mut results: Vec<Record> = Vec::new();
    let first_user = ev.iter().position(|e| matches!(e, Event::User(_)));
    let last_user = ev.iter().rposition(|e| matches!(e, Event::User(_)));
    let last_say = ev.iter().rposition(|e| matches!(e, Event::Say(_)));
    // Values said in this trace: call values plus what was shown to the user.
    let mut said: Vec<(String, String)> = local.to_vec();
    for (i, e) in ev.iter().enumerate() {
        match e {
            Event::Call(c, k) => {
                searched |= *k == FunctionKind::Search;
                last_call = Some((c, *k));
            }
            Event::Results(rs) => {
                shown = rs.first().cloned();
                results = rs.clone();
                // Every record may be presented later ("Another one is …"): all their values.
                for r in rs {
                    for (k, v) in r {
                        if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                            said.push((k.clone(), v.clone()));
                        }
                    }
                }
            }
            Event::User(text) => {
                let d = delexicalize(text, &said, &guards.spoken);
                if !guards.user(&d) {
                    continue;
                }
                let keys = placeholders(&d);
                let next_is_transaction = matches!(
                    ev.get(i + 1),
                    Some(Event::Call(_, FunctionKind::Transaction))
                );
                if keys.is_empty() {
                    if Some(i) == first_user {
                        push_unique(&mut t.opener, d);
                    } else if short_statement(&d) && Some(i) == last_user {
                        push_unique(&mut t.thanks, d);
                    } else if short_statement(&d) && next_is_transaction {
                        push_unique(&mut t.confirm_u, d);
                    } else if let Some(Event::Say(a)) = ev.get(i + 1) {
                        // A value-free request answered by presenting another result.
                        let presents_another =
                            entity.as_ref().is_some_and(|e| {
                                results.iter().skip(1).filter_map(|r| r.get(e)).any(|name| {
                                    name.chars().count() >= 3 && a.contains(name.as_str())
                                })
                            });
                        if presents_another && !d.contains('{') && guards.assistant(&d) {
                            push_unique(&mut t.another, d);
                            continue;
                        }
                        // A value-free question answered by a field of the shown record.
                        if let Some(r) = &shown {
                            let pairs: Vec<(String, String)> = r
                                .iter()
                                .filter(|(k, v)| {
                                    Some(*k) != entity.as_ref()
                                        && v.chars().count() >= 3
                                        && !v.eq_ignore_ascii_case("true")
                                        && !v.eq_ignore_ascii_case("false")
                                        && !local.iter().any(|(lk, _)| lk == *k)
                                })
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            let da = delexicalize(a, &said, &guards.spoken);
                            let ka = placeholders(&da);
                            if let [(field, _)] = pairs
                                .iter()
                                .filter(|(k, _)| ka.contains(k))
                                .cloned()
                                .collect::<Vec<_>>()
                                .as_slice()
                            {
                                if guards.assistant(&da) {
                                    push_unique(t.detail_q.entry(field.clone()).or_default(), d);
                                    push_unique(t.detail_a.entry(field.clone()).or_default(), da);
                                }
                            }
                        }
                    }
                } else {
                    // The question right before a single-value answer asks for that value
                    // (not a reply reporting a transaction: "It failed. Anything else?").
                    let after_transaction =
                        matches!(last_call, Some((_, FunctionKind::Transaction)));
                    if let ([key], Some(Event::Say(q)), false) = (
                        keys.as_slice(),
                        i.checked_sub(1).and_then(|p| ev.get(p)),
                        after_transaction,
                    ) {
                        let dq = delexicalize(q, &said, &guards.spoken);
                        let lower = dq.to_lowercase();
                        let names_other = guards.arg_names.iter().any(|n| {
                            n != key
                                && lower
                                    .match_indices(&human(n))
                                    .any(|(p, _)| word_bounded(&lower, p, n.len()))
                        });
                        if dq.matches('?').count() == 1
                            && placeholders(&dq).is_empty()
                            && !names_other
                            && guards.assistant(&dq)
                        {
                            push_unique(t.ask.entry(key.clone()).or_default(), dq);
                        }
                    }
                    // Leads to a booking when the next call is a transaction.
                    let next_call = ev[i + 1..].iter().find_map(|e| match e {
                        Event::Call(_, k) => Some(*k),
                        _ => None,
                    });
                    if next_call == Some(FunctionKind::Transaction) {
                        push_unique(t.request.entry(keys.clone()).or_default(), d.clone());
                    }
                    let next_is_search =
                        matches!(ev.get(i + 1), Some(Event::Call(_, FunctionKind::Search)));
                    if searched && next_is_search {
                        push_unique(t.research.entry(keys.clone()).or_default(), d.clone());
                    }
                    push_unique(t.inform.entry(keys).or_default(), d);
                }
            }
            Event::Say(text) => {
                let d = delexicalize(text, &said, &guards.spoken);
                if !guards.assistant(&d) {
                    continue;
                }
                let keys = placeholders(&d);
                let prev = i.checked_sub(1).and_then(|p| ev.get(p));
                let after_results = matches!(prev, Some(Event::Results(_)));
                match last_call {
                    Some((_, FunctionKind::Search)) if after_results => {
                        if entity.as_ref().is_some_and(|e| keys.contains(e)) {
                            push_unique(&mut t.present, d);
                        }
                    }
                    // A transaction with no result record failed: its reply is no success message.
                    Some((_, FunctionKind::Transaction)) if matches!(prev, Some(Event::Results(r)) if !r.is_empty()) =>
                    {
                        push_unique(&mut t.success, d);
                    }
                    Some((_, FunctionKind::Transaction)) if matches!(prev, Some(Event::Results(r)) if r.is_empty()) =>
                    {
                        push_unique(&mut t.failure, d);
                    }
                    _ => {
                        let confirms = matches!(ev.get(i + 1), Some(Event::User(_)))
                            && matches!(
                                ev.get(i + 2),
                                Some(Event::Call(_, FunctionKind::Transaction))
                            );
                        let names_entity = entity.as_ref().is_none_or(|e| keys.contains(e));
                        if confirms && names_entity {
                            push_unique(&mut t.confirm_a, d);
                        } else if Some(i) == last_say && keys.is_empty() {
                            push_unique(&mut t.close, d);
                        }
                    }
                }
            }
        }
    }
}

// ---- Simulation ----------------------------------------------------------------------------

/// The offline teacher.
pub struct OfflineTeacher {
    respond_name: String,
    respond_arg: String,
    searches: Vec<Func>,
    transactions: Vec<Func>,
    domain: Domain,
    /// Values per argument after synthesis widened the trace values.
    pools: BTreeMap<String, Vec<String>>,
    /// How values are said in messages.
    spoken: Spoken,
    /// Phrasings of other services mapped onto this schema ([`OfflineTeacher::with_phrasebook`]).
    borrowed: Templates,
    /// The share of choices that take a borrowed phrasing where there is one.
    borrowed_share: f64,
    /// Whether a phrasebook widened the value pools ([`OfflineTeacher::borrow_values`]).
    lent_values: bool,
}

/// Widens value pools whose traces show a time (`HH:MM`) or ISO date format with more values of
/// the same format, so the student sees many values and must copy rather than memorize. Times
/// fill the hours the traces' times span (a restaurant's evening, a flight's whole day) in
/// quarters; dates the 45 days from the reference date.
fn widen(values: &[String], reference_date: &str) -> Vec<String> {
    let is_time = |v: &str| parse_clock(v).is_some();
    let is_date = |v: &str| parse_iso_value(v).is_some();
    let mut out: BTreeSet<String> = values.iter().cloned().collect();
    if !values.is_empty() && values.iter().all(|v| is_time(v)) {
        let padded = values.iter().all(|v| v.len() == 5);
        let hours = values.iter().filter_map(|v| parse_clock(v)).map(|(h, _)| h);
        let (first, last) = (hours.clone().min().unwrap_or(0), hours.max().unwrap_or(23));
        for h in first..=last {
            for m in [0, 15, 30, 45] {
                out.insert(if padded || h >= 10 {
                    format!("{h:02}:{m:02}")
                } else {
                    format!("{h}:{m:02}")
                });
            }
        }
    } else if !values.is_empty() && values.iter().all(|v| is_date(v)) {
        if let Some(start) = parse_date(reference_date) {
            for d in 0..45 {
                out.insert(format_date(start + d));
            }
        }
    }
    out.into_iter().collect()
}

/// What a user message that states values does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Asks for a search or a transaction with these values.
    Request,
    /// Answers the assistant's question for a value.
    Answer,
    /// Changes a value given before (after a lead such as "Actually, …").
    Change,
}

/// What a booking starts from (see [`OfflineTeacher::book`]).
#[derive(Clone, Copy)]
struct Booking<'a> {
    /// The place booked: a presented result, or a place the user knows.
    record: &'a Record,
    /// Values settled before (a search's), not said again.
    known: &'a [(String, String)],
    /// Values the user states; the first `asked` of them the assistant asks for one by one.
    stated: &'a [(String, String)],
    /// How many of `stated` are asked for.
    asked: usize,
    /// The user changes a value at the confirmation, and the assistant confirms again.
    change: bool,
    /// How often the request names the place when `stated` does not.
    name_share: f64,
    /// The call may fail (nothing comes back).
    may_fail: bool,
}

/// The layout of a booking without a search (see [`OfflineTeacher::direct_plan`]).
struct DirectPlan {
    /// Values asked one by one (the rest are in the request).
    asked: usize,
    /// The user changes a value at the confirmation, and the assistant confirms again.
    change: bool,
    /// Questions about the place after the booking.
    questions: usize,
}

/// The state of one conversation being written.
struct Writer<'t> {
    teacher: &'t OfflineTeacher,
    rng: ChaCha8Rng,
    messages: Vec<Message>,
    turns: usize,
}

impl Writer<'_> {
    fn user(&mut self, text: String) {
        self.messages.push(Message::User { content: text });
        self.turns += 1;
    }

    fn say(&mut self, text: String) {
        let mut args = Map::new();
        args.insert(self.teacher.respond_arg.clone(), Value::String(text));
        self.messages.push(Message::call(ToolCall::new(
            &self.teacher.respond_name,
            args,
        )));
        self.turns += 1;
    }

    fn call(&mut self, name: &str, args: Map<String, Value>, results: &[Record]) {
        self.messages.push(Message::call(ToolCall::new(name, args)));
        self.turns += 1;
        let list: Vec<Value> = results
            .iter()
            .map(|r| {
                Value::Object(
                    r.iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect(),
                )
            })
            .collect();
        self.messages.push(Message::Tool {
            tool_call_id: String::new(),
            content: Value::Array(list).to_string(),
        });
    }

    /// A borrowed phrasing ([`OfflineTeacher::with_phrasebook`]) `borrowed_share` of the time
    /// where there is one, otherwise [`Writer::pick`]. No random draw without a borrowed
    /// phrasing, so a teacher with no phrasebook writes what it wrote before.
    fn pick_with(&mut self, learned: &[String], borrowed: &[String], builtin: &[&str]) -> String {
        if self.borrows(borrowed) {
            borrowed.choose(&mut self.rng).expect("non-empty").clone()
        } else {
            self.pick(learned, builtin)
        }
    }

    /// Whether to take one of `borrowed` this time.
    fn borrows(&mut self, borrowed: &[String]) -> bool {
        let share = self.teacher.borrowed_share;
        share > 0.0 && !borrowed.is_empty() && self.rng.random_bool(share.min(1.0))
    }

    fn pick<'a>(&mut self, learned: &'a [String], builtin: &'a [&'a str]) -> String {
        // Trace phrasings (domain signal) as far as the traces offer variety, built-ins for the
        // rest.
        let share = if builtin.is_empty() {
            1.0
        } else {
            builtin::LEARNED_SHARE
        };
        if !learned.is_empty() && self.rng.random_bool(share) {
            learned.choose(&mut self.rng).expect("non-empty").clone()
        } else {
            builtin
                .choose(&mut self.rng)
                .map(|s| s.to_string())
                .unwrap_or_default()
        }
    }

    /// A user message stating `given` (argument → text) as `act`; flags are said as predicates.
    fn inform(
        &mut self,
        func: &Func,
        given: &[(String, String)],
        lead: Option<&str>,
        act: Act,
    ) -> String {
        let mut plain: Vec<(String, String)> = Vec::new();
        let mut flags = Vec::new();
        for (k, v) in given {
            match func.arg(k) {
                Some(a) if a.is_flag => {
                    if v.eq_ignore_ascii_case("true") {
                        flags.push(a.predicate.clone());
                    } else {
                        flags.push(format!("not {}", a.predicate));
                    }
                }
                _ => plain.push((k.clone(), v.clone())),
            }
        }
        let mut key: Vec<String> = plain.iter().map(|(k, _)| k.clone()).collect();
        key.sort();
        // Said as people say them ("7 pm", "tomorrow"); the call keeps the canonical values.
        let plain: Vec<(String, String)> = plain
            .iter()
            .map(|(k, v)| (k.clone(), self.teacher.spoken.say(v, &mut self.rng)))
            .collect();
        let values: BTreeMap<String, String> = plain.iter().cloned().collect();
        let of = |templates: &Templates| match templates.request.get(&key) {
            Some(r) if func.kind == FunctionKind::Transaction && !r.is_empty() => r.clone(),
            _ => templates.inform.get(&key).cloned().unwrap_or_default(),
        };
        let learned = of(&self.teacher.domain.templates);
        let borrowed = of(&self.teacher.borrowed);
        let mut text = if plain.is_empty() {
            String::new()
        } else if self.borrows(&borrowed) {
            let t = borrowed.choose(&mut self.rng).expect("non-empty");
            fill(t, &values).expect("keys match")
        } else if !learned.is_empty() && self.rng.random_bool(builtin::LEARNED_SHARE) {
            let t = learned.choose(&mut self.rng).expect("non-empty");
            fill(t, &values).expect("keys match")
        } else {
            let humans: Vec<String> = plain.iter().map(|(k, _)| human(k)).collect();
            let (name, said) = self.teacher.said(func, &plain, &humans);
            let rng = &mut self.rng;
            match (act, func.kind) {
                (Act::Request, FunctionKind::Transaction) => {
                    builtin::transaction_request(rng, &func.act, name.map(|n| n.value), &said)
                }
                (Act::Request, _) => builtin::search_request(rng, &func.noun, &said),
                // Answers and changes state one value at a time.
                _ => name
                    .iter()
                    .chain(&said)
                    .map(|s| builtin::answer(rng, s))
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        };
        if let Some(lead) = lead {
            text = if text.is_empty() {
                lead.to_string()
            } else {
                format!("{lead} {text}")
            };
        }
        if !flags.is_empty() {
            let f = format!(
                "{} {}.",
                [
                    "I'd like a place that",
                    "It should be somewhere that",
                    "Ideally one that"
                ]
                .choose(&mut self.rng)
                .expect("non-empty"),
                flags.join(" and ")
            );
            text = if text.is_empty() {
                f
            } else {
                format!("{text} {f}")
            };
        }
        text
    }

    /// Fills a template with values said as people say them.
    fn fill_spoken(&mut self, t: &str, values: &BTreeMap<String, String>) -> Option<String> {
        let said: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.clone(), self.teacher.spoken.say(v, &mut self.rng)))
            .collect();
        fill(t, &said)
    }

    fn ask(&mut self, arg: &str) -> String {
        let learned = self
            .teacher
            .domain
            .templates
            .ask
            .get(arg)
            .cloned()
            .unwrap_or_default();
        let h = human(arg);
        let builtin = [
            format!("What {h} would you like?"),
            format!("Which {h} do you have in mind?"),
            format!("Could you tell me the {h}, please?"),
        ];
        let b: Vec<&str> = builtin.iter().map(String::as_str).collect();
        let borrowed = self
            .teacher
            .borrowed
            .ask
            .get(arg)
            .cloned()
            .unwrap_or_default();
        self.pick_with(&learned, &borrowed, &b)
    }
}

/// A yes/no question about a flag predicate ("has live music") and its answer.
fn flag_qa(rng: &mut ChaCha8Rng, predicate: &str, yes: bool) -> (String, String) {
    // "has live music" → "have live music", "serves alcohol" → "serve alcohol".
    let base = match predicate.split_once(' ') {
        Some(("has", rest)) => format!("have {rest}"),
        Some(("is", rest)) => format!("be {rest}"),
        Some((verb, rest)) => format!("{} {rest}", verb.strip_suffix('s').unwrap_or(verb)),
        None => predicate.to_string(),
    };
    let q = [
        format!("Do they {base}?"),
        format!("Does the place {base}?"),
        format!("Does it {base}?"),
        format!("Can you tell me if they {base}?"),
    ]
    .choose(rng)
    .expect("non-empty")
    .clone();
    let a = if yes {
        [
            format!("Yes, it {predicate}."),
            format!("Yes, they {base}."),
        ]
    } else {
        [
            format!("No, it does not {base}."),
            format!("No, they don't {base}."),
        ]
    }
    .choose(rng)
    .expect("non-empty")
    .clone();
    (q, a)
}

/// What the plan of one conversation looks like: counts that add up to the target length.
struct Plan {
    /// Required search arguments asked one by one (the rest are in the opener).
    asked: usize,
    /// Book at the end (otherwise the user declines and the assistant closes).
    book: bool,
    /// Required transaction-only arguments asked one by one (the rest are in the booking request).
    asked_tx: usize,
    /// The user changes a value at the confirmation, and the assistant confirms again.
    change: bool,
    /// Middle actions: 2 = a question or another option, 3 = a repeated search.
    fillers: Vec<u8>,
}

impl OfflineTeacher {
    /// Prepares the simulator: reads the schema's search and transaction functions and extracts
    /// the domain from the traces. Fails when the traces lack a value for a required argument.
    pub fn new(ctx: &Context<'_>) -> Result<OfflineTeacher, TeacherError> {
        let tools = ctx.tools;
        let respond = tools
            .respond()
            .ok_or_else(|| TeacherError::Context("the tool schema has no reply function".into()))?;
        let respond_arg = respond
            .required()
            .first()
            .map(|s| s.to_string())
            .or_else(|| respond.parameter_names().first().map(|s| s.to_string()))
            .ok_or_else(|| {
                TeacherError::Context(format!("reply function {} takes no argument", respond.name))
            })?;
        let searches: Vec<Func> = tools.of_kind(FunctionKind::Search).map(Func::new).collect();
        let transactions: Vec<Func> = tools
            .of_kind(FunctionKind::Transaction)
            .map(Func::new)
            .collect();
        if searches.is_empty() {
            return Err(TeacherError::Context(
                "the tool schema has no search function".into(),
            ));
        }
        let domain = Domain::extract(ctx);
        let mut pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &domain.values {
            pools.insert(k.clone(), widen(v, &ctx.task.settings.reference_date));
        }
        // An enum in the schema lists every legal value: all of them are fair to draw.
        for f in searches.iter().chain(&transactions) {
            for a in f.args.iter().filter(|a| !a.is_flag) {
                if let Some(e) = a.schema.get("enum").and_then(Value::as_array) {
                    let pool = pools.entry(a.name.clone()).or_default();
                    for v in e.iter().map(value_text) {
                        if !pool.contains(&v) && a.json(&v).is_some() {
                            pool.push(v);
                        }
                    }
                    pool.sort();
                }
            }
        }
        let teacher = OfflineTeacher {
            respond_name: respond.name.clone(),
            respond_arg,
            searches,
            transactions,
            domain,
            pools,
            spoken: Spoken::new(&ctx.task.settings.reference_date),
            borrowed: Templates::default(),
            borrowed_share: 0.0,
            lent_values: false,
        };
        for f in &teacher.searches {
            for &i in &f.required {
                teacher.check_pool(f, i)?;
            }
        }
        for f in &teacher.transactions {
            for &i in &f.required {
                let a = &f.args[i].name;
                let from_search = teacher.searches.iter().any(|s| s.arg(a).is_some());
                if !from_search && teacher.domain.entity.as_deref() != Some(a) {
                    teacher.check_pool(f, i)?;
                }
            }
        }
        Ok(teacher)
    }

    fn check_pool(&self, f: &Func, i: usize) -> Result<(), TeacherError> {
        let a = &f.args[i];
        if a.is_flag || self.pools.get(&a.name).is_some_and(|p| !p.is_empty()) {
            Ok(())
        } else {
            Err(TeacherError::Context(format!(
                "no usable value for required argument {}.{} in the filtered traces",
                f.name, a.name
            )))
        }
    }

    /// The extracted domain (for statistics and tests).
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Lets other services' phrasings (a [`Phrasebook`]) word `share` of the messages they have
    /// a phrasing for, the traces and built-ins the rest. Only phrasings whose rare words the
    /// traces of `ctx` say, and whose placeholders map onto this schema, are taken.
    pub fn with_phrasebook(mut self, ctx: &Context<'_>, book: &Phrasebook, share: f64) -> Self {
        let vocabulary = super::phrasebook::vocabulary(ctx.traces, &self.respond_name);
        self.borrowed = book.for_target(ctx.tools, &vocabulary);
        self.borrowed_share = share;
        self
    }

    /// Widens the value pools of arguments whose role shares values across domains (places,
    /// names, counts) with a phrasebook's values of that role that fit the argument's schema.
    /// Returns how many values were added.
    pub fn borrow_values(&mut self, book: &Phrasebook) -> usize {
        let mut added = 0;
        for f in self.searches.iter().chain(&self.transactions) {
            for a in f.args.iter().filter(|a| !a.is_flag) {
                let Some(values) = book.values.get(&a.role) else {
                    continue;
                };
                if !super::phrasebook::shares_values(a.role) {
                    continue;
                }
                let pool = self.pools.entry(a.name.clone()).or_default();
                let mut all: BTreeSet<String> = pool.iter().cloned().collect();
                let before = all.len();
                all.extend(values.iter().filter(|v| a.json(v).is_some()).cloned());
                added += all.len() - before;
                *pool = all.into_iter().collect();
            }
        }
        self.lent_values = true;
        added
    }

    /// The phrasings taken from a phrasebook (for statistics and tests).
    pub fn borrowed(&self) -> &Templates {
        &self.borrowed
    }

    fn draw(&self, rng: &mut ChaCha8Rng, arg: &Arg, avoid: Option<&str>) -> Option<String> {
        if arg.is_flag {
            let v = if rng.random_bool(0.75) {
                "True"
            } else {
                "False"
            };
            // Schemas with real booleans take any case; SGD-style enums take "True"/"False".
            return Some(v.to_string()).filter(|v| arg.json(v).is_some());
        }
        let pool = self.pools.get(&arg.name)?;
        let candidates: Vec<&String> = pool.iter().filter(|v| Some(v.as_str()) != avoid).collect();
        candidates.choose(rng).map(|v| v.to_string())
    }

    /// Search results for `args`: records drawn from the traces' records, with the searched
    /// fields set to the searched values and entity names drawn independently, so names, cities
    /// and other values recombine widely.
    fn results(&self, rng: &mut ChaCha8Rng, args: &[(String, String)]) -> Vec<Record> {
        let n = rng.random_range(1..=5usize);
        let entity = self.domain.entity.as_deref();
        let names = entity
            .and_then(|e| self.pools.get(e))
            .cloned()
            .unwrap_or_default();
        let mut out: Vec<Record> = Vec::with_capacity(n);
        for _ in 0..n * 3 {
            if out.len() == n {
                break;
            }
            let mut r = match self.domain.records.choose(rng) {
                Some(r) => r.clone(),
                None => Record::new(),
            };
            for (k, v) in args {
                r.insert(k.clone(), v.clone());
            }
            let searched_entity = entity.is_some_and(|e| args.iter().any(|(k, _)| k == e));
            if let (Some(e), Some(name), false) = (entity, names.choose(rng), searched_entity) {
                r.insert(e.to_string(), name.clone());
            }
            let key = entity.and_then(|e| r.get(e)).cloned();
            if key.is_none()
                || out
                    .iter()
                    .all(|o| entity.and_then(|e| o.get(e)) != key.as_ref())
            {
                out.push(r);
            }
        }
        out
    }

    fn plan(
        &self,
        rng: &mut ChaCha8Rng,
        target: usize,
        search: &Func,
        tx: Option<&Func>,
        tx_missing: usize,
    ) -> Option<Plan> {
        for attempt in 0..64 {
            let asked = rng.random_range(0..=search.required.len());
            // A short bucket may have no room for a booking: after half the attempts, none.
            let book =
                tx.is_some() && attempt < 32 && rng.random_bool(self.domain.flows.search_then_book);
            let asked_tx = if book {
                rng.random_range(0..=tx_missing)
            } else {
                0
            };
            let change = book && rng.random_bool(0.35);
            let tail = if book {
                7 + 2 * asked_tx + 2 * usize::from(change)
            } else {
                2
            };
            let base = 1 + 2 * asked + 2 + tail;
            if base > target || target - base == 1 {
                continue;
            }
            let mut rem = target - base;
            let mut fillers = Vec::new();
            if rem % 2 == 1 {
                fillers.push(3);
                rem -= 3;
            }
            while rem >= 2 {
                if rem >= 6 && rng.random_bool(0.3) {
                    fillers.extend([3, 3]);
                    rem -= 6;
                } else {
                    fillers.push(2);
                    rem -= 2;
                }
            }
            fillers.shuffle(rng);
            return Some(Plan {
                asked,
                book,
                asked_tx,
                change,
                fillers,
            });
        }
        None
    }

    /// Writes one conversation for `job`.
    pub fn write(&self, job: &Job) -> Outcome {
        let fail = |reason: String| Failure {
            index: job.index,
            reason,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
        let (lo, hi) = (
            job.topic.min_turns,
            job.topic.max_turns.max(job.topic.min_turns),
        );
        let target = rng.random_range(lo..=hi);
        let search = self.searches.choose(&mut rng).expect("checked non-empty");
        let entity = self.domain.entity.clone();
        // The transaction that books what this search finds: it takes the entity or shares args.
        let tx: Option<&Func> = {
            let fits: Vec<&Func> = self
                .transactions
                .iter()
                .filter(|t| {
                    entity.as_deref().is_some_and(|e| t.arg(e).is_some())
                        || t.args.iter().any(|a| search.arg(&a.name).is_some())
                })
                .collect();
            fits.choose(&mut rng).copied()
        };
        let tx_only: Vec<usize> = tx
            .map(|t| {
                t.required
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let n = t.args[i].name.as_str();
                        search.arg(n).is_none() && entity.as_deref() != Some(n)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut w = Writer {
            teacher: self,
            rng,
            messages: Vec::new(),
            turns: 0,
        };
        // A booking of a place the user already knows, where the traces have such flows and
        // one fits the length bucket; otherwise a search, perhaps followed by a booking.
        let direct = match (tx, entity.as_deref()) {
            (Some(t), Some(e)) if w.rng.random_bool(self.domain.flows.transaction_first) => self
                .direct_plan(&mut w.rng, search, t, (lo, hi, target))
                .map(|p| (t, e, p)),
            _ => None,
        };
        match direct {
            Some((t, e, p)) => self.write_direct(&mut w, search, t, e, &p),
            None => match self.plan(&mut w.rng, target, search, tx, tx_only.len()) {
                Some(plan) => self.write_search(&mut w, search, tx, &tx_only, &plan),
                None => Err(format!("no dialogue plan fits {target} turns")),
            },
        }
        .map_err(fail)?;
        let close = w.pick_with(
            &self.domain.templates.close,
            &self.borrowed.close,
            builtin::CLOSE,
        );
        w.say(close);

        if w.turns < lo || w.turns > hi {
            return Err(fail(format!(
                "wrote {} turns for bucket {}..{}",
                w.turns, lo, hi
            )));
        }
        let mut meta = Map::new();
        meta.insert("teacher".into(), "offline".into());
        meta.insert("topic".into(), job.topic.name.clone().into());
        let mut c = Conversation {
            id: format!("gen-{:05}", job.index),
            messages: w.messages,
            meta,
        };
        c.assign_call_ids();
        Ok(c)
    }

    /// A conversation around a search: the user's goal (asked for where the opener lacks it),
    /// the search, questions, other options and repeated searches, then perhaps a booking.
    fn write_search(
        &self,
        w: &mut Writer<'_>,
        search: &Func,
        tx: Option<&Func>,
        tx_only: &[usize],
        plan: &Plan,
    ) -> Result<(), String> {
        // The user's search goal: every required argument, some optional ones.
        let mut goal: Vec<(String, String)> = Vec::new();
        for &i in &search.required {
            let v = self
                .draw(&mut w.rng, &search.args[i], None)
                .ok_or_else(|| format!("no value for {}", search.args[i].name))?;
            goal.push((search.args[i].name.clone(), v));
        }
        for &i in &search.optional {
            let a = &search.args[i];
            let p = if a.is_flag { 0.12 } else { 0.2 };
            if w.rng.random_bool(p) {
                if let Some(v) = self.draw(&mut w.rng, a, None) {
                    if !a.is_flag || v.eq_ignore_ascii_case("true") {
                        goal.push((a.name.clone(), v));
                    }
                }
            }
        }
        // Opener: everything but the asked required arguments (optional ones ride along).
        let mut order: Vec<usize> = (0..search.required.len()).collect();
        order.shuffle(&mut w.rng);
        let asked: BTreeSet<usize> = order[..plan.asked].iter().copied().collect();
        let opener_given: Vec<(String, String)> = goal
            .iter()
            .enumerate()
            .filter(|(i, _)| !asked.contains(i))
            .map(|(_, kv)| kv.clone())
            .collect();
        let opener = if opener_given.is_empty() {
            w.pick_with(
                &self.domain.templates.opener,
                &self.borrowed.opener,
                builtin::OPENER,
            )
        } else {
            w.inform(search, &opener_given, None, Act::Request)
        };
        w.user(opener);
        for &i in order[..plan.asked].iter() {
            let (k, v) = goal[i].clone();
            let q = w.ask(&k);
            w.say(q);
            let a = w.inform(search, &[(k, v)], None, Act::Answer);
            w.user(a);
        }
        // Search at once: all required arguments are known now.
        let mut current = goal.clone();
        let mut shown = self.search_and_present(w, search, &current)?;
        let mut shown_at = 0usize;

        for f in &plan.fillers {
            if *f == 3 {
                // Repeated search: change a value, or add an optional argument.
                let optional_new: Vec<&Arg> = search
                    .optional
                    .iter()
                    .map(|&i| &search.args[i])
                    .filter(|a| !current.iter().any(|(k, _)| *k == a.name))
                    .collect();
                // Every real change on offer: another value for a searched argument, or an
                // optional argument not used yet. Changing to the same value is no change.
                let mut changes: Vec<(String, String)> = Vec::new();
                for (k, old) in &current {
                    let a = search.arg(k).expect("search arg");
                    if let Some(v) = self.draw(&mut w.rng, a, Some(old)) {
                        if !a.is_flag
                            || (v.eq_ignore_ascii_case("true") && !old.eq_ignore_ascii_case("true"))
                        {
                            changes.push((k.clone(), v));
                        }
                    }
                }
                for a in optional_new {
                    if let Some(v) = self.draw(&mut w.rng, a, None) {
                        if !a.is_flag || v.eq_ignore_ascii_case("true") {
                            changes.push((a.name.clone(), v));
                        }
                    }
                }
                let Some((k, v)) = changes.choose(&mut w.rng).cloned() else {
                    return Err("no value to change for a repeated search".into());
                };
                match current.iter_mut().find(|(ck, _)| *ck == k) {
                    Some(slot) => slot.1 = v.clone(),
                    None => current.push((k.clone(), v.clone())),
                }
                let lead = builtin::RESEARCH_LEAD
                    .choose(&mut w.rng)
                    .map(|s| s.to_string());
                // Mostly a phrasing some trace used to search again, else lead + statement.
                let learned = self
                    .domain
                    .templates
                    .research
                    .get(std::slice::from_ref(&k))
                    .filter(|_| search.arg(&k).is_some_and(|a| !a.is_flag))
                    .cloned()
                    .unwrap_or_default();
                let text = if !learned.is_empty() && w.rng.random_bool(0.6) {
                    let t = learned.choose(&mut w.rng).expect("non-empty").clone();
                    let values: BTreeMap<String, String> = [(k.clone(), v.clone())].into();
                    w.fill_spoken(&t, &values).unwrap_or(t)
                } else {
                    w.inform(search, &[(k, v)], lead.as_deref(), Act::Change)
                };
                w.user(text);
                shown = self.search_and_present(w, search, &current)?;
                shown_at = 0;
            } else if shown.len() > shown_at + 1 && w.rng.random_bool(0.4) {
                let q = w.pick_with(
                    &self.domain.templates.another,
                    &self.borrowed.another,
                    builtin::ANOTHER,
                );
                w.user(q);
                shown_at += 1;
                let text =
                    self.present(w, &shown[shown_at], shown.len() - shown_at, &current, false);
                w.say(text);
            } else {
                self.detail(w, &shown[shown_at]);
            }
        }

        if let (true, Some(t)) = (plan.book, tx) {
            let record = shown[shown_at].clone();
            // Transaction-only values the user states: required ones always, optional sometimes.
            let mut extra: Vec<(String, String)> = Vec::new();
            for &i in tx_only {
                let v = self
                    .draw(&mut w.rng, &t.args[i], None)
                    .ok_or_else(|| format!("no value for {}", t.args[i].name))?;
                extra.push((t.args[i].name.clone(), v));
            }
            let booking = Booking {
                record: &record,
                known: &current,
                stated: &extra,
                asked: plan.asked_tx,
                change: plan.change,
                name_share: 0.6,
                may_fail: true,
            };
            self.book(w, search, t, &booking)?;
            let thanks = w.pick_with(
                &self.domain.templates.thanks,
                &self.borrowed.thanks,
                builtin::THANKS,
            );
            w.user(thanks);
        } else {
            let bye = w.pick(&[], builtin::DECLINE);
            w.user(bye);
        }
        Ok(())
    }

    /// Books `b.record` through `t` and reports it: the user's request (the stated values after
    /// the first `b.asked`, which the assistant asks for one by one, and optional values as
    /// often as the traces pass them), the assistant's confirmation, perhaps a change and a new
    /// confirmation, the user's yes, the call and its report. Returns the booked record, or
    /// `None` when the booking failed.
    fn book(
        &self,
        w: &mut Writer<'_>,
        search: &Func,
        t: &Func,
        b: &Booking<'_>,
    ) -> Result<Option<Record>, String> {
        let Booking {
            record,
            known,
            stated: extra,
            asked,
            change,
            name_share,
            may_fail,
        } = *b;
        let entity = self.domain.entity.clone();
        // Optional transaction values, as often as the traces' calls pass them; the user
        // states about half of them, the others are defaults the assistant proposes in its
        // confirmation ("… for 2 people today?") and the user accepts.
        let mut opt_extra: Vec<(String, String)> = Vec::new();
        let mut opt_said: Vec<(String, String)> = Vec::new();
        for &i in &t.optional {
            let a = &t.args[i];
            let rate = self
                .domain
                .arg_rates
                .get(&t.name)
                .and_then(|m| m.get(&a.name))
                .copied()
                .unwrap_or(0.5)
                .clamp(0.0, 0.95);
            if search.arg(&a.name).is_none() && !a.is_flag && w.rng.random_bool(rate) {
                if let Some(v) = self.draw(&mut w.rng, a, None) {
                    if w.rng.random_bool(0.5) {
                        opt_said.push((a.name.clone(), v.clone()));
                    }
                    opt_extra.push((a.name.clone(), v));
                }
            }
        }
        let (asked_tx, in_request) = extra.split_at(asked.min(extra.len()));
        let mut request: Vec<(String, String)> = in_request.to_vec();
        request.extend(opt_said);
        // Users often ask to book without naming the place just presented.
        if let Some(e) = &entity {
            let stated = extra.iter().any(|(k, _)| k == e);
            if let (Some(name), false) = (record.get(e), stated) {
                if w.rng.random_bool(name_share) {
                    request.insert(0, (e.clone(), name.clone()));
                }
            }
        }
        // What the transaction does comes from its description ("reserve a table", "buy
        // tickets"), not from one domain.
        let lead = [
            "I'd like to make a reservation.".to_string(),
            "Let's book it.".to_string(),
            format!("I want to {}.", t.act.0),
            "Please make a booking.".to_string(),
        ]
        .choose(&mut w.rng)
        .cloned();
        let req_text = if request.is_empty() {
            lead.unwrap_or_default()
        } else {
            let with_entity = w.inform(t, &request, None, Act::Request);
            if entity
                .as_ref()
                .is_some_and(|e| request.iter().any(|(k, _)| k == e))
            {
                with_entity
            } else {
                format!("{} {with_entity}", lead.unwrap_or_default())
            }
        };
        w.user(req_text);
        for (k, v) in asked_tx.iter().cloned() {
            let q = w.ask(&k);
            w.say(q);
            let a = w.inform(t, &[(k, v)], None, Act::Answer);
            w.user(a);
        }
        // The call's arguments: search values, the chosen record, what the user said.
        let mut call_args = Map::new();
        let mut said: BTreeMap<String, String> = BTreeMap::new();
        for a in &t.args {
            let text = known
                .iter()
                .chain(extra.iter())
                .chain(opt_extra.iter())
                .find(|(k, _)| *k == a.name)
                .map(|(_, v)| v.clone())
                // What the chosen result says (its name, an event's date the user never gave).
                .or_else(|| record.get(&a.name).cloned());
            if let Some(text) = text {
                if let Some(j) = a.json(&text) {
                    call_args.insert(a.name.clone(), j);
                    said.insert(a.name.clone(), text);
                }
            }
        }
        if let Some(missing) = t
            .required
            .iter()
            .find(|&&i| !call_args.contains_key(&t.args[i].name))
        {
            return Err(format!(
                "no value for required {}.{}",
                t.name, t.args[*missing].name
            ));
        }
        let confirm = self.confirm_text(w, t, &said);
        w.say(confirm);
        if change {
            // "No, make it 8 pm": a value the user gave or accepted changes, and the
            // assistant confirms the new details before booking anything.
            let change = self.pick_change(w, search, t, &said);
            match change {
                Some((a, j, v)) => {
                    call_args.insert(a.name.clone(), j);
                    said.insert(a.name.clone(), v.clone());
                    let lead = [
                        "No, actually",
                        "Sorry, I changed my mind.",
                        "Not quite.",
                        "No, please change it.",
                    ]
                    .choose(&mut w.rng)
                    .map(|s| s.to_string());
                    let text = w.inform(t, &[(a.name.clone(), v)], lead.as_deref(), Act::Change);
                    w.user(text);
                    let confirm = self.confirm_text(w, t, &said);
                    w.say(confirm);
                }
                // Nothing to change: the user asks about the place instead, or, where no
                // search has shown it, to hear the details again.
                None if !known.is_empty() => self.detail(w, record),
                None => {
                    let again = w.pick(&[], builtin::REPEAT);
                    w.user(again);
                    let confirm = self.confirm_text(w, t, &said);
                    w.say(confirm);
                }
            }
        }
        let yes = w.pick_with(
            &self.domain.templates.confirm_u,
            &self.borrowed.confirm_u,
            builtin::CONFIRM_U,
        );
        // Users often confirm and ask something in the same message ("Yes. Do they serve
        // alcohol?"): the booking still comes first, the answer rides on its report.
        let question = if w.rng.random_bool(0.4) {
            self.detail_qa(w, record)
        } else {
            None
        };
        let yes = match &question {
            Some((q, _)) => format!("{yes} {q}"),
            None => yes,
        };
        w.user(yes);
        let mut outcome = record.clone();
        outcome.extend(said.iter().map(|(k, v)| (k.clone(), v.clone())));
        // Sometimes the service cannot book: no record comes back, and the reply says so.
        let failed = may_fail && w.rng.random_bool(0.12);
        let done = if failed {
            w.call(&t.name, call_args, &[]);
            self.failure_text(w, &said)
        } else {
            w.call(&t.name, call_args, std::slice::from_ref(&outcome));
            self.success_text(w, &outcome)
        };
        let done = match question {
            Some((_, a)) => format!("{done} {a}"),
            None => done,
        };
        w.say(done);
        Ok((!failed).then_some(outcome))
    }

    /// A value the user may change before a booking: another value for an argument the user
    /// gave or accepted (not the place, not what the search settled), in random order among
    /// those that have another value.
    fn pick_change<'f>(
        &self,
        w: &mut Writer<'_>,
        search: &Func,
        t: &'f Func,
        said: &BTreeMap<String, String>,
    ) -> Option<(&'f Arg, Value, String)> {
        let mut changeable: Vec<&Arg> = t
            .args
            .iter()
            .filter(|a| said.contains_key(&a.name) && self.changeable(search, a))
            .collect();
        changeable.shuffle(&mut w.rng);
        changeable.into_iter().find_map(|a| {
            let old = said.get(&a.name).map(String::as_str);
            let v = self.draw(&mut w.rng, a, old)?;
            Some((a, a.json(&v)?, v))
        })
    }

    /// Whether the user may change `a`, a transaction argument, at the confirmation: a time or
    /// a party size, not a flag, the booked place or what the search settled (its city).
    fn changeable(&self, search: &Func, a: &Arg) -> bool {
        !a.is_flag
            && search.arg(&a.name).is_none()
            && self.domain.entity.as_deref() != Some(a.name.as_str())
    }

    /// Lays out a booking without a search within `lo..=hi` turns (near `target`, of the
    /// parity the flow has): how many stated values are asked one by one, whether the user
    /// changes one at the confirmation, how many questions about the place follow the booking.
    /// `None` where it would take more than four such questions (the traces' direct bookings
    /// are short).
    fn direct_plan(
        &self,
        rng: &mut ChaCha8Rng,
        search: &Func,
        t: &Func,
        (lo, hi, target): (usize, usize, usize),
    ) -> Option<DirectPlan> {
        // A value the user may change at the confirmation (a time, not the place or its city):
        // with none, a change would have to be a question about a place nothing has shown.
        let changeable = t
            .required
            .iter()
            .any(|&i| self.changeable(search, &t.args[i]));
        for _ in 0..64 {
            let asked = rng.random_range(0..=t.required.len());
            let change = changeable && rng.random_bool(0.35);
            // Request, confirmation, yes, call, report, thanks, closing: 7 turns, 2 per asked
            // value, change or question.
            let base = 7 + 2 * asked + 2 * usize::from(change);
            let turns = if (target + base) % 2 == 0 {
                target
            } else if target > lo {
                target - 1
            } else if target < hi {
                target + 1
            } else {
                continue;
            };
            if base <= turns && (turns - base) / 2 <= 4 {
                return Some(DirectPlan {
                    asked,
                    change,
                    questions: (turns - base) / 2,
                });
            }
        }
        None
    }

    /// A booking of a place the user already knows (no search): the user asks to book it,
    /// the assistant asks for what is missing, confirms and books, and answers questions
    /// about the place from the booking's result.
    fn write_direct(
        &self,
        w: &mut Writer<'_>,
        search: &Func,
        t: &Func,
        entity: &str,
        plan: &DirectPlan,
    ) -> Result<(), String> {
        // A known place: a record's name with its own city, address and other fields.
        let mut record = self
            .results(&mut w.rng, &[])
            .into_iter()
            .next()
            .ok_or("no record to book")?;
        if self.lent_values {
            // Borrowed places reach wider than the traces' records: draw the known place's
            // city from them too, or every direct booking stays in the traces' few cities.
            // (Drawn always, the default teacher's conversations change: a separate, unmeasured
            // change, which also breaks `tests/synthetic_sgd.rs`'s said-before-call check.)
            for a in search.args.iter().filter(|a| a.role == Role::Place) {
                if record.contains_key(&a.name) {
                    if let Some(v) = self.draw(&mut w.rng, a, None) {
                        record.insert(a.name.clone(), v);
                    }
                }
            }
        }
        let mut extra: Vec<(String, String)> = Vec::new();
        for &i in &t.required {
            let a = &t.args[i];
            let v = match record.get(&a.name) {
                Some(v) if a.json(v).is_some() => v.clone(),
                _ => self
                    .draw(&mut w.rng, a, None)
                    .ok_or_else(|| format!("no value for {}", a.name))?,
            };
            extra.push((a.name.clone(), v));
        }
        // The place's name is asked for only when every value is.
        extra.shuffle(&mut w.rng);
        let at = extra.iter().position(|(k, _)| k == entity).unwrap_or(0);
        let named = extra.remove(at);
        extra.push(named);
        let booking = Booking {
            record: &record,
            known: &[],
            stated: &extra,
            asked: plan.asked,
            change: plan.change,
            name_share: 0.0,
            // Questions about the place follow only a booking that brought it back.
            may_fail: plan.questions == 0,
        };
        let booked = self.book(w, search, t, &booking)?;
        if let Some(booked) = booked {
            for _ in 0..plan.questions {
                self.detail(w, &booked);
            }
        }
        let thanks = w.pick_with(
            &self.domain.templates.thanks,
            &self.borrowed.thanks,
            builtin::THANKS,
        );
        w.user(thanks);
        Ok(())
    }

    fn search_and_present(
        &self,
        w: &mut Writer<'_>,
        search: &Func,
        current: &[(String, String)],
    ) -> Result<Vec<Record>, String> {
        let mut args = Map::new();
        for (k, v) in current {
            let a = search.arg(k).expect("search arg");
            let j = a
                .json(v)
                .ok_or_else(|| format!("{k}={v} does not fit the schema"))?;
            args.insert(k.clone(), j);
        }
        let results = self.results(&mut w.rng, current);
        w.call(&search.name, args, &results);
        let text = self.present(w, &results[0], results.len(), current, true);
        w.say(text);
        Ok(results)
    }

    fn present(
        &self,
        w: &mut Writer<'_>,
        r: &Record,
        count: usize,
        current: &[(String, String)],
        first: bool,
    ) -> String {
        let mut values: BTreeMap<String, String> = r.clone();
        for (k, v) in current {
            values.insert(k.clone(), v.clone());
        }
        values.insert("count".into(), count.to_string());
        let usable: Vec<String> = self
            .domain
            .templates
            .present
            .iter()
            .filter(|t| first || !t.contains("{count}"))
            .filter(|t| placeholders(t).iter().all(|p| values.contains_key(p)))
            .cloned()
            .collect();
        let name = self
            .domain
            .entity
            .as_ref()
            .and_then(|e| r.get(e))
            .cloned()
            .unwrap_or_else(|| "one option".into());
        let builtin = if first {
            vec![
                // No count: the student sees two records and "+N more", and a made-up count is
                // a contradiction (learned phrasings keep theirs, filled with the true count).
                format!("I found a few options. How about {name}?"),
                format!("{name} is a good choice."),
            ]
        } else {
            vec![
                format!("Another option is {name}."),
                format!("How about {name}?"),
            ]
        };
        let b: Vec<&str> = builtin.iter().map(String::as_str).collect();
        let t = w.pick(&usable, &b);
        w.fill_spoken(&t, &values).unwrap_or(t)
    }

    /// The user asks about a field of the shown record and the assistant answers from it.
    fn detail(&self, w: &mut Writer<'_>, r: &Record) {
        match self.detail_qa(w, r) {
            Some((q, a)) => {
                w.user(q);
                w.say(a);
            }
            None => {
                let q = w.pick_with(
                    &self.domain.templates.another,
                    &self.borrowed.another,
                    builtin::ANOTHER,
                );
                w.user(q);
                w.say("That is the only option I found.".into());
            }
        }
    }

    /// A question about one field of `r` and its answer; `None` when `r` has no such field.
    fn detail_qa(&self, w: &mut Writer<'_>, r: &Record) -> Option<(String, String)> {
        // Sometimes a yes/no question about a flag the record carries ("Do they serve
        // alcohol?"): asked about a result it is answered from the result, not searched for.
        let flags: Vec<(&Arg, bool)> = self
            .searches
            .iter()
            .flat_map(|f| f.args.iter())
            .filter(|a| a.is_flag)
            .filter_map(|a| {
                let v = r.get(&a.name)?;
                Some((a, v.eq_ignore_ascii_case("true")))
            })
            .collect();
        if !flags.is_empty() && w.rng.random_bool(0.35) {
            let (a, yes) = *flags.choose(&mut w.rng).expect("non-empty");
            return Some(flag_qa(&mut w.rng, &a.predicate, yes));
        }
        let tpl = &self.domain.templates;
        let fields: Vec<&String> = tpl.detail_a.keys().filter(|f| r.contains_key(*f)).collect();
        let entity = self.domain.entity.as_deref();
        let fallback: Vec<&String> = r
            .keys()
            .filter(|k| {
                Some(k.as_str()) != entity
                    && !["true", "false"].contains(&r[*k].to_ascii_lowercase().as_str())
            })
            .collect();
        let field = fields
            .choose(&mut w.rng)
            .or_else(|| fallback.choose(&mut w.rng))
            .map(|s| s.to_string());
        let field = field?;
        let h = human(&field);
        let q_builtin = [
            format!("What is the {h}?"),
            format!("Can you give me the {h}?"),
        ];
        let qb: Vec<&str> = q_builtin.iter().map(String::as_str).collect();
        let learned_q = tpl.detail_q.get(&field).cloned().unwrap_or_default();
        let q = w.pick(&learned_q, &qb);
        let a_builtin = [
            format!("The {h} is {{{field}}}."),
            format!("It's {{{field}}}."),
        ];
        let ab: Vec<&str> = a_builtin.iter().map(String::as_str).collect();
        let learned_a: Vec<String> = tpl
            .detail_a
            .get(&field)
            .map(|v| {
                v.iter()
                    .filter(|t| placeholders(t).iter().all(|p| r.contains_key(p)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let t = w.pick(&learned_a, &ab);
        let a = w
            .fill_spoken(&t, r)
            .unwrap_or_else(|| format!("The {h} is {}.", r[&field]));
        Some((q, a))
    }

    /// Values (argument → text as said, with the argument's name in words alongside) as the
    /// built-in phrasings take them: the booked entity's name apart, the rest with their roles.
    fn said<'a>(
        &self,
        func: &Func,
        values: &'a [(String, String)],
        humans: &'a [String],
    ) -> (Option<Said<'a>>, Vec<Said<'a>>) {
        let entity = self.domain.entity.as_deref();
        let mut name = None;
        let mut rest = Vec::new();
        for ((k, v), h) in values.iter().zip(humans) {
            let s = Said {
                role: func.arg(k).map_or(Role::Category, |a| a.role),
                human: h,
                value: v,
            };
            if func.kind == FunctionKind::Transaction && Some(k.as_str()) == entity {
                name = Some(s);
            } else {
                rest.push(s);
            }
        }
        (name, rest)
    }

    fn confirm_text(
        &self,
        w: &mut Writer<'_>,
        tx: &Func,
        said: &BTreeMap<String, String>,
    ) -> String {
        let usable: Vec<String> = self
            .domain
            .templates
            .confirm_a
            .iter()
            // A confirmation states exactly what will be booked: every value, nothing else.
            .filter(|t| placeholders(t).into_iter().eq(said.keys().cloned()))
            .cloned()
            .collect();
        let spoken: Vec<(String, String)> = said
            .iter()
            .map(|(k, v)| (k.clone(), self.spoken.say(v, &mut w.rng)))
            .collect();
        let humans: Vec<String> = spoken.iter().map(|(k, _)| human(k)).collect();
        let listing: Vec<String> = spoken
            .iter()
            .zip(&humans)
            .map(|((_, v), h)| format!("{h}: {v}"))
            .collect();
        let (name, mut rest) = self.said(tx, &spoken, &humans);
        let name = name.map(|n| n.value);
        rest.shuffle(&mut w.rng);
        // Natural confirmations three times out of five, listings of the details otherwise.
        let builtin = [
            format!(
                "Please confirm the details: {}. Is that right?",
                listing.join(", ")
            ),
            format!("Just to confirm: {}. Shall I go ahead?", listing.join(", ")),
            builtin::confirmation(&mut w.rng, &tx.act, name, &rest),
            builtin::confirmation(&mut w.rng, &tx.act, name, &rest),
            builtin::confirmation(&mut w.rng, &tx.act, name, &rest),
        ];
        let b: Vec<&str> = builtin.iter().map(String::as_str).collect();
        let t = w.pick(&usable, &b);
        // Built-ins are already filled; learned templates take the values as said.
        w.fill_spoken(&t, said).unwrap_or(t)
    }

    fn failure_text(&self, w: &mut Writer<'_>, said: &BTreeMap<String, String>) -> String {
        let builtin = [
            "Sorry, the booking did not go through. Can I help with anything else?",
            "I'm sorry, I could not make that reservation.",
        ];
        outcome_text(w, &self.domain.templates.failure, said, &builtin)
    }

    fn success_text(&self, w: &mut Writer<'_>, outcome: &Record) -> String {
        let builtin = [
            "Your booking is confirmed.",
            "All set, the reservation is made.",
        ];
        outcome_text(w, &self.domain.templates.success, outcome, &builtin)
    }
}

/// A transaction's outcome in words: one of the learned templates whose every placeholder has
/// a value (filled as said), else one of the built-in sentences.
fn outcome_text(
    w: &mut Writer<'_>,
    templates: &[String],
    values: &Record,
    builtin: &[&str],
) -> String {
    let usable: Vec<String> = templates
        .iter()
        .filter(|t| placeholders(t).iter().all(|p| values.contains_key(p)))
        .cloned()
        .collect();
    let t = w.pick(&usable, builtin);
    w.fill_spoken(&t, values).unwrap_or(t)
}

impl Teacher for OfflineTeacher {
    fn generate(
        &self,
        jobs: &[Job],
        progress: &(dyn Fn(usize) + Sync),
        cancel: &AtomicBool,
    ) -> Result<Vec<Outcome>, TeacherError> {
        let done = AtomicUsize::new(0);
        let out: Vec<Outcome> = jobs
            .par_iter()
            .map(|j| {
                let r = self.write(j).map_err(|f| Failure {
                    index: j.index,
                    ..f
                });
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n & 255 == 0 {
                    progress(n);
                }
                r
            })
            .collect();
        if cancel.load(Ordering::Relaxed) {
            return Err(TeacherError::Cancelled);
        }
        progress(jobs.len());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Task, TaskSettings};
    use crate::validate::{validate, Rule, ValidateConfig};
    use serde_json::json;

    fn tools() -> ToolSet {
        let s = json!({"type": "string", "description": "x"});
        ToolSet::from_openai(
            &json!([
                {"type": "function", "function": {"name": "Find", "x-kind": "search",
                  "parameters": {"type": "object", "properties": {"city": s, "cuisine": s,
                      "live_music": {"type": "boolean", "description": "Whether the venue has live music"}},
                      "required": ["city", "cuisine"], "additionalProperties": false}}},
                {"type": "function", "function": {"name": "Book", "x-kind": "transaction",
                  "parameters": {"type": "object", "properties": {"name": s, "city": s, "time": s,
                      "guests": {"type": "integer", "minimum": 1, "maximum": 8}},
                      "required": ["name", "city", "time"], "additionalProperties": false}}}
            ]),
            crate::tools::DEFAULT_RESPOND,
            &[],
            "t",
        )
        .unwrap()
    }

    /// The offline teacher of `traces` on [`tools`] with a default task (returned for its
    /// mutation topics).
    fn teacher(traces: &[Conversation]) -> (OfflineTeacher, Task) {
        let task = Task {
            settings: TaskSettings::default(),
            description: String::new(),
        };
        let tools = tools();
        let ctx = Context {
            task: &task,
            tools: &tools,
            traces,
        };
        (OfflineTeacher::new(&ctx).unwrap(), task)
    }

    fn call(name: &str, args: Value) -> Message {
        Message::call(ToolCall::new(name, args.as_object().unwrap().clone()))
    }

    fn say(t: &str) -> Message {
        call("respond_to_user", json!({ "message": t }))
    }

    /// A trace's ending: the assistant confirms, the user accepts, the booking, thanks.
    fn booked(city: &str, name: &str, time: &str) -> Vec<Message> {
        vec![
            say(&format!("Booking {name} in {city} at {time}, correct?")),
            Message::User {
                content: "Yes please.".into(),
            },
            call(
                "Book",
                json!({"name": name, "city": city, "time": time, "guests": 2}),
            ),
            Message::Tool {
                tool_call_id: String::new(),
                content: json!([{"name": name, "time": time}]).to_string(),
            },
            say("Your table is booked."),
            Message::User {
                content: "Thanks!".into(),
            },
            say("Enjoy your meal."),
        ]
    }

    fn trace(i: usize, city: &str, cuisine: &str, name: &str, time: &str) -> Conversation {
        let user = |t: String| Message::User { content: t };
        let mut c = Conversation {
            id: format!("t{i}"),
            messages: vec![
                user(format!("I want {cuisine} food.")),
                say("Which city should I look in?"),
                user(format!("Look in {city}.")),
                call("Find", json!({"city": city, "cuisine": cuisine})),
                Message::Tool { tool_call_id: String::new(), content: json!([{"name": name, "city": city, "cuisine": cuisine, "phone": "555-0100"}]).to_string() },
                say(&format!("{name} is a nice {cuisine} place in {city}.")),
                user(format!("Book {name} at {time}.")),
            ]
            .into_iter()
            .chain(booked(city, name, time))
            .collect(),
            meta: Default::default(),
        };
        c.assign_call_ids();
        c
    }

    #[test]
    fn writes_valid_varied_conversations_from_the_schema() {
        let traces: Vec<Conversation> = [
            ("Paris", "Thai", "Baan Thai", "18:30"),
            ("Lyon", "Italian", "Chez Luigi", "19:00"),
            ("Nice", "Greek", "Olympos", "12:15"),
            ("Lille", "Thai", "Siam House", "20:45"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (a, b, c, d))| trace(i, a, b, c, d))
        .collect();
        let (t, task) = teacher(&traces);
        assert_eq!(t.domain().entity.as_deref(), Some("name"));
        assert!(t.domain().templates.ask.contains_key("city"));
        let jobs = super::super::plan_jobs(120, &task.settings.mutation_topics, 9);
        let out = t.generate(&jobs, &|_| {}, &AtomicBool::new(false)).unwrap();
        let convs: Vec<Conversation> = out.into_iter().map(|o| o.unwrap()).collect();
        // Deterministic per seed.
        let again: Vec<Conversation> = t
            .generate(&jobs, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap())
            .collect();
        assert_eq!(convs, again);
        let mut searches = 0;
        let mut bookings = 0;
        for c in &convs {
            let mut said = String::new();
            let mut finds = 0;
            for m in &c.messages {
                match m {
                    Message::User { content } | Message::Tool { content, .. } => {
                        said.push_str(content)
                    }
                    Message::Assistant { tool_calls, .. } => {
                        // Defaults the assistant proposed and the user accepted count as said.
                        for call in tool_calls.iter().filter(|c| c.name == "respond_to_user") {
                            said.push_str(&call.arguments["message"].to_string());
                        }
                        for call in tool_calls.iter().filter(|c| c.name != "respond_to_user") {
                            finds += usize::from(call.name == "Find");
                            bookings += usize::from(call.name == "Book");
                            for (k, v) in &call.arguments {
                                if let Value::String(v) = v {
                                    // Said verbatim or in a spoken form ("7 pm").
                                    let lower = said.to_lowercase();
                                    assert!(
                                        t.spoken
                                            .forms(v)
                                            .iter()
                                            .any(|f| lower.contains(&f.to_lowercase())),
                                        "{}: {k}={v} never said",
                                        c.id
                                    );
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            searches += usize::from(finds > 1);
        }
        assert!(searches > 10, "repeated searches: {searches}");
        assert!(bookings > 50, "bookings: {bookings}");
        let v = validate(
            convs,
            &tools(),
            &task.settings.mutation_topics,
            &ValidateConfig::default(),
        );
        let counts = v.counts();
        assert_eq!(
            counts[&Rule::Schema]
                + counts[&Rule::Roles]
                + counts[&Rule::Results]
                + counts[&Rule::TurnCount],
            0,
            "{counts:?}"
        );
        assert!(v.accepted.len() >= 114, "{counts:?}");
    }

    /// A trace that books a place the user names, with no search.
    fn direct_trace(i: usize, city: &str, name: &str, time: &str) -> Conversation {
        let user = |t: String| Message::User { content: t };
        let mut c = Conversation {
            id: format!("d{i}"),
            messages: vec![
                user(format!("Please book a table at {name} in {city}.")),
                say("What time?"),
                user(format!("At {time}.")),
            ]
            .into_iter()
            .chain(booked(city, name, time))
            .collect(),
            meta: Default::default(),
        };
        c.assign_call_ids();
        c
    }

    #[test]
    fn books_without_a_search_as_often_as_the_traces_do() {
        let traces = vec![
            trace(0, "Paris", "Thai", "Baan Thai", "18:30"),
            trace(1, "Lyon", "Italian", "Chez Luigi", "19:00"),
            direct_trace(2, "Nice", "Olympos", "12:15"),
            direct_trace(3, "Lille", "Siam House", "20:45"),
        ];
        let (t, task) = teacher(&traces);
        // Two of four, shrunk towards the defaults by two pseudo-traces.
        let flows = t.domain().flows;
        assert!(
            (flows.transaction_first - 2.5 / 6.0).abs() < 1e-9,
            "{flows:?}"
        );
        assert!(
            (flows.search_then_book - 3.6 / 4.0).abs() < 1e-9,
            "{flows:?}"
        );
        let jobs = super::super::plan_jobs(400, &task.settings.mutation_topics, 3);
        let convs: Vec<Conversation> = t
            .generate(&jobs, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let mut direct = 0;
        for c in &convs {
            let calls: Vec<(usize, &ToolCall)> = c
                .messages
                .iter()
                .enumerate()
                .flat_map(|(i, m)| match m {
                    Message::Assistant { tool_calls, .. } => {
                        tool_calls.iter().map(|t| (i, t)).collect::<Vec<_>>()
                    }
                    _ => Vec::new(),
                })
                .filter(|(_, t)| t.name != "respond_to_user")
                .collect();
            let Some(&(at, first)) = calls.first() else {
                continue;
            };
            if first.name != "Book" {
                continue;
            }
            direct += 1;
            // Booked once the user accepted a confirmation that names the place.
            let name = first.arguments["name"].as_str().unwrap();
            assert!(
                matches!(c.messages[at - 1], Message::User { .. }),
                "{}",
                c.id
            );
            let Message::Assistant { tool_calls, .. } = &c.messages[at - 2] else {
                panic!("{}: no confirmation before the booking", c.id);
            };
            let confirmation = tool_calls[0].arguments["message"].as_str().unwrap();
            assert!(
                confirmation.contains(name),
                "{}: {confirmation}\n{c:#?}",
                c.id
            );
        }
        // Long buckets take no direct booking (the traces' are short): fewer than 42%.
        let share = direct as f64 / convs.len() as f64;
        assert!(
            (0.2..0.42).contains(&share),
            "direct bookings: {direct} of {}",
            convs.len()
        );
    }

    #[test]
    fn built_in_phrasings_vary_what_one_trace_teaches() {
        // One trace teaches one opener ("I want {cuisine} food."): the built-in requests, said
        // from the arguments' roles, add the rest.
        let traces = vec![trace(0, "Paris", "Thai", "Baan Thai", "18:30")];
        let (t, task) = teacher(&traces);
        let jobs = super::super::plan_jobs(300, &task.settings.mutation_topics, 5);
        let convs: Vec<Conversation> = t
            .generate(&jobs, &|_| {}, &AtomicBool::new(false))
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let openers: BTreeSet<&str> = convs
            .iter()
            .filter_map(|c| match c.messages.first() {
                Some(Message::User { content }) => Some(content.as_str()),
                _ => None,
            })
            .collect();
        assert!(openers.len() >= 12, "{openers:?}");
        // A built-in request states both values in one sentence around the search's noun.
        assert!(
            openers
                .iter()
                .any(|o| o.contains("Thai place") && o.contains("Paris")),
            "{openers:?}"
        );
    }

    #[test]
    fn a_phrasebook_lends_places_names_and_counts_that_fit_the_schema() {
        let traces: Vec<Conversation> = (0..4)
            .map(|i| trace(i, "Paris", "Thai", &format!("Place {i}"), "19:00"))
            .collect();
        let (mut t, _) = teacher(&traces);
        let cuisines = t.pools["cuisine"].clone();
        let book = Phrasebook {
            values: [
                (Role::Place, vec!["Lima".to_string(), "Oslo".to_string()]),
                (Role::Name, vec!["Blue Hall".to_string()]),
                // `guests` is an integer from 1 to 8.
                (Role::Count, vec!["3".to_string(), "12".to_string()]),
            ]
            .into(),
            ..Phrasebook::default()
        };
        assert_eq!(t.borrow_values(&book), 4, "Lima, Oslo, Blue Hall and 3");
        assert!(["Lima", "Oslo", "Paris"]
            .iter()
            .all(|c| t.pools["city"].contains(&c.to_string())));
        assert!(t.pools["name"].contains(&"Blue Hall".to_string()));
        assert!(t.pools["guests"].contains(&"3".to_string()));
        assert!(
            !t.pools["guests"].contains(&"12".to_string()),
            "over the maximum"
        );
        assert_eq!(
            t.pools["cuisine"], cuisines,
            "a category is the domain's own"
        );
    }

    #[test]
    fn dates_round_trip_and_widen() {
        let d = parse_date("2019-03-01").unwrap();
        assert_eq!(format_date(d), "2019-03-01");
        assert_eq!(format_date(d + 31), "2019-04-01");
        assert_eq!(
            format_date(parse_date("2020-02-28").unwrap() + 1),
            "2020-02-29"
        );
        // Times fill the hours the traces span, in quarters: an evening stays an evening, an
        // early flight's morning is kept.
        let w = widen(&["18:30".to_string(), "21:10".to_string()], "2019-03-01");
        assert_eq!(w.len(), 4 * 4 + 1, "{w:?}");
        assert!(w.iter().all(|t| t.len() == 5 && t.as_bytes()[2] == b':'));
        assert_eq!((w[0].as_str(), w[w.len() - 1].as_str()), ("18:00", "21:45"));
        let w = widen(&["06:05".to_string(), "23:40".to_string()], "2019-03-01");
        assert!(w.contains(&"06:15".to_string()) && w.contains(&"23:45".to_string()));
        assert!(
            widen(&["2019-03-05".to_string()], "2019-03-01").contains(&"2019-04-10".to_string())
        );
        assert_eq!(widen(&["Paris".to_string()], "2019-03-01"), ["Paris"]);
    }

    #[test]
    fn delexicalizes_whole_words_only() {
        let v = vec![
            ("city".to_string(), "San Jose".to_string()),
            ("n".to_string(), "2".to_string()),
        ];
        let spoken = Spoken::new("2019-03-01");
        assert_eq!(
            delexicalize("A table for 2 in San Jose, not 22.", &v, &spoken),
            "A table for {n} in {city}, not 22."
        );
        // Spoken forms of the call's values are placeholders too, case ignored.
        let v = vec![
            ("city".to_string(), "San Jose".to_string()),
            ("time".to_string(), "19:30".to_string()),
            ("date".to_string(), "2019-03-02".to_string()),
            ("party_size".to_string(), "4".to_string()),
        ];
        assert_eq!(
            delexicalize(
                "Tomorrow at 7:30 pm in san jose for four, or 7:30 pm on the 2nd?",
                &v,
                &spoken
            ),
            "{date} at {time} in {city} for {party_size}, or {time} on {date}?"
        );
        assert_eq!(placeholders("{a} and {b} and {a}"), ["a", "b"]);
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "x".to_string());
        assert_eq!(fill("{a}!", &m).as_deref(), Some("x!"));
        assert_eq!(fill("{b}", &m), None);
        assert_eq!(
            flag_predicate("live_music", "Whether the venue has live music"),
            "has live music"
        );
    }
}
