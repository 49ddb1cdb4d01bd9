//! Traces the run goes on despite are said, not passed over: a call to a function the tools do
//! not define is a warning naming file and line (and a count in `tracelab inspect`), and traces
//! `on_bad_trace = "skip"` leaves out are listed in the run's output.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::common::{small_conversation, small_tools, write_jsonl_project};

const EXPERIMENT: &str = r#"name = "t"
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"
on_bad_trace = "skip"

[split]
test_conversations = 2

[pipelines.direct]
steps = ["filter"]
"#;

/// Ten conversations; line 4 calls `FindPizza`, line 6 is not JSON.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (0..10)
        .map(|i| {
            let f = if i == 3 {
                "FindPizza"
            } else {
                "FindRestaurants"
            };
            small_conversation(i, f).to_string()
        })
        .collect();
    lines[5] = "{not json".into();
    write_jsonl_project(dir.path(), &[], &small_tools(), "e.toml", EXPERIMENT);
    std::fs::write(
        dir.path().join("data/traces.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();
    dir
}

fn tracelab(root: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tracelab {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_run_says_what_it_went_on_despite() {
    let p = project();
    let out = tracelab(p.path(), &["run", "experiments/e.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    for w in [
        "warning data/split: data/traces.jsonl:4: trace \"traces.jsonl:4\" calls FindPizza, \
         which the tools do not define",
        "warning data/ingest: skipped an unreadable trace: ",
        "traces.jsonl:6: bad JSON",
    ] {
        assert!(
            err.contains(w),
            "run output should contain {w:?}, got:\n{err}"
        );
    }

    let out = tracelab(
        p.path(),
        &["inspect", "experiments/e.toml", "--step", "data/split"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "unknown_function_calls: 1",
        r#"unknown_functions: {"FindPizza":1}"#,
    ] {
        assert!(text.contains(w), "inspect should show {w:?}, got:\n{text}");
    }
}

#[test]
fn json_output_carries_the_warnings_as_events() {
    let p = project();
    let out = tracelab(p.path(), &["--json", "run", "experiments/e.toml"]);
    let warnings: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "step_warning")
        .map(|e| {
            (
                e["label"].as_str().unwrap().into(),
                e["message"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings
        .iter()
        .any(|(l, m)| l == "data/split" && m.starts_with("data/traces.jsonl:4: ")));
    assert!(warnings
        .iter()
        .any(|(l, m)| l == "data/ingest" && m.contains("traces.jsonl:6: bad JSON")));
}
