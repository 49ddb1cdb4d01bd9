//! Corruption operators on generated traces: rates within tolerance on 1,000 traces, determinism
//! per seed, renaming leaves no target name, mixing shares, and the shipped scenario files.

use crate::generated;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use tracelab::conversation::{Conversation, Message};
use tracelab::formats::write_conversations;
use tracelab::scenario::{apply, check_sizes, roles, Operator, Outcome, ScenarioFile};

fn scenario(name: &str) -> ScenarioFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    ScenarioFile::load(&p).unwrap()
}

fn pools() -> BTreeMap<String, Vec<Conversation>> {
    BTreeMap::from([
        ("sister".to_string(), generated::sister(146)),
        ("foreign".to_string(), generated::foreign(142)),
    ])
}

fn run(name: &str, n: usize, seed: u64) -> Outcome {
    let s = scenario(name);
    apply(
        &s.operators,
        generated::target(n, 7),
        &pools(),
        &generated::tools(),
        seed,
    )
    .unwrap()
}

fn bytes(convs: &[Conversation]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.jsonl");
    write_conversations(&p, convs).unwrap();
    std::fs::read(p).unwrap()
}

fn assistant_calls(c: &Conversation) -> Vec<(String, serde_json::Map<String, Value>)> {
    c.messages
        .iter()
        .filter_map(|m| m.tool_calls().first())
        .map(|t| (t.name.clone(), t.arguments.clone()))
        .collect()
}

#[test]
fn noisy_labels_rates_on_1000_traces() {
    let input = generated::target(1000, 7);
    let out = run("noisy-labels", 1000, 3);
    assert_eq!(out.traces.len(), 1000);
    let total: usize = input.iter().map(|c| c.calls().count()).sum();
    let mut changed = 0usize;
    let mut changed_name = 0usize;
    let mut clean = 0usize;
    for (a, b) in input.iter().zip(&out.traces) {
        assert_eq!(a.id, b.id);
        let (ca, cb) = (assistant_calls(a), assistant_calls(b));
        assert_eq!(
            ca.len(),
            cb.len(),
            "assistant turns are never added or removed"
        );
        let diff = ca.iter().zip(&cb).filter(|(x, y)| x != y).count();
        changed += diff;
        changed_name += ca.iter().zip(&cb).filter(|(x, y)| x.0 != y.0).count();
        if b.meta.get("clean") == Some(&Value::Bool(true)) {
            clean += 1;
            assert_eq!(diff, 0, "clean traces are untouched");
            assert_eq!(a.messages, b.messages);
        }
        let notes = b.meta.get("corruptions").and_then(Value::as_array);
        assert_eq!(notes.map_or(0, Vec::len), diff, "{}", b.id);
    }
    assert_eq!(clean, 100, "10% of traces clean");
    let rate = changed as f64 / total as f64;
    assert!((rate - 0.5).abs() < 0.005, "rate {rate}");
    // About half of all corruptions change the tool choice itself.
    let name_share = changed_name as f64 / changed as f64;
    assert!((0.4..0.7).contains(&name_share), "{name_share}");

    let ch = &out.changes;
    let get = |k: &str| *ch.get(&format!("0.noisy_calls.{k}")).unwrap_or(&0) as f64;
    let service = get("swap_tool") + get("swap_params") + get("replace_with_respond");
    let respond = get("replace_with_service_call") + get("replace_with_foreign_message");
    assert_eq!((service + respond) as usize, changed);
    for k in ["swap_tool", "swap_params", "replace_with_respond"] {
        let share = get(k) / service;
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{k}: {share} ({ch:?})");
    }
    for k in ["replace_with_service_call", "replace_with_foreign_message"] {
        let share = get(k) / respond;
        assert!((share - 0.5).abs() < 0.02, "{k}: {share}");
    }
    // Foreign replies come from the foreign pool.
    let foreign_texts: BTreeSet<String> = pools()["foreign"]
        .iter()
        .flat_map(|c| c.calls().map(|t| t.arguments.get("message").cloned()))
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let seen = out
        .traces
        .iter()
        .flat_map(|c| c.calls())
        .filter(|t| {
            t.arguments
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| foreign_texts.contains(m))
        })
        .count();
    assert_eq!(seen as f64, get("replace_with_foreign_message"));
    // A service call replaced by a reply loses its results: every tool message still answers a
    // service call (swap_tool and replace_with_service_call keep the call id).
    for c in &out.traces {
        let ids: BTreeSet<&str> = c
            .calls()
            .filter(|t| t.name != "respond_to_user")
            .map(|t| t.id.as_str())
            .collect();
        for m in &c.messages {
            if let Message::Tool { tool_call_id, .. } = m {
                assert!(
                    ids.contains(tool_call_id.as_str()),
                    "{}: orphan result {tool_call_id}",
                    c.id
                );
            }
        }
    }
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    for name in [
        "noisy-labels",
        "schema-drift",
        "low-data",
        "trace-mixing",
        "clean",
    ] {
        let a = bytes(&run(name, 300, 1).traces);
        let b = bytes(&run(name, 300, 1).traces);
        assert_eq!(a, b, "{name}: same seed, same bytes");
        let c = bytes(&run(name, 300, 2).traces);
        if name == "clean" {
            assert_eq!(a, c, "clean does not depend on the seed");
        } else {
            assert_ne!(a, c, "{name}: another seed, other output");
        }
    }
}

