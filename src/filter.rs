//! Trace filtering and relabeling before generation: score each trace's relevance to the target
//! tool schema, drop those under a threshold, and map drifted function and argument names to the
//! schema's by argument-name and value overlap.
//!
//! Evidence comes from the pool itself: values the schema's own names carry (calls with target
//! names, result fields with target names, enums) form a value index per target argument. A
//! source call signature (function name + argument names) maps to the target function whose
//! arguments its arguments match best, by name similarity or by value overlap with that index.
//! A trace is relevant when its calls map well and its result records carry the target's fields;
//! traces of another service (hotels renamed to restaurant functions) fail both.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::conversation::{Conversation, Message};
use crate::tools::{Function, FunctionKind, ToolSet};

/// Filter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    /// Traces scoring below this relevance (0..1) are dropped.
    pub threshold: f64,
    /// Least score for mapping one source argument to a target argument.
    pub min_arg_score: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            threshold: 0.5,
            min_arg_score: 0.5,
        }
    }
}

/// How one source call signature maps onto the schema.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remap {
    /// Source function name.
    pub from: String,
    /// Target function name.
    pub to: String,
    /// Source argument → target argument (only mapped ones).
    pub args: BTreeMap<String, String>,
    /// Source arguments with no target counterpart (dropped from relabeled calls).
    pub unmapped: Vec<String>,
    /// How well it fits (0..1).
    pub score: f64,
    /// Number of calls with this signature.
    pub calls: usize,
}

/// The filter's decision on one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// Trace id.
    pub id: String,
    /// Relevance (0..1).
    pub score: f64,
    /// Whether the trace is kept.
    pub kept: bool,
    /// Why: component scores and problems found.
    pub reasons: Vec<String>,
}

/// What the filter produced.
#[derive(Debug, Clone, Default)]
pub struct FilterOutcome {
    /// Kept traces, relabeled to the schema's names.
    pub kept: Vec<Conversation>,
    /// One verdict per input trace, in input order.
    pub verdicts: Vec<Verdict>,
    /// Every signature that was renamed, in a stable order.
    pub remaps: Vec<Remap>,
}

type Signature = (String, Vec<String>);

fn signature(name: &str, args: &serde_json::Map<String, Value>) -> Signature {
    (name.to_string(), args.keys().cloned().collect())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_flag(v: &str) -> bool {
    v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")
}

/// Lowercase word stems (first 5 letters) of an identifier or sentence: `restaurantName`,
/// `restaurant_name` and "name of the restaurant" share `resta` and `name`.
fn stems(s: &str) -> BTreeSet<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if !c.is_alphanumeric() {
            words.push(std::mem::take(&mut cur));
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            words.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase();
        cur.extend(c.to_lowercase());
    }
    words.push(cur);
    const STOP: &[&str] = &[
        "the", "of", "a", "an", "for", "in", "to", "if", "is", "and", "or", "be", "which", "at",
    ];
    words
        .into_iter()
        .filter(|w| w.len() > 1 && !STOP.contains(&w.as_str()))
        .map(|w| w.chars().take(5).collect())
        .collect()
}

/// Name similarity of a source argument to a target argument (name and description).
fn name_similarity(src: &str, tgt: &str, tgt_description: &str) -> f64 {
    let norm = |s: &str| s.to_lowercase().replace(['_', '-', ' '], "");
    if norm(src) == norm(tgt) {
        return 1.0;
    }
    let s = stems(src);
    if s.is_empty() {
        return 0.0;
    }
    let t = stems(tgt);
    let d = stems(tgt_description);
    let jaccard = s.intersection(&t).count() as f64 / s.union(&t).count() as f64;
    let described = s.intersection(&d).count() as f64 / s.len() as f64;
    jaccard.max(0.6 * described)
}

/// Values known to belong to each target argument.
#[derive(Default)]
struct Index {
    values: BTreeMap<String, BTreeSet<String>>,
}

