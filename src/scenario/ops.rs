//! The structural operators: subsample, per-trace renaming, adding a role pool, trace mixing.
//! Their sizes are computed beforehand by [`super::Operator::sizes`], which also rejects the
//! impossible ones, so these functions take counts that fit.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};

use super::names::{function_alternatives, parameter_alternatives};
use super::{function_kinds, invalid, Changes, ScenarioError, Sizes};
use crate::conversation::{Conversation, Message};
use crate::tools::{FunctionKind, ToolSet};

/// A seeded subset of `n` traces (at most all of them), in their original order.
pub(super) fn subsample(
    work: Vec<Conversation>,
    n: usize,
    rng: &mut ChaCha8Rng,
    ch: &mut Changes<'_>,
) -> Vec<Conversation> {
    debug_assert!(n <= work.len(), "sizes are checked by Operator::sizes");
    let keep = choose_indices(work.len(), n, rng);
    ch.add("dropped", (work.len() - keep.len()) as u64);
    ch.add("kept", keep.len() as u64);
    work.into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, c)| c)
        .collect()
}

/// `n` distinct indices out of `0..len`, chosen by a seeded shuffle.
pub(super) fn choose_indices(len: usize, n: usize, rng: &mut ChaCha8Rng) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(rng);
    order.into_iter().take(n).collect()
}

/// What `rename` renames to: how many alternatives per name, and the given ones.
pub(super) struct Names<'a> {
    pub alternatives: usize,
    pub functions: &'a BTreeMap<String, Vec<String>>,
    pub parameters: &'a BTreeMap<String, Vec<String>>,
}

/// Renames, per trace, each target function and each target parameter name to one of its
/// alternatives, except in a seeded `keep_clean` share of the traces (exact count, rounded),
/// which keep the target names. Parameters are renamed by name (a name shared by two functions
/// gets the same new name within a trace); a trace's choices are recorded in `meta.renamed`
/// (empty for a trace kept clean).
pub(super) fn rename(
    mut work: Vec<Conversation>,
    tools: &ToolSet,
    names: &Names<'_>,
    keep_clean: f64,
    rng: &mut ChaCha8Rng,
    ch: &mut Changes<'_>,
) -> Result<Vec<Conversation>, ScenarioError> {
    let (fmap, pmap) = alternatives_of(tools, names)?;
    // One draw per name per trace, in a fixed order, whether or not the trace uses it or is
    // kept clean, so a trace's names depend neither on which functions it calls nor on
    // `keep_clean`; the clean traces are chosen after all draws.
    let choices: Vec<_> = work
        .iter()
        .map(|_| (draw(&fmap, rng), draw(&pmap, rng)))
        .collect();
    let n_clean = (keep_clean * work.len() as f64).round() as usize;
    let clean = if n_clean > 0 {
        choose_indices(work.len(), n_clean, rng)
    } else {
        BTreeSet::new()
    };
    let mut used_f = BTreeSet::new();
    let mut used_p = BTreeSet::new();
    for (i, (c, (fchoice, pchoice))) in work.iter_mut().zip(choices).enumerate() {
        if clean.contains(&i) {
            c.meta.insert("renamed".into(), Value::Object(Map::new()));
            ch.add("kept_clean", 1);
            continue;
        }
        let renamed = rename_trace(c, &fchoice, &pchoice, ch, &mut used_f, &mut used_p);
        c.meta.insert("renamed".into(), Value::Object(renamed));
    }
    ch.add("function_names_used", used_f.len() as u64);
    ch.add("parameter_names_used", used_p.len() as u64);
    Ok(work)
}

type Alternatives<'t> = BTreeMap<&'t str, Vec<String>>;

/// One alternative per name, drawn in name order.
fn draw<'m>(map: &'m Alternatives<'_>, rng: &mut ChaCha8Rng) -> BTreeMap<String, &'m String> {
    map.iter()
        .map(|(k, v)| (k.to_string(), &v[rng.random_range(0..v.len())]))
        .collect()
}

