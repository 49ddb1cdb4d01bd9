//! Label noise: corrupts an exact share of the calls of a working set (see
//! [`super::Operator::NoisyCalls`]).
//!
//! Service-call corruptions: `swap_tool` (another service function; arguments kept where names
//! match, missing required ones filled from earlier results of the trace), `swap_params` (values
//! permuted among the arguments, or one value replaced by another value seen for that argument or
//! allowed by its enum), `replace_with_respond` (the reply that followed the call, sent instead of
//! the call; the call's results disappear). Reply corruptions: `replace_with_service_call` (one of
//! the trace's service calls, or one seen elsewhere, made at this turn) and
//! `replace_with_foreign_message` (a reply from a foreign-pool trace). A corruption that cannot
//! apply to a call (e.g. no second argument to permute) falls back to the next of its group and
//! is counted as a fallback, so the rate stays exact. Each corrupted trace lists its changes in
//! `meta.corruptions` as `{"turn": <assistant turn index>, "op", "from": <original function>}`.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::ops::choose_indices;
use super::{apportion, function_kinds, invalid, Changes, RespondMix, ScenarioError, ServiceMix};
use crate::conversation::{Arguments, Conversation, Message, ToolCall};
use crate::tools::{FunctionKind, ToolSet, DEFAULT_RESPOND};

/// Parameters of the noise operator.
pub(super) struct Params<'a> {
    pub rate: f64,
    pub keep_clean: f64,
    pub service: &'a ServiceMix,
    pub respond: &'a RespondMix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    SwapTool,
    SwapParams,
    ReplaceWithRespond,
    ReplaceWithServiceCall,
    ReplaceWithForeignMessage,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SwapTool => "swap_tool",
            Op::SwapParams => "swap_params",
            Op::ReplaceWithRespond => "replace_with_respond",
            Op::ReplaceWithServiceCall => "replace_with_service_call",
            Op::ReplaceWithForeignMessage => "replace_with_foreign_message",
        }
    }
}

/// A corruption to apply at (message, call) of one trace.
type Job = ((usize, usize), Op);

const SERVICE_OPS: [Op; 3] = [Op::SwapTool, Op::SwapParams, Op::ReplaceWithRespond];
const RESPOND_OPS: [Op; 2] = [Op::ReplaceWithServiceCall, Op::ReplaceWithForeignMessage];

/// What the corruptions draw from, gathered before anything changes.
struct Material<'a> {
    tools: &'a ToolSet,
    respond: String,
    services: Vec<&'a str>,
    /// Values seen (or allowed) per (function, argument).
    vocab: BTreeMap<(String, String), BTreeSet<String>>,
    /// Observed service calls over the working set, in order.
    service_calls: Vec<ToolCall>,
    /// Reply messages of the working set.
    replies: Vec<String>,
    /// Reply messages of the foreign pool.
    foreign_replies: Vec<String>,
}

