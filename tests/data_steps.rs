//! The data steps run by hand (a StepContext over temp dirs, as the engine would): ingest →
//! schema → split → corrupt, on generated JSONL and (when present) on the real SGD copy.

use crate::generated;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde_json::{json, Map, Value};
use tracelab::formats::{read_conversations, read_pairs, write_conversations, OnBadTrace};
use tracelab::split::content_key;
use tracelab::steps::{find, Artifact, Inputs, StepContext};
use tracelab::task::Task;

/// Runs step `kind` with `params` (canonicalized first) and inputs; returns its output dir and
/// stats.
fn run_step(
    kind: &str,
    params: Value,
    inputs: Inputs,
    root: &Path,
    out: &Path,
) -> Result<Map<String, Value>, String> {
    let step = find(kind).unwrap_or_else(|| panic!("step {kind} is registered"));
    let canon = step
        .canonical_params(&params)
        .map_err(|e| format!("{}: {}", e.path, e.message))?;
    for f in step
        .external_files(&canon, root)
        .map_err(|e| e.to_string())?
    {
        assert!(
            root.join(&f).is_file(),
            "{kind}: external file {f:?} exists"
        );
    }
    std::fs::create_dir_all(out).unwrap();
    let cancel = AtomicBool::new(false);
    let responses = out.join("responses");
    let mut ctx = StepContext {
        params: &canon,
        inputs: &inputs,
        out_dir: out,
        root,
        responses: &responses,
        threads: 1,
        stats: Map::new(),
        cancel: &cancel,
        progress: &|_| {},
    };
    step.run(&mut ctx).map_err(|e| e.to_string())?;
    for a in step.produces() {
        assert!(out.join(a.file_name()).exists(), "{kind} wrote {a:?}");
    }
    Ok(ctx.stats)
}

fn inputs(by: &[(Artifact, &Path)], roles: &[(&str, &Path)]) -> Inputs {
    Inputs {
        by_artifact: by.iter().map(|(a, p)| (*a, p.to_path_buf())).collect(),
        roles: roles
            .iter()
            .map(|(r, p)| (r.to_string(), p.to_path_buf()))
            .collect(),
        all: Vec::new(),
        missing: Vec::new(),
    }
}