/// Whether a trace was one of those `rename` left with the target names.
fn kept_clean(c: &Conversation) -> bool {
    c.meta["pool"] == "target" && c.meta["renamed"].as_object().is_some_and(|m| m.is_empty())
}

#[test]
fn schema_drift_keeps_a_tenth_of_the_target_half_clean_as_the_study() {
    let tools = generated::tools();
    let target: BTreeSet<&str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
    let out = run("schema-drift", 327, 0);
    assert_eq!(out.traces.len(), 292, "146 target + 146 sister");
    let mut per_pool: BTreeMap<String, usize> = BTreeMap::new();
    let mut fn_names = BTreeSet::new();
    let mut param_names = BTreeSet::new();
    let mut clean = 0;
    for c in &out.traces {
        *per_pool
            .entry(c.meta["pool"].as_str().unwrap().to_string())
            .or_default() += 1;
        if kept_clean(c) {
            clean += 1;
            assert!(c.calls().all(|t| target.contains(t.name.as_str())));
            continue;
        }
        for t in c.calls() {
            assert!(!target.contains(t.name.as_str()), "{}: {}", c.id, t.name);
            fn_names.insert(t.name.clone());
            if c.meta["pool"] == "target" {
                param_names.extend(t.arguments.keys().cloned());
            }
        }
    }
    assert_eq!(per_pool["target"], 146);
    assert_eq!(per_pool["sister"], 146);
    // The study's file: 14 of 146; 10% rounded here.
    assert_eq!(clean, 15);
    assert_eq!(out.changes["1.rename.kept_clean"], 15);
    // 3 target functions x 6 alternatives, all used over 131 renamed traces, plus the sister's.
    let target_alts = out
        .traces
        .iter()
        .filter(|c| c.meta["pool"] == "target" && !kept_clean(c))
        .flat_map(|c| c.calls().map(|t| t.name.clone()))
        .collect::<BTreeSet<_>>();
    assert_eq!(target_alts.len(), 18, "{target_alts:?}");
    let target_params: BTreeSet<&str> = tools
        .functions
        .iter()
        .flat_map(|f| f.parameter_names())
        .collect();
    assert!(param_names
        .iter()
        .all(|p| !target_params.contains(p.as_str())));
    assert!(fn_names.len() > 18);
    assert_eq!(roles(&scenario("schema-drift").operators), ["sister"]);
}

#[test]
fn schema_drift_on_a_pool_smaller_than_the_sister_pool_takes_equal_halves() {
    // The user's case: 144 training conversations, a sister pool of 185.
    let s = scenario("schema-drift");
    let pools = BTreeMap::from([("sister".to_string(), generated::sister(185))]);
    let out = apply(
        &s.operators,
        generated::target(144, 7),
        &pools,
        &generated::tools(),
        0,
    )
    .unwrap();
    let target = out.traces.iter().filter(|c| c.meta["pool"] == "target");
    let sister = out.traces.iter().filter(|c| c.meta["pool"] == "sister");
    assert_eq!((target.count(), sister.count()), (144, 144));
    assert_eq!(out.changes["0.subsample.kept"], 144);
    assert_eq!(out.changes["2.add_role.added_sister"], 144);
    assert_eq!(
        check_sizes(&s.operators, 144, &|_| Some(185)),
        Ok(()),
        "and the load-time check agrees"
    );
}