/// Renames one trace's calls and arguments by the drawn names; returns old → new.
fn rename_trace(
    c: &mut Conversation,
    fchoice: &BTreeMap<String, &String>,
    pchoice: &BTreeMap<String, &String>,
    ch: &mut Changes<'_>,
    used_f: &mut BTreeSet<String>,
    used_p: &mut BTreeSet<String>,
) -> Map<String, Value> {
    let mut renamed = Map::new();
    for m in &mut c.messages {
        let Message::Assistant { tool_calls, .. } = m else {
            continue;
        };
        for call in tool_calls {
            let Some(new) = fchoice.get(call.name.as_str()) else {
                continue;
            };
            renamed.insert(call.name.clone(), Value::String((*new).clone()));
            call.name = (*new).clone();
            used_f.insert((*new).clone());
            ch.add("renamed_calls", 1);
            let mut args = Map::new();
            for (k, v) in std::mem::take(&mut call.arguments) {
                match pchoice.get(k.as_str()) {
                    Some(nk) => {
                        renamed.insert(k.clone(), Value::String((*nk).clone()));
                        used_p.insert((*nk).clone());
                        ch.add("renamed_arguments", 1);
                        args.insert((*nk).clone(), v);
                    }
                    None => {
                        args.insert(k, v);
                    }
                }
            }
            call.arguments = args;
        }
    }
    renamed
}

/// The alternatives of every target function and parameter name: given, or generated.
fn alternatives_of<'t>(
    tools: &'t ToolSet,
    names: &Names<'_>,
) -> Result<(Alternatives<'t>, Alternatives<'t>), ScenarioError> {
    let (alternatives, given_functions, given_parameters) =
        (names.alternatives, names.functions, names.parameters);
    let fn_names: Vec<&'t str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
    let mut param_names: Vec<&'t str> = Vec::new();
    for f in &tools.functions {
        for p in f.parameter_names() {
            if !param_names.contains(&p) {
                param_names.push(p);
            }
        }
    }
    for k in given_functions.keys() {
        if !fn_names.contains(&k.as_str()) {
            return invalid(format!("rename: {k:?} is not a target function"));
        }
    }
    for k in given_parameters.keys() {
        if !param_names.contains(&k.as_str()) {
            return invalid(format!("rename: {k:?} is not a target parameter"));
        }
    }
    let mut fmap: Alternatives<'t> = BTreeMap::new();
    for f in &tools.functions {
        let alts = match given_functions.get(&f.name) {
            Some(g) => g.clone(),
            None => function_alternatives(&f.name, f.kind, alternatives, &fn_names),
        };
        if alts.len() < alternatives {
            return invalid(format!(
                "rename: only {} alternative names for {}",
                alts.len(),
                f.name
            ));
        }
        if let Some(bad) = alts.iter().find(|a| fn_names.contains(&a.as_str())) {
            return invalid(format!(
                "rename: alternative {bad:?} for {} is a target name",
                f.name
            ));
        }
        fmap.insert(f.name.as_str(), alts);
    }
    let mut pmap: Alternatives<'t> = BTreeMap::new();
    for &p in &param_names {
        let alts = match given_parameters.get(p) {
            Some(g) => g.clone(),
            None => parameter_alternatives(p, alternatives, &param_names),
        };
        if alts.len() < alternatives {
            return invalid(format!("rename: only {} alternatives for {p}", alts.len()));
        }
        if let Some(bad) = alts.iter().find(|a| param_names.contains(&a.as_str())) {
            return invalid(format!(
                "rename: alternative {bad:?} for {p} is a target parameter"
            ));
        }
        pmap.insert(p, alts);
    }
    Ok((fmap, pmap))
}