fn scenario_params(name: &str, seed: u64) -> Value {
    let p = repo().join("scenarios").join(format!("{name}.toml"));
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let mut v = serde_json::to_value(t).unwrap();
    v["seed"] = json!(seed);
    v
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn keys(path: &Path) -> BTreeSet<String> {
    read_conversations(path, OnBadTrace::Error)
        .unwrap()
        .conversations
        .iter()
        .map(content_key)
        .collect()
}

#[test]
fn jsonl_pipeline_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut target = generated::target(200, 1);
    // A duplicate of a later conversation under another id: if either is held out, both leave.
    let mut dup = target[5].clone();
    dup.id = "dup".into();
    target.push(dup);
    write_conversations(&root.join("target.jsonl"), &target).unwrap();
    write_conversations(&root.join("foreign.jsonl"), &generated::foreign(50)).unwrap();
    std::fs::write(
        root.join("tools.json"),
        generated::tools().to_openai(true).to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("task.md"),
        "+++\ntransactional = [\"OrderItem\"]\n+++\n# Shop assistant\n",
    )
    .unwrap();
    // A bad line is skipped and counted when asked, an error otherwise.
    let mut text = std::fs::read_to_string(root.join("target.jsonl")).unwrap();
    text.push_str("{\"messages\": [{\"role\": \"wizard\"}]}\n");
    std::fs::write(root.join("target.jsonl"), text).unwrap();

    let ing = root.join("out/ingest");
    let e = run_step(
        "ingest",
        json!({"format": "jsonl", "path": "target.jsonl"}),
        Inputs::default(),
        root,
        &ing,
    )
    .unwrap_err();
    assert!(
        e.contains("target.jsonl:202:") && e.contains("unknown role"),
        "{e}"
    );
    let stats = run_step(
        "ingest",
        json!({"format": "jsonl", "path": "target.jsonl", "on_bad_trace": "skip"}),
        Inputs::default(),
        root,
        &ing,
    )
    .unwrap();
    assert_eq!(stats["traces"], 201);
    assert_eq!(stats["skipped"], 1);
    assert_eq!(stats["calls_per_function"]["SearchItems"], 201);
    let fing = root.join("out/foreign");
    run_step(
        "ingest",
        json!({"format": "jsonl", "path": "foreign.jsonl"}),
        Inputs::default(),
        root,
        &fing,
    )
    .unwrap();

    // The task file's reply function must match the tools'; here it does.
    let sch = root.join("out/schema");
    let stats = run_step(
        "schema",
        json!({"format": "tools", "path": "tools.json", "task": "task.md"}),
        Inputs::default(),
        root,
        &sch,
    )
    .unwrap();
    assert_eq!(stats["service_functions"], 2);
    Task::load(&sch.join("task.md")).unwrap();

    // Tools declared per line in a JSONL trace file (the study's form) are a schema source too.
    let tools = generated::tools().to_openai(false);
    let line = |t: &Value| {
        json!({"tools": t, "messages": [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}]})
        .to_string()
    };
    std::fs::write(
        root.join("declared.jsonl"),
        format!("{}\n{}\n", line(&tools), line(&tools)),
    )
    .unwrap();
    let stats = run_step(
        "schema",
        json!({"format": "jsonl", "path": "declared.jsonl", "task": "task.md"}),
        Inputs::default(),
        root,
        &root.join("out/schema-jsonl"),
    )
    .unwrap();
    assert_eq!(stats["functions"]["OrderItem"]["kind"], "transaction");
    assert_eq!(stats["functions"]["SearchItems"]["kind"], "search");
    let other = json!([{"type": "function", "function": {"name": "Other"}}]);
    std::fs::write(
        root.join("declared.jsonl"),
        format!("{}\n{}\n", line(&tools), line(&other)),
    )
    .unwrap();
    let e = run_step(
        "schema",
        json!({"format": "jsonl", "path": "declared.jsonl", "task": "task.md"}),
        Inputs::default(),
        root,
        &root.join("out/schema-jsonl2"),
    )
    .unwrap_err();
    assert!(
        e.contains("declared.jsonl:2:") && e.contains("differ"),
        "{e}"
    );

    // The split step on the ingested pool, with its schema and task.
    let split_step = |params: Value, out: &Path| {
        run_step(
            "split",
            params,
            inputs(
                &[
                    (Artifact::Traces, &ing),
                    (Artifact::Tools, &sch),
                    (Artifact::Task, &sch),
                ],
                &[],
            ),
            root,
            out,
        )
        .unwrap()
    };
    let spl = root.join("out/split");
    let stats = split_step(json!({"test_conversations": 20}), &spl);
    assert_eq!(stats["test_conversations"], 20);
    let removed = stats["removed_duplicates"].as_u64().unwrap();
    assert_eq!(stats["pool"].as_u64().unwrap() + 20 + removed, 201);
    let test_keys = keys(&spl.join("test.jsonl"));
    assert!(keys(&spl.join("traces.jsonl")).is_disjoint(&test_keys));
    let pairs = read_pairs(&spl.join("pairs.jsonl")).unwrap();
    assert_eq!(pairs.len() as u64, stats["pairs"].as_u64().unwrap());

    for name in ["clean", "noisy-labels", "low-data", "trace-mixing"] {
        let out = root.join(format!("out/corrupt-{name}"));
        let stats = run_step(
            "corrupt",
            scenario_params(name, 0),
            inputs(
                &[(Artifact::Traces, &spl), (Artifact::Tools, &sch)],
                &[("foreign", &fing)],
            ),
            root,
            &out,
        )
        .unwrap();
        assert!(
            keys(&out.join("traces.jsonl")).is_disjoint(&test_keys),
            "{name}: no test conversation in the training set"
        );
        if name == "clean" {
            assert_eq!(stats["valid_share"], 1.0);
        }
        if name == "noisy-labels" {
            let corrupted = stats["changed.0.noisy_calls.calls_corrupted"]
                .as_f64()
                .unwrap();
            assert!((corrupted / stats["calls"].as_f64().unwrap() - 0.5).abs() < 0.01);
            assert!(stats["changed.0.noisy_calls.swap_tool"].as_u64().unwrap() > 0);
            assert!(stats["valid_share"].as_f64().unwrap() < 1.0, "{stats:?}");
        }
    }

    // A dev split: the same 20 test conversations leave everything; 15 others from the pool are
    // evaluated, and neither set is trained on.
    let dev = root.join("out/split-dev");
    let stats = split_step(
        json!({"test_conversations": 20, "dev_conversations": 15}),
        &dev,
    );
    assert_eq!(stats["evaluates"], "dev");
    assert_eq!(stats["evaluated_conversations"], 15);
    let dev_keys = keys(&dev.join("test.jsonl"));
    assert_eq!(dev_keys.len(), 15);
    assert!(
        dev_keys.is_disjoint(&test_keys),
        "no test conversation is evaluated"
    );
    let dev_pool = keys(&dev.join("traces.jsonl"));
    assert!(dev_pool.is_disjoint(&test_keys) && dev_pool.is_disjoint(&dev_keys));
    assert!(dev_pool.is_subset(&keys(&spl.join("traces.jsonl"))));
    let split = find("split").unwrap();
    assert_eq!(
        split
            .canonical_params(&json!({"test_conversations": 20, "dev_conversations": 0}))
            .unwrap(),
        split
            .canonical_params(&json!({"test_conversations": 20}))
            .unwrap(),
        "no dev split keeps the keys it had"
    );

    // A given test file that overlaps the pool: its conversations leave the pool.
    let given: Vec<_> = target[..3].to_vec();
    write_conversations(&root.join("given.jsonl"), &given).unwrap();
    let spl2 = root.join("out/split2");
    let stats = split_step(json!({"test_file": "given.jsonl"}), &spl2);
    assert_eq!(stats["test_conversations"], 3);
    assert_eq!(stats["pool"], 198);
    assert!(keys(&spl2.join("traces.jsonl")).is_disjoint(&keys(&root.join("given.jsonl"))));

    // Cosmetic keys do not reach the canonical form; unknown keys are refused.
    let corrupt = find("corrupt").unwrap();
    let a = corrupt
        .canonical_params(&scenario_params("low-data", 0))
        .unwrap();
    let mut b = scenario_params("low-data", 0);
    b["description"] = json!("another text");
    assert_eq!(a, corrupt.canonical_params(&b).unwrap());
    assert!(a.get("description").is_none());
    b["bogus"] = json!(1);
    assert!(corrupt.canonical_params(&b).is_err());
    assert_eq!(
        corrupt.roles(&a),
        Vec::<String>::new(),
        "low-data needs no role pool"
    );
    let n = corrupt
        .canonical_params(&scenario_params("noisy-labels", 0))
        .unwrap();
    assert_eq!(corrupt.roles(&n), ["foreign"]);
    let e = find("ingest")
        .unwrap()
        .canonical_params(&json!({"format": "sgd", "path": "x"}))
        .unwrap_err();
    assert_eq!(e.path, "service");
}