impl Index {
    fn overlap(&self, tgt: &str, vals: &BTreeSet<String>) -> f64 {
        let Some(known) = self.values.get(tgt) else {
            return 0.0;
        };
        let plain: Vec<&String> = vals.iter().filter(|v| !is_flag(v)).collect();
        if plain.is_empty() {
            return 0.0;
        }
        plain.iter().filter(|v| known.contains(**v)).count() as f64 / plain.len() as f64
    }
}

/// Maps one signature onto a target function: (score, arg map).
fn map_signature(
    sig: &Signature,
    vals: &BTreeMap<String, BTreeSet<String>>,
    f: &Function,
    index: &Index,
    cfg: &FilterConfig,
) -> (f64, BTreeMap<String, String>) {
    let targets = f.parameter_names();
    let mut pairs: Vec<(f64, &str, &str)> = Vec::new();
    for src in &sig.1 {
        let sv = vals.get(src).cloned().unwrap_or_default();
        let src_flag = !sv.is_empty() && sv.iter().all(|v| is_flag(v));
        for &tgt in &targets {
            let p = f.parameter(tgt).cloned().unwrap_or(Value::Null);
            let desc = p.get("description").and_then(Value::as_str).unwrap_or("");
            let mut score = name_similarity(src, tgt, desc);
            let tgt_flag = p.get("type").and_then(Value::as_str) == Some("boolean")
                || p.get("enum")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty() && e.iter().all(|x| is_flag(&text(x))));
            if src_flag != tgt_flag {
                score *= 0.5;
            } else if !src_flag {
                score = score.max(index.overlap(tgt, &sv));
            }
            if score >= cfg.min_arg_score {
                pairs.push((score, src, tgt));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(b.2)));
    let mut map = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut total = 0.0;
    for (s, src, tgt) in pairs {
        if map.contains_key(src) || used.contains(tgt) {
            continue;
        }
        map.insert(src.to_string(), tgt.to_string());
        used.insert(tgt);
        total += s;
    }
    let fit = if sig.1.is_empty() {
        0.0
    } else {
        total / sig.1.len() as f64
    };
    let required = f.required();
    let coverage = if required.is_empty() {
        1.0
    } else {
        required.iter().filter(|r| used.contains(*r)).count() as f64 / required.len() as f64
    };
    (0.7 * fit + 0.3 * coverage, map)
}

/// Whether a signature looks like the reply function: one argument holding sentences.
fn looks_like_reply(sig: &Signature, vals: &BTreeMap<String, BTreeSet<String>>) -> bool {
    let [arg] = sig.1.as_slice() else {
        return false;
    };
    let v = vals.get(arg).cloned().unwrap_or_default();
    if v.is_empty() {
        return false;
    }
    let words: usize = v.iter().map(|s| s.split_whitespace().count()).sum();
    words as f64 / v.len() as f64 >= 4.0
}

