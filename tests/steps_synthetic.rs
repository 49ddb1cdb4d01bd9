//! The filter → generate → validate steps through the step interface, on SGD Restaurants_1
//! traces mixed with renamed hotel traces: outputs, side files and statistics.

use crate::common;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::{json, Value};
use tracelab::conversation::Conversation;
use tracelab::formats::{read_conversations, write_conversations, OnBadTrace};
use tracelab::steps::{self, Artifact, Inputs, StepContext, StepError};

const TASK: &str = "+++\nrespond_function = \"respond_to_user\"\n+++\n# Restaurant assistant\nFind restaurants and book tables.\n";

fn run_step(
    kind: &str,
    params: Value,
    traces_dir: &Path,
    schema_dir: &Path,
    out: &Path,
    responses: &Path,
) -> Result<serde_json::Map<String, Value>, StepError> {
    let step = steps::find(kind).unwrap();
    let params = step
        .canonical_params(&params)
        .map_err(|e| StepError::Data(e.message))?;
    let mut inputs = Inputs::default();
    inputs
        .by_artifact
        .insert(Artifact::Traces, traces_dir.to_path_buf());
    inputs
        .by_artifact
        .insert(Artifact::Tools, schema_dir.to_path_buf());
    inputs
        .by_artifact
        .insert(Artifact::Task, schema_dir.to_path_buf());
    std::fs::create_dir_all(out).unwrap();
    let cancel = AtomicBool::new(false);
    let mut ctx = StepContext {
        params: &params,
        inputs: &inputs,
        out_dir: out,
        root: Path::new("."),
        responses,
        threads: 2,
        stats: Default::default(),
        cancel: &cancel,
        progress: &|_| {},
    };
    step.run(&mut ctx)?;
    Ok(ctx.stats)
}

fn read(dir: &Path) -> Vec<Conversation> {
    read_conversations(&dir.join("traces.jsonl"), OnBadTrace::Error)
        .unwrap()
        .conversations
}

#[test]
fn filter_generate_validate_steps() {
    if common::sgd_dir().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let schema = d("schema");
    std::fs::create_dir_all(&schema).unwrap();
    let tools = common::tools("Restaurants_1");
    std::fs::write(schema.join("tools.json"), tools.to_openai(true).to_string()).unwrap();
    std::fs::write(schema.join("task.md"), TASK).unwrap();
    let r1 = common::load("Restaurants_1", &["train"]);
    let hotels = common::load("Hotels_1", &["train"]);
    let pool = common::mixing(&r1, &hotels[..60], 5);
    std::fs::create_dir_all(d("corrupt")).unwrap();
    write_conversations(&d("corrupt").join("traces.jsonl"), &pool).unwrap();

    let s = run_step(
        "filter",
        json!({}),
        &d("corrupt"),
        &schema,
        &d("filter"),
        &d("responses"),
    )
    .unwrap();
    assert_eq!(s["traces_in"], 96);
    assert_eq!(s["kept"], 36, "{s:?}");
    let dropped = std::fs::read_to_string(d("filter").join("dropped.jsonl")).unwrap();
    assert_eq!(dropped.lines().count(), 60);
    let first: Value = serde_json::from_str(dropped.lines().next().unwrap()).unwrap();
    assert!(
        first["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("fit")),
        "{first}"
    );

    let s = run_step(
        "generate",
        json!({"conversations": 200, "seed": 3}),
        &d("filter"),
        &schema,
        &d("generate"),
        &d("responses"),
    )
    .unwrap();
    assert_eq!(s["generated"], 200);
    assert_eq!(s["failures"], 0);
    let generated = read(&d("generate"));
    assert_eq!(generated.len(), 200);
    // Same seed, same output.
    run_step(
        "generate",
        json!({"conversations": 200, "seed": 3}),
        &d("filter"),
        &schema,
        &d("generate2"),
        &d("responses"),
    )
    .unwrap();
    assert_eq!(read(&d("generate2")), generated);

    let s = run_step(
        "validate",
        json!({}),
        &d("generate"),
        &schema,
        &d("validate"),
        &d("responses"),
    )
    .unwrap();
    assert_eq!(s["rejected_schema"], 0);
    assert_eq!(s["input"], 200);
    let accepted = s["accepted"].as_u64().unwrap();
    assert!(accepted >= 190, "{s:?}");
    let rejected = std::fs::read_to_string(d("validate").join("rejected.jsonl")).unwrap();
    assert_eq!(rejected.lines().count() as u64, 200 - accepted);
    assert_eq!(s["accepted_per_topic"].as_object().unwrap().len(), 4);
}

#[test]
fn parameters_are_checked() {
    let g = steps::find("generate").unwrap();
    assert!(
        g.canonical_params(&json!({"teacher": "http"}))
            .unwrap_err()
            .path
            == "http"
    );
    assert!(g.canonical_params(&json!({"conversations": 0})).is_err());
    assert!(g.canonical_params(&json!({"bogus": 1})).is_err());
    let p = g.canonical_params(&json!({"teacher": "http", "http": {"base_url": "http://x/v1", "model": "m", "api_key_env": "KEY"}})).unwrap();
    assert_eq!(p["http"]["concurrency"], 16);
    assert_eq!(g.resource(&p, 4), steps::Resource::Http);
    assert!(steps::find("filter")
        .unwrap()
        .canonical_params(&json!({"threshold": 2.0}))
        .is_err());
    let v = steps::find("validate")
        .unwrap()
        .canonical_params(&json!({}))
        .unwrap();
    assert_eq!(v["max_chars"], 20000);
}
