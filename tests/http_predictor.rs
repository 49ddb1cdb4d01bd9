//! `predict` with `model = "http"` through the real binary: a pipeline of only `predict` and
//! `judge` scores an OpenAI-compatible endpoint (the in-process mock server) as a row of the
//! table; a rerun sends no request; an answer with no readable call is judged, not fatal.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use serde_json::{json, Value};
use tracelab::llm_mock::{MockRequest, MockServer, Reply};

use crate::common;
use crate::common::{small_conversation, small_tools, write_jsonl_project};

/// Answers like a perfect model of [`small_conversation`]: a search for the city the user named,
/// then "Nothing found." after the empty result; its first answer is a broken `<tool_call>`.
fn oracle(r: &MockRequest) -> Reply {
    let messages = r.body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    if r.ordinal == 0 {
        return Reply::Content("<tool_call>{\"name\": \"FindRestaurants\", ".into());
    }
    if last["role"] == "tool" {
        return Reply::Content("Nothing found.".into());
    }
    let text = last["content"].as_str().unwrap_or("");
    let city = text
        .trim_end_matches('?')
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .to_string();
    Reply::Message(json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "FindRestaurants",
         "arguments": json!({"cuisine": "Italian", "city": format!("c{city}")}).to_string()}}]}))
}

fn experiment(base_url: &str) -> String {
    format!(
        r#"name = "h"
seeds = [1]
scenarios = ["clean", "low"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 6

[pipelines.endpoint]
steps = ["predict", "judge"]

[predict]
model = "http"

[predict.http]
base_url = "{base_url}"
model = "mock-model"
backoff_s = 0.01
"#
    )
}

/// 20 conversations, the experiment, and a `low` scenario keeping 5 traces.
fn write_project(root: &Path, experiment: &str) {
    let traces: Vec<Value> = (0..20)
        .map(|i| small_conversation(i, "FindRestaurants"))
        .collect();
    write_jsonl_project(root, &traces, &small_tools(), "h.toml", experiment);
    std::fs::write(
        root.join("scenarios/low.toml"),
        "[[operators]]\nop = \"subsample\"\ncount = 5\n",
    )
    .unwrap();
}

fn run(root: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(["run", "experiments/h.toml", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn an_endpoint_is_a_row_of_the_table_and_a_rerun_sends_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(MockServer::start(0, Arc::new(oracle))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_project(root, &experiment(&server.base_url()));

    // A plan needs no trained model: the pipeline has no train step.
    let plan = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(["plan", "experiments/h.toml"])
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );

    run(root, &[]);
    let sent = server.total();
    // 6 test conversations with 2 assistant turns each.
    assert_eq!(sent, 12, "{}", server.stats_json());
    assert_eq!(server.repeats(), 0);

    let predictions = common::files_under(&root.join("cache"))
        .into_iter()
        .find(|p| p.ends_with("predictions.jsonl"))
        .expect("a predictions file in the cache");
    let rows: Vec<Value> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 12);
    let broken: Vec<&Value> = rows.iter().filter(|r| r["prediction"].is_null()).collect();
    let good = rows
        .iter()
        .filter(|r| r["prediction"] == r["answer"])
        .count();
    assert_eq!((good, broken.len()), (11, 1), "{rows:#?}");
    assert!(broken[0]["error"].as_str().unwrap().contains("not JSON"));

    let table = std::fs::read_to_string(root.join("results/h/table.csv")).unwrap();
    // The unreadable answer is judged bad: the endpoint's score is 11 of 12, in every scenario
    // (the pairs do not depend on it, so both share one predict step).
    assert!(table.starts_with("scenario,endpoint,"), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for row in rows {
        assert_eq!(row[1], format!("{:.3}", 11.0 / 12.0), "{table}");
    }

    // The step is cached: nothing is sent. Forced, it asks the response cache, not the server.
    run(root, &[]);
    run(root, &["--force", "*predict*"]);
    assert_eq!(server.total(), sent, "{}", server.stats_json());
}

#[test]
fn an_http_predictor_without_its_table_is_a_load_time_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let full = experiment("http://127.0.0.1:9/v1");
    write_project(root, &full[..full.find("[predict.http]").unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(["plan", "experiments/h.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("predict.http"), "{err}");
}