pub(super) fn noisy_calls(
    mut work: Vec<Conversation>,
    p: &Params<'_>,
    tools: &ToolSet,
    foreign: Option<&[Conversation]>,
    rng: &mut ChaCha8Rng,
    ch: &mut Changes<'_>,
) -> Result<Vec<Conversation>, ScenarioError> {
    let respond = tools
        .respond()
        .map(|f| f.name.clone())
        .unwrap_or_else(|| DEFAULT_RESPOND.to_string());
    let m = material(&work, tools, &respond, foreign);

    let n_clean = (p.keep_clean * work.len() as f64).round() as usize;
    let clean = choose_indices(work.len(), n_clean, rng);
    for &i in &clean {
        work[i].meta.insert("clean".into(), Value::Bool(true));
    }
    ch.add("clean_traces", n_clean as u64);

    let total: usize = work.iter().map(|c| c.calls().count()).sum();
    let k = (p.rate * total as f64).round() as usize;
    let mut candidates: Vec<(usize, usize, usize)> = Vec::new();
    for (t, c) in work.iter().enumerate() {
        if clean.contains(&t) {
            continue;
        }
        for (mi, msg) in c.messages.iter().enumerate() {
            for ci in 0..msg.tool_calls().len() {
                candidates.push((t, mi, ci));
            }
        }
    }
    if k > candidates.len() {
        return invalid(format!(
            "noisy_calls: {k} calls to corrupt ({} of {total}) but only {} outside the clean traces",
            p.rate,
            candidates.len()
        ));
    }
    candidates.shuffle(rng);
    candidates.truncate(k);
    ch.add("calls_total", total as u64);
    ch.add("calls_corrupted", k as u64);

    let is_reply =
        |c: &(usize, usize, usize)| work[c.0].messages[c.1].tool_calls()[c.2].name == respond;
    let (replies, services): (Vec<_>, Vec<_>) = candidates.into_iter().partition(is_reply);
    let mut jobs: Vec<((usize, usize, usize), Op)> = Vec::new();
    for (group, ops, weights) in [
        (
            services,
            &SERVICE_OPS[..],
            vec![
                p.service.swap_tool,
                p.service.swap_params,
                p.service.replace_with_respond,
            ],
        ),
        (
            replies,
            &RESPOND_OPS[..],
            vec![
                p.respond.replace_with_service_call,
                p.respond.replace_with_foreign_message,
            ],
        ),
    ] {
        let counts = apportion(group.len(), &weights);
        let mut labels: Vec<Op> = ops
            .iter()
            .zip(counts)
            .flat_map(|(op, n)| std::iter::repeat_n(*op, n))
            .collect();
        labels.shuffle(rng);
        jobs.extend(group.into_iter().zip(labels));
    }
    // Apply per trace, last message first, so removing a result never shifts a pending position.
    jobs.sort_by(|a, b| (a.0 .0, b.0 .1, b.0 .2).cmp(&(b.0 .0, a.0 .1, a.0 .2)));
    let mut by_trace: BTreeMap<usize, Vec<Job>> = BTreeMap::new();
    for ((t, mi, ci), op) in jobs {
        by_trace.entry(t).or_default().push(((mi, ci), op));
    }
    for (t, list) in by_trace {
        let orig = work[t].clone();
        let mut notes = Vec::new();
        for ((mi, ci), op) in list {
            let group: &[Op] = if RESPOND_OPS.contains(&op) {
                &RESPOND_OPS
            } else {
                &SERVICE_OPS
            };
            let start = group.iter().position(|o| *o == op).expect("in group");
            let from = work[t].messages[mi].tool_calls()[ci].name.clone();
            let mut done = None;
            for j in 0..group.len() {
                let o = group[(start + j) % group.len()];
                let weight_zero = match o {
                    Op::SwapTool => p.service.swap_tool,
                    Op::SwapParams => p.service.swap_params,
                    Op::ReplaceWithRespond => p.service.replace_with_respond,
                    Op::ReplaceWithServiceCall => p.respond.replace_with_service_call,
                    Op::ReplaceWithForeignMessage => p.respond.replace_with_foreign_message,
                } <= 0.0;
                if j > 0 && weight_zero {
                    continue;
                }
                if apply_one(o, &mut work[t], &orig, mi, ci, &m, rng) {
                    done = Some(o);
                    break;
                }
            }
            let Some(applied) = done else {
                return invalid(format!(
                    "noisy_calls: no corruption applies to call {mi} ({from}) of {}",
                    work[t].id
                ));
            };
            if applied != op {
                ch.add(&format!("fallback_{}_to_{}", op.name(), applied.name()), 1);
            }
            ch.add(applied.name(), 1);
            // Assistant turns are never added or removed, so the turn index stays valid after a
            // result message is dropped (message indices would shift).
            let turn = orig.messages[..mi]
                .iter()
                .filter(|x| matches!(x, Message::Assistant { .. }))
                .count();
            notes.push(json!({"turn": turn, "op": applied.name(), "from": from}));
        }
        notes.reverse();
        work[t]
            .meta
            .insert("corruptions".into(), Value::Array(notes));
    }
    Ok(work)
}

fn material<'a>(
    work: &[Conversation],
    tools: &'a ToolSet,
    respond: &str,
    foreign: Option<&[Conversation]>,
) -> Material<'a> {
    let services: Vec<&str> = tools
        .functions
        .iter()
        .filter(|f| f.kind != FunctionKind::Respond)
        .map(|f| f.name.as_str())
        .collect();
    let mut vocab: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for f in &tools.functions {
        for p in f.parameter_names() {
            if let Some(values) = f.enum_values(p) {
                vocab
                    .entry((f.name.clone(), p.to_string()))
                    .or_default()
                    .extend(values.into_iter().map(String::from));
            }
        }
    }
    let mut service_calls = Vec::new();
    let mut replies = Vec::new();
    for c in work {
        for call in c.calls() {
            if call.name == respond {
                if let Some(t) = reply_text(call) {
                    replies.push(t);
                }
                continue;
            }
            for (k, v) in &call.arguments {
                if let Value::String(s) = v {
                    vocab
                        .entry((call.name.clone(), k.clone()))
                        .or_default()
                        .insert(s.clone());
                }
            }
            if services.contains(&call.name.as_str()) {
                service_calls.push(call.clone());
            }
        }
    }
    let mut foreign_replies = Vec::new();
    for c in foreign.unwrap_or_default() {
        let kinds = function_kinds(c, tools);
        for call in c.calls() {
            if kinds.get(&call.name) == Some(&FunctionKind::Respond) {
                if let Some(t) = reply_text(call) {
                    foreign_replies.push(t);
                }
            }
        }
    }
    Material {
        tools,
        respond: respond.to_string(),
        services,
        vocab,
        service_calls,
        replies,
        foreign_replies,
    }
}

/// The text of a reply call: its `message` argument, or its only string argument.
fn reply_text(call: &ToolCall) -> Option<String> {
    if let Some(Value::String(s)) = call.arguments.get("message") {
        return Some(s.clone());
    }
    let strings: Vec<&str> = call.arguments.values().filter_map(Value::as_str).collect();
    (strings.len() == 1).then(|| strings[0].to_string())
}