#[test]
fn rename_keep_clean_keeps_the_exact_share_and_leaves_the_other_names_as_they_were() {
    let tools = generated::tools();
    let target: BTreeSet<&str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
    let rename = |keep_clean: f64| {
        let s: ScenarioFile = toml::from_str(&format!(
            "[[operators]]\nop = \"rename\"\nkeep_clean = {keep_clean}\n"
        ))
        .unwrap();
        apply(&s.operators, generated::target(83, 7), &pools(), &tools, 4).unwrap()
    };
    let none = rename(0.0);
    let some = rename(0.25);
    assert_eq!(some.traces.len(), 83);
    let clean: Vec<&Conversation> = some.traces.iter().filter(|c| kept_clean(c)).collect();
    assert_eq!(clean.len(), 21, "25% of 83, rounded: an exact count");
    assert_eq!(some.changes["0.rename.kept_clean"], 21);
    let original = generated::target(83, 7);
    for (i, c) in some.traces.iter().enumerate() {
        if kept_clean(c) {
            assert_eq!(c.messages, original[i].messages, "{} is untouched", c.id);
            assert!(c.calls().any(|t| target.contains(t.name.as_str())));
        } else {
            // The renamed traces have the names they get without keep_clean.
            assert_eq!(c.messages, none.traces[i].messages, "{}", c.id);
            assert!(c.calls().all(|t| !target.contains(t.name.as_str())));
        }
    }
    assert!(none.traces.iter().all(|c| !kept_clean(c)));
    // Exact counts per seed, and another seed keeps other traces.
    let again = rename(0.25);
    assert_eq!(bytes(&again.traces), bytes(&some.traces));
    let bad: ScenarioFile =
        toml::from_str("[[operators]]\nop = \"rename\"\nkeep_clean = 1.5\n").unwrap();
    let e = apply(&bad.operators, generated::target(5, 0), &pools(), &tools, 0).unwrap_err();
    assert!(
        e.to_string().contains("keep_clean 1.5 is not within 0..1"),
        "{e}"
    );
}

#[test]
fn sizes_that_the_pools_cannot_give_are_found_before_any_trace_is_read() {
    let parse = |text: &str| toml::from_str::<ScenarioFile>(text).unwrap().operators;
    let bounds = |r: &str| match r {
        "sister" => Some(185),
        "foreign" => Some(142),
        _ => None,
    };
    let low = parse("[[operators]]\nop = \"subsample\"\ncount = 500\n");
    let (i, e) = check_sizes(&low, 327, &bounds).unwrap_err();
    assert_eq!((i, e.key), (0, "count"));
    assert!(e
        .message
        .contains("500 traces asked for, the working set has 327"));
    let add = parse("[[operators]]\nop = \"subsample\"\ncount = 5\n[[operators]]\nop = \"add_role\"\nrole = \"sister\"\ncount = 200\n");
    let (i, e) = check_sizes(&add, 327, &bounds).unwrap_err();
    assert_eq!((i, e.key), (1, "count"));
    assert!(e
        .message
        .contains("200 traces of \"sister\" asked for, the pool has 185"));
    // Mixing after a subsample to nothing: no target trace is left to mix with.
    let mix =
        parse("[[operators]]\nop = \"subsample\"\nshare = 0.0\n[[operators]]\nop = \"mix\"\n");
    let (i, e) = check_sizes(&mix, 327, &bounds).unwrap_err();
    assert_eq!((i, e.key), (1, "foreign_share"));
    assert!(e.message.contains("cannot be met"), "{}", e.message);
    // The run says the same.
    let err = apply(
        &mix,
        generated::target(50, 0),
        &pools(),
        &generated::tools(),
        0,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("mix: a foreign share of 0.8 cannot be met"),
        "{err}"
    );
    // An empty role pool (a sister service with no dialogue in the splits given) is an error,
    // not a schema drift with no drifted half.
    let empty = |r: &str| (r == "sister").then_some(0);
    let (i, e) = check_sizes(&scenario("schema-drift").operators, 327, &empty).unwrap_err();
    assert_eq!(e.key, "role");
    assert!(
        e.message.contains("the \"sister\" pool is empty"),
        "{i}: {}",
        e.message
    );
    // The shipped scenarios fit the study's pools, and schema drift fits a smaller one.
    for name in [
        "clean",
        "noisy-labels",
        "schema-drift",
        "low-data",
        "trace-mixing",
    ] {
        assert_eq!(
            check_sizes(&scenario(name).operators, 327, &bounds),
            Ok(()),
            "{name}"
        );
        assert_eq!(
            check_sizes(&scenario(name).operators, 144, &bounds),
            Ok(()),
            "{name}"
        );
    }
}