fn sgd_root() -> Option<PathBuf> {
    let root = std::env::var_os("TRACELAB_SGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/sgd"));
    if root.join("train").is_dir() {
        Some(root)
    } else {
        eprintln!(
            "SKIPPED: SGD dataset not found at {} (set TRACELAB_SGD)",
            root.display()
        );
        None
    }
}

/// The benchmark's data nodes on the real SGD copy, with every scenario; prints the statistics.
#[test]
fn sgd_benchmark_data_by_hand() {
    let Some(sgd) = sgd_root() else { return };
    let root = repo();
    let sgd_rel = sgd
        .strip_prefix(&root)
        .map(Path::to_path_buf)
        .unwrap_or(sgd.clone());
    let sgd_rel = sgd_rel.to_str().unwrap();
    // TRACELAB_KEEP_DATA_TEST=1 keeps the outputs for a look (the path is printed).
    let tmp = tempfile::tempdir().unwrap();
    let base = if std::env::var_os("TRACELAB_KEEP_DATA_TEST").is_some() {
        let kept = tmp.keep();
        eprintln!("outputs kept in {}", kept.display());
        kept
    } else {
        tmp.path().to_path_buf()
    };
    let out = |n: &str| base.join(n);
    let mut all: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let ingest = |service: &str, splits: &[&str], dir: &Path| {
        run_step(
            "ingest",
            json!({"format": "sgd", "path": sgd_rel, "service": service, "splits": splits}),
            Inputs::default(),
            &root,
            dir,
        )
        .unwrap()
    };
    let s = ingest("Restaurants_1", &["train"], &out("target"));
    assert_eq!(s["traces"], 367);
    assert_eq!(s["valid_share"], 1.0);
    all.insert("ingest target".into(), s);
    let s = ingest("Restaurants_2", &["dev", "test"], &out("sister"));
    assert_eq!(s["traces"], 146);
    all.insert("ingest sister".into(), s);
    let s = ingest("Hotels_1", &["train", "dev"], &out("foreign"));
    assert_eq!(s["traces"], 142);
    all.insert("ingest foreign".into(), s);
    let s = run_step(
        "schema",
        json!({"format": "sgd", "path": sgd_rel, "service": "Restaurants_1", "task": "tasks/restaurants.md"}),
        Inputs::default(),
        &root,
        &out("schema"),
    )
    .unwrap();
    all.insert("schema".into(), s);
    let s = run_step(
        "split",
        json!({"test_conversations": 34, "seed": 0}),
        inputs(
            &[
                (Artifact::Traces, &out("target")),
                (Artifact::Tools, &out("schema")),
                (Artifact::Task, &out("schema")),
            ],
            &[],
        ),
        &root,
        &out("split"),
    )
    .unwrap();
    assert_eq!(s["test_conversations"], 34);
    let pairs = s["pairs"].as_u64().unwrap();
    assert!((300..=420).contains(&pairs), "{pairs} pairs");
    let test_keys = keys(&out("split").join("test.jsonl"));
    all.insert("split".into(), s);
    for name in [
        "clean",
        "noisy-labels",
        "schema-drift",
        "low-data",
        "trace-mixing",
    ] {
        let dir = out(&format!("corrupt-{name}"));
        let s = run_step(
            "corrupt",
            scenario_params(name, 0),
            inputs(
                &[
                    (Artifact::Traces, &out("split")),
                    (Artifact::Tools, &out("schema")),
                ],
                &[("sister", &out("sister")), ("foreign", &out("foreign"))],
            ),
            &root,
            &dir,
        )
        .unwrap();
        assert!(keys(&dir.join("traces.jsonl")).is_disjoint(&test_keys));
        match name {
            "clean" => assert_eq!(s["valid_share"], 1.0, "every converted call validates"),
            "schema-drift" => {
                // Only the 10% of the target half kept clean, as in the study's file.
                assert_eq!(s["changed.1.rename.kept_clean"], 15);
                assert!(s["calls_with_target_name"].as_u64().unwrap() > 0);
                assert_eq!(s["traces_per_pool"], json!({"sister": 146, "target": 146}));
            }
            "trace-mixing" => {
                assert_eq!(s["traces_per_pool"], json!({"foreign": 142, "target": 36}))
            }
            "low-data" => assert_eq!(s["traces"], 5),
            _ => {}
        }
        all.insert(format!("corrupt {name}"), s);
    }
    for (k, v) in &all {
        eprintln!("== {k}\n{}", serde_json::to_string(v).unwrap());
    }
}