/// Scores, filters and relabels `traces` against `tools`.
pub fn filter(traces: &[Conversation], tools: &ToolSet, cfg: &FilterConfig) -> FilterOutcome {
    let respond = tools.respond();
    let respond_arg = respond.and_then(|f| f.parameter_names().first().map(|s| s.to_string()));
    let target_params: BTreeSet<String> = tools
        .functions
        .iter()
        .filter(|f| f.kind != FunctionKind::Respond)
        .flat_map(|f| f.parameter_names())
        .map(str::to_string)
        .collect();

    // Values per signature argument, across the pool.
    let mut sig_vals: BTreeMap<Signature, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut sig_calls: BTreeMap<Signature, usize> = BTreeMap::new();
    for c in traces {
        for call in c.calls() {
            let sig = signature(&call.name, &call.arguments);
            *sig_calls.entry(sig.clone()).or_default() += 1;
            let e = sig_vals.entry(sig).or_default();
            for (k, v) in &call.arguments {
                e.entry(k.clone()).or_default().insert(text(v));
            }
        }
    }

    // The index: what the schema's own names carry.
    let mut index = Index::default();
    for f in &tools.functions {
        for p in f.parameter_names() {
            if let Some(e) = f.enum_values(p) {
                index
                    .values
                    .entry(p.to_string())
                    .or_default()
                    .extend(e.iter().map(|s| s.to_string()));
            }
        }
    }
    for c in traces {
        for m in &c.messages {
            for call in m.tool_calls() {
                if let Some(f) = tools.get(&call.name) {
                    for (k, v) in &call.arguments {
                        if f.parameter(k).is_some() {
                            index.values.entry(k.clone()).or_default().insert(text(v));
                        }
                    }
                }
            }
            if let Some(records) = result_records(m) {
                for r in records {
                    for (k, v) in r {
                        if target_params.contains(&k) && !is_flag(&v) {
                            index.values.entry(k).or_default().insert(v);
                        }
                    }
                }
            }
        }
    }

    // Map every signature; a second round lets confidently mapped values vouch for others.
    let mut mapping: BTreeMap<Signature, (String, f64, BTreeMap<String, String>)> = BTreeMap::new();
    for round in 0..2 {
        mapping.clear();
        for (sig, vals) in &sig_vals {
            if let (Some(r), Some(ra)) = (respond, &respond_arg) {
                if sig.0 == r.name || looks_like_reply(sig, vals) {
                    let args = sig
                        .1
                        .iter()
                        .map(|a| (a.clone(), ra.clone()))
                        .take(1)
                        .collect();
                    mapping.insert(sig.clone(), (r.name.clone(), 1.0, args));
                    continue;
                }
            }
            let best = tools
                .functions
                .iter()
                .filter(|f| f.kind != FunctionKind::Respond)
                .map(|f| {
                    let (s, m) = map_signature(sig, vals, f, &index, cfg);
                    // Equal fits keep the name the trace used.
                    let bonus = if f.name == sig.0 { 0.05 } else { 0.0 };
                    (s + bonus, f, m)
                })
                .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.name.cmp(&a.1.name)));
            if let Some((s, f, m)) = best {
                mapping.insert(sig.clone(), (f.name.clone(), s.min(1.0), m));
            }
        }
        if round == 0 {
            for (sig, (_, s, m)) in &mapping {
                if *s >= 0.8 {
                    for (src, tgt) in m {
                        if let Some(v) = sig_vals[sig].get(src) {
                            index
                                .values
                                .entry(tgt.clone())
                                .or_default()
                                .extend(v.iter().filter(|x| !is_flag(x)).cloned());
                        }
                    }
                }
            }
        }
    }

    // Result fields the target's own traces show, besides its parameter names.
    let mut known_fields = target_params.clone();
    for c in traces {
        let exact = c.calls().all(|call| {
            tools
                .get(&call.name)
                .is_some_and(|f| call.arguments.keys().all(|k| f.parameter(k).is_some()))
        });
        if exact && c.calls().next().is_some() {
            for m in &c.messages {
                if let Some(records) = result_records(m) {
                    known_fields.extend(records.into_iter().flat_map(|r| r.into_keys()));
                }
            }
        }
    }

    let mut out = FilterOutcome::default();
    for c in traces {
        let (score, reasons) = relevance(c, tools, &mapping, &known_fields);
        let kept = score >= cfg.threshold;
        out.verdicts.push(Verdict {
            id: c.id.clone(),
            score,
            kept,
            reasons,
        });
        if kept {
            out.kept.push(relabel(c, &mapping));
        }
    }
    for (sig, (to, score, args)) in &mapping {
        let renamed = *to != sig.0 || args.iter().any(|(a, b)| a != b) || args.len() != sig.1.len();
        if renamed {
            out.remaps.push(Remap {
                from: sig.0.clone(),
                to: to.clone(),
                unmapped: sig
                    .1
                    .iter()
                    .filter(|a| !args.contains_key(*a))
                    .cloned()
                    .collect(),
                args: args.clone(),
                score: *score,
                calls: sig_calls[sig],
            });
        }
    }
    out
}