/// Appends a seeded `n` of a role pool's traces (all when `n` is the pool's size), renaming its
/// functions that carry target names to non-target names of the same kind, one mapping for the
/// whole pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_role(
    mut work: Vec<Conversation>,
    role: &str,
    pool: &[Conversation],
    n: usize,
    given: &BTreeMap<String, String>,
    tools: &ToolSet,
    rng: &mut ChaCha8Rng,
    ch: &mut Changes<'_>,
) -> Result<Vec<Conversation>, ScenarioError> {
    let keep = choose_indices(pool.len(), n, rng);
    let target: Vec<&str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
    let mut kinds: BTreeMap<String, FunctionKind> = BTreeMap::new();
    for c in pool {
        for (k, v) in function_kinds(c, tools) {
            kinds.entry(k).or_insert(v);
        }
    }
    // New names avoid the target's, the pool's own, and every name the working set already uses
    // (e.g. the alternatives of a preceding `rename`), so the role's functions stay distinct.
    let in_work: BTreeSet<String> = work
        .iter()
        .flat_map(|c| c.calls().map(|t| t.name.clone()))
        .collect();
    let all_names: Vec<&str> = target
        .iter()
        .copied()
        .chain(kinds.keys().map(String::as_str))
        .chain(in_work.iter().map(String::as_str))
        .collect();
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, kind) in &kinds {
        if !target.contains(&name.as_str()) {
            continue;
        }
        let new = match given.get(name) {
            Some(g) if target.contains(&g.as_str()) => {
                return invalid(format!("add_role: new name {g:?} is a target name"))
            }
            Some(g) => g.clone(),
            None => {
                let alts = function_alternatives(name, *kind, usize::MAX, &all_names);
                match alts.choose(rng) {
                    Some(a) => a.clone(),
                    None => return invalid(format!("add_role: no alternative name for {name}")),
                }
            }
        };
        map.insert(name.clone(), new);
    }
    for (i, c) in pool.iter().enumerate() {
        if !keep.contains(&i) {
            continue;
        }
        let mut c = c.clone();
        for m in &mut c.messages {
            if let Message::Assistant { tool_calls, .. } = m {
                for call in tool_calls {
                    if let Some(new) = map.get(&call.name) {
                        call.name = new.clone();
                        ch.add("renamed_calls", 1);
                    }
                }
            }
        }
        c.meta.insert("pool".into(), Value::String(role.into()));
        c.meta.insert(
            "renamed".into(),
            serde_json::to_value(&map).expect("string map"),
        );
        work.push(c);
        ch.add(&format!("added_{role}"), 1);
    }
    Ok(work)
}

/// Trace mixing (see [`super::Operator::Mix`]): `sizes.keep` working-set traces and
/// `sizes.add` role traces.
#[allow(clippy::too_many_arguments)]
pub(super) fn mix(
    work: Vec<Conversation>,
    role: &str,
    pool: &[Conversation],
    sizes: Sizes,
    shuffle_messages: bool,
    tools: &ToolSet,
    rng: &mut ChaCha8Rng,
    ch: &mut Changes<'_>,
) -> Vec<Conversation> {
    let keep_t = choose_indices(work.len(), sizes.keep, rng);
    let keep_f = choose_indices(pool.len(), sizes.add, rng);
    // Target functions by kind, in tool order.
    let by_kind =
        |k: FunctionKind| -> Vec<&str> { tools.of_kind(k).map(|f| f.name.as_str()).collect() };
    let mut kinds: BTreeMap<String, FunctionKind> = BTreeMap::new();
    for c in pool {
        for (k, v) in function_kinds(c, tools) {
            kinds.entry(k).or_insert(v);
        }
    }
    // The i-th role function of a kind (name order) becomes the i-th target function of that
    // kind (cycling); a kind the target lacks keeps its name.
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for kind in [
        FunctionKind::Search,
        FunctionKind::Transaction,
        FunctionKind::Respond,
    ] {
        let targets = by_kind(kind);
        let names: Vec<&String> = kinds
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(n, _)| n)
            .collect();
        for (i, n) in names.into_iter().enumerate() {
            if !targets.is_empty() {
                map.insert(n.clone(), targets[i % targets.len()].to_string());
            } else {
                ch.add("functions_without_target_kind", 1);
            }
        }
    }
    let mut out: Vec<Conversation> = work
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep_t.contains(i))
        .map(|(_, c)| c)
        .collect();
    ch.add("target_traces", out.len() as u64);
    for (i, c) in pool.iter().enumerate() {
        if !keep_f.contains(&i) {
            continue;
        }
        let mut c = c.clone();
        for m in &mut c.messages {
            if let Message::Assistant { tool_calls, .. } = m {
                for call in tool_calls {
                    if let Some(new) = map.get(&call.name) {
                        if *new != call.name {
                            call.name = new.clone();
                            ch.add("renamed_calls", 1);
                        }
                    }
                }
            }
        }
        if shuffle_messages {
            let (system, mut rest): (Vec<Message>, Vec<Message>) = c
                .messages
                .into_iter()
                .partition(|m| matches!(m, Message::System { .. }));
            rest.shuffle(rng);
            c.messages = system.into_iter().chain(rest).collect();
            ch.add("shuffled_traces", 1);
        }
        c.meta.insert("pool".into(), Value::String(role.into()));
        c.meta.insert(
            "renamed".into(),
            serde_json::to_value(&map).expect("string map"),
        );
        out.push(c);
        ch.add(&format!("{role}_traces"), 1);
    }
    out.shuffle(rng);
    out
}