fn reply_call(id: &str, respond: &str, text: String) -> ToolCall {
    let mut args = Arguments::new();
    args.insert("message".into(), Value::String(text));
    ToolCall {
        id: id.to_string(),
        name: respond.to_string(),
        arguments: args,
    }
}

/// Applies one corruption to call `ci` of message `mi`; false when it cannot apply there.
fn apply_one(
    op: Op,
    c: &mut Conversation,
    orig: &Conversation,
    mi: usize,
    ci: usize,
    m: &Material<'_>,
    rng: &mut ChaCha8Rng,
) -> bool {
    let Message::Assistant { tool_calls, .. } = &mut c.messages[mi] else {
        return false;
    };
    let call = &mut tool_calls[ci];
    match op {
        Op::SwapTool => {
            let others: Vec<&str> = m
                .services
                .iter()
                .copied()
                .filter(|n| *n != call.name)
                .collect();
            let Some(new) = others.choose(rng) else {
                return false;
            };
            let f = m.tools.get(new).expect("a target function");
            let mut args = Arguments::new();
            for p in f.parameter_names() {
                if let Some(v) = call.arguments.get(p) {
                    args.insert(p.to_string(), v.clone());
                } else if f.required().contains(&p) {
                    if let Some(v) = earlier_value(orig, mi, p) {
                        args.insert(p.to_string(), v);
                    }
                }
            }
            call.name = new.to_string();
            call.arguments = args;
            true
        }
        Op::SwapParams => {
            let keys: Vec<String> = call
                .arguments
                .iter()
                .filter(|(_, v)| v.is_string())
                .map(|(k, _)| k.clone())
                .collect();
            let distinct: BTreeSet<&str> = keys
                .iter()
                .filter_map(|k| call.arguments[k].as_str())
                .collect();
            let permutable = distinct.len() >= 2;
            let replaceable: Vec<(&String, Vec<&String>)> = keys
                .iter()
                .filter_map(|k| {
                    let cur = call.arguments[k].as_str().expect("string");
                    let alts: Vec<&String> = m
                        .vocab
                        .get(&(call.name.clone(), k.clone()))?
                        .iter()
                        .filter(|v| *v != cur)
                        .collect();
                    (!alts.is_empty()).then_some((k, alts))
                })
                .collect();
            if permutable && (replaceable.is_empty() || rng.random_bool(0.5)) {
                let values: Vec<Value> = keys.iter().map(|k| call.arguments[k].clone()).collect();
                for (i, k) in keys.iter().enumerate() {
                    call.arguments
                        .insert(k.clone(), values[(i + 1) % values.len()].clone());
                }
                true
            } else if let Some((k, alts)) = replaceable.choose(rng) {
                let v = (*alts.choose(rng).expect("non-empty")).clone();
                let k = (*k).clone();
                call.arguments.insert(k, Value::String(v));
                true
            } else {
                false
            }
        }
        Op::ReplaceWithRespond => {
            let next = orig.messages[mi + 1..]
                .iter()
                .flat_map(|x| x.tool_calls())
                .find(|x| x.name == m.respond)
                .and_then(reply_text);
            let Some(text) = next.or_else(|| m.replies.choose(rng).cloned()) else {
                return false;
            };
            let id = call.id.clone();
            *call = reply_call(&id, &m.respond, text);
            if !id.is_empty() {
                let mut i = mi + 1;
                while i < c.messages.len() {
                    match &c.messages[i] {
                        Message::Tool { tool_call_id, .. } if *tool_call_id == id => {
                            c.messages.remove(i);
                        }
                        _ => i += 1,
                    }
                }
            }
            true
        }
        Op::ReplaceWithServiceCall => {
            let own: Vec<&ToolCall> = orig
                .calls()
                .filter(|x| m.services.contains(&x.name.as_str()))
                .collect();
            let pick = own
                .choose(rng)
                .copied()
                .or_else(|| m.service_calls.choose(rng));
            let Some(pick) = pick else {
                return false;
            };
            call.name = pick.name.clone();
            call.arguments = pick.arguments.clone();
            true
        }
        Op::ReplaceWithForeignMessage => {
            let Some(text) = m.foreign_replies.choose(rng) else {
                return false;
            };
            let id = call.id.clone();
            *call = reply_call(&id, &m.respond, text.clone());
            true
        }
    }
}

/// The latest value for argument `key` before message `mi`: from a result record of an earlier
/// tool message, or from an earlier call's arguments.
fn earlier_value(c: &Conversation, mi: usize, key: &str) -> Option<Value> {
    for msg in c.messages[..mi].iter().rev() {
        match msg {
            Message::Tool { content, .. } => {
                if let Ok(Value::Array(records)) = content.parse::<Value>() {
                    if let Some(v) = records.iter().find_map(|r| r.get(key)) {
                        return Some(v.clone());
                    }
                }
            }
            Message::Assistant { tool_calls, .. } => {
                if let Some(v) = tool_calls.iter().find_map(|t| t.arguments.get(key)) {
                    return Some(v.clone());
                }
            }
            _ => {}
        }
    }
    None
}