/// Records of a tool result (or a user message holding a JSON list), field values as text.
fn result_records(m: &Message) -> Option<Vec<BTreeMap<String, String>>> {
    let content = match m {
        Message::Tool { content, .. } => content,
        Message::User { content } if content.trim_start().starts_with('[') => content,
        _ => return None,
    };
    let v: Value = serde_json::from_str(content.trim()).ok()?;
    let list = v.as_array()?;
    Some(
        list.iter()
            .filter_map(Value::as_object)
            .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .collect(),
    )
}

fn relevance(
    c: &Conversation,
    tools: &ToolSet,
    mapping: &BTreeMap<Signature, (String, f64, BTreeMap<String, String>)>,
    known_fields: &BTreeSet<String>,
) -> (f64, Vec<String>) {
    let mut reasons = Vec::new();
    let mut call_scores = Vec::new();
    let mut last_map: Option<&BTreeMap<String, String>> = None;
    let mut field_hits = 0usize;
    let mut field_total = 0usize;
    for m in &c.messages {
        for call in m.tool_calls() {
            let sig = signature(&call.name, &call.arguments);
            match mapping.get(&sig) {
                Some((to, s, map))
                    if tools
                        .get(to)
                        .is_some_and(|f| f.kind != FunctionKind::Respond) =>
                {
                    call_scores.push(*s);
                    if *s < 0.5 {
                        reasons.push(format!(
                            "call {}({}) fits {to} only {s:.2}",
                            call.name,
                            sig.1.join(", ")
                        ));
                    }
                    last_map = Some(map);
                }
                Some(_) => {}
                None => call_scores.push(0.0),
            }
        }
        if let Some(records) = result_records(m) {
            for r in records {
                for k in r.keys() {
                    let k = last_map.and_then(|lm| lm.get(k)).unwrap_or(k);
                    field_total += 1;
                    field_hits += usize::from(known_fields.contains(k));
                }
            }
        }
    }
    let mut parts = Vec::new();
    if !call_scores.is_empty() {
        let s = call_scores.iter().sum::<f64>() / call_scores.len() as f64;
        reasons.push(format!("calls fit {s:.2}"));
        parts.push(s);
    }
    if field_total > 0 {
        let s = field_hits as f64 / field_total as f64;
        reasons.push(format!("result fields fit {s:.2}"));
        parts.push(s);
    }
    if parts.is_empty() {
        reasons.push("no service calls or results: phrasing only".into());
        return (0.5, reasons);
    }
    (parts.iter().sum::<f64>() / parts.len() as f64, reasons)
}