#[test]
fn trace_mixing_is_80_20_with_target_names_and_shuffled_messages() {
    let out = run("trace-mixing", 327, 0);
    let foreign = out
        .traces
        .iter()
        .filter(|c| c.meta["pool"] == "foreign")
        .count();
    let target = out
        .traces
        .iter()
        .filter(|c| c.meta["pool"] == "target")
        .count();
    assert_eq!((foreign, target), (142, 36));
    let names: BTreeSet<String> = out
        .traces
        .iter()
        .flat_map(|c| c.calls().map(|t| t.name.clone()))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "OrderItem".into(),
            "SearchItems".into(),
            "respond_to_user".into()
        ]),
        "foreign functions renamed to the target's by kind"
    );
    let orig = generated::foreign(142);
    let by_id: BTreeMap<&str, &Conversation> = orig.iter().map(|c| (c.id.as_str(), c)).collect();
    let shuffled = out
        .traces
        .iter()
        .filter(|c| c.meta["pool"] == "foreign")
        .filter(|c| {
            let o = by_id[c.id.as_str()];
            let roles_a: Vec<&str> = o.messages.iter().map(Message::role).collect();
            let roles_b: Vec<&str> = c.messages.iter().map(Message::role).collect();
            roles_a != roles_b
        })
        .count();
    assert!(shuffled > 120, "{shuffled}");
    // Search calls in the foreign traces were LookupRooms.
    let f0 = out.traces.iter().find(|c| c.id == "f0").unwrap();
    assert!(f0
        .calls()
        .any(|t| t.name == "SearchItems" && t.arguments.contains_key("destination")));
}

#[test]
fn low_data_and_clean() {
    let out = run("low-data", 327, 0);
    assert_eq!(out.traces.len(), 5);
    let input = generated::target(327, 7);
    for c in &out.traces {
        let o = input.iter().find(|x| x.id == c.id).unwrap();
        assert_eq!(o.messages, c.messages, "low data traces are clean");
    }
    let out = run("clean", 327, 0);
    let mut input = input;
    for c in &mut input {
        c.meta.insert("pool".into(), "target".into());
    }
    assert_eq!(out.traces, input);
}

#[test]
fn operator_errors_are_reported() {
    let tools = generated::tools();
    let e = apply(
        &[Operator::Subsample {
            count: Some(10),
            share: None,
            like_role: None,
        }],
        generated::target(5, 0),
        &BTreeMap::new(),
        &tools,
        0,
    )
    .unwrap_err();
    assert!(e.to_string().contains("10 traces asked for"), "{e}");
    let s: ScenarioFile =
        toml::from_str("[[operators]]\nop = \"mix\"\nrole = \"elsewhere\"\n").unwrap();
    let e = apply(&s.operators, generated::target(5, 0), &pools(), &tools, 0).unwrap_err();
    assert!(
        e.to_string()
            .contains("no trace pool for role \"elsewhere\""),
        "{e}"
    );
    let bad: Result<ScenarioFile, _> =
        toml::from_str("[[operators]]\nop = \"noisy_calls\"\nrate = 0.5\nbogus = 1\n");
    assert!(bad.is_err());
}