/// Renames calls (and the result fields named like their arguments) to the schema's names;
/// arguments with no counterpart are dropped.
fn relabel(
    c: &Conversation,
    mapping: &BTreeMap<Signature, (String, f64, BTreeMap<String, String>)>,
) -> Conversation {
    let mut out = c.clone();
    let mut last_map: Option<BTreeMap<String, String>> = None;
    for m in &mut out.messages {
        match m {
            Message::Assistant { tool_calls, .. } => {
                for call in tool_calls.iter_mut() {
                    let sig = signature(&call.name, &call.arguments);
                    if let Some((to, _, map)) = mapping.get(&sig) {
                        call.name = to.clone();
                        call.arguments = std::mem::take(&mut call.arguments)
                            .into_iter()
                            .filter_map(|(k, v)| map.get(&k).map(|t| (t.clone(), v)))
                            .collect();
                        last_map = Some(map.clone());
                    }
                }
            }
            Message::Tool { content, .. } => {
                if let (Some(map), Ok(Value::Array(list))) =
                    (&last_map, serde_json::from_str::<Value>(content))
                {
                    let renamed: Vec<Value> = list
                        .into_iter()
                        .map(|r| match r {
                            Value::Object(o) => {
                                let mut n = serde_json::Map::new();
                                for (k, v) in o {
                                    let key = match map.get(&k) {
                                        Some(t) if !n.contains_key(t) => t.clone(),
                                        _ => k,
                                    };
                                    n.insert(key, v);
                                }
                                Value::Object(n)
                            }
                            other => other,
                        })
                        .collect();
                    *content = Value::Array(renamed).to_string();
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::ToolCall;
    use serde_json::{json, Map};

    fn tools() -> ToolSet {
        let s = json!({"type": "string"});
        ToolSet::from_openai(
            &json!([
                {"type": "function", "function": {"name": "Find", "x-kind": "search",
                  "parameters": {"type": "object", "properties": {"city": s, "cuisine": s}, "required": ["city", "cuisine"]}}},
                {"type": "function", "function": {"name": "Book", "x-kind": "transaction",
                  "parameters": {"type": "object", "properties": {"name": s, "city": s}, "required": ["name", "city"]}}}
            ]),
            crate::tools::DEFAULT_RESPOND,
            &[],
            "t",
        )
        .unwrap()
    }

    fn call(name: &str, args: Value) -> Message {
        let a: Map<String, Value> = args.as_object().unwrap().clone();
        Message::call(ToolCall::new(name, a))
    }

    fn trace(id: &str, messages: Vec<Message>) -> Conversation {
        let mut c = Conversation {
            id: id.into(),
            messages,
            meta: Map::new(),
        };
        c.assign_call_ids();
        c
    }

    fn results(v: Value) -> Message {
        Message::Tool {
            tool_call_id: String::new(),
            content: v.to_string(),
        }
    }

    #[test]
    fn keeps_relevant_relabels_drift_and_drops_foreign() {
        let exact = trace(
            "exact",
            vec![
                Message::User {
                    content: "Thai in Paris".into(),
                },
                call("Find", json!({"city": "Paris", "cuisine": "Thai"})),
                results(
                    json!([{"name": "Baan", "city": "Paris", "cuisine": "Thai"}, {"name": "Siam", "city": "Lyon", "cuisine": "Thai"}]),
                ),
                call(
                    "respond_to_user",
                    json!({"message": "Baan is a Thai place in Paris."}),
                ),
            ],
        );
        let drifted = trace(
            "drifted",
            vec![
                Message::User {
                    content: "Thai food in Lyon".into(),
                },
                call("Lookup", json!({"location": "Lyon", "food_kind": "Thai"})),
                results(json!([{"name": "Siam", "location": "Lyon", "cuisine": "Thai"}])),
                call(
                    "say",
                    json!({"text": "Siam is a Thai place in Lyon, shall I book it?"}),
                ),
                call("Reserve", json!({"venue": "Siam", "location": "Lyon"})),
                results(json!([{"name": "Siam", "location": "Lyon"}])),
            ],
        );
        let foreign = trace(
            "foreign",
            vec![
                Message::User {
                    content: "A room in Rome".into(),
                },
                call("Find", json!({"destination": "Rome", "rooms": "2"})),
                results(json!([{"hotel_name": "Roma Inn", "stars": "4", "destination": "Rome"}])),
            ],
        );
        let out = filter(
            &[exact, drifted, foreign],
            &tools(),
            &FilterConfig::default(),
        );
        let kept: Vec<&str> = out.kept.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(kept, ["exact", "drifted"], "{:?}", out.verdicts);
        assert!(
            !out.verdicts[2].kept && out.verdicts[2].score < 0.5,
            "{:?}",
            out.verdicts[2]
        );
        let d = &out.kept[1];
        let names: Vec<&str> = d.calls().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Find", "respond_to_user", "Book"]);
        let find = d.calls().next().unwrap();
        assert_eq!(find.arguments.get("city"), Some(&json!("Lyon")));
        assert_eq!(find.arguments.get("cuisine"), Some(&json!("Thai")));
        let book = d.calls().nth(2).unwrap();
        assert_eq!(book.arguments.get("city"), Some(&json!("Lyon")));
        assert_eq!(book.arguments.get("name"), Some(&json!("Siam")));
        // Result fields named like a remapped argument follow it.
        let Message::Tool { content, .. } = &d.messages[2] else {
            panic!()
        };
        assert!(content.contains("\"city\":\"Lyon\""), "{content}");
        let lookup = out.remaps.iter().find(|r| r.from == "Lookup").unwrap();
        assert_eq!(lookup.to, "Find");
        assert_eq!(
            lookup.args.get("food_kind").map(String::as_str),
            Some("cuisine")
        );
    }
}
