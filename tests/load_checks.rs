//! Parameters that used to fail only when their step ran (after minutes of upstream work) are
//! errors when the experiment is loaded: `tracelab plan` names the file, line and key.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::{small_conversation, small_tools, write_jsonl_project};

/// A valid experiment over 10 conversations; tests append or replace parts.
const BASE: &str = r#"name = "t"
seeds = [1]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 3

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]
"#;

/// Writes the project with `experiment` as `experiments/e.toml` and runs `tracelab plan`.
fn plan(experiment: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let traces: Vec<Value> = (0..10)
        .map(|i| small_conversation(i, "FindRestaurants"))
        .collect();
    write_jsonl_project(dir.path(), &traces, &small_tools(), "e.toml", experiment);
    plan_in(dir.path())
}

fn plan_in(root: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(["plan", "experiments/e.toml"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 1-based number of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the experiment"))
        + 1
}

/// `plan` fails with an error at `e.toml:<line of needle>:`, naming `key` and saying `what`.
fn expect_error(experiment: &str, needle: &str, key: &str, what: &str) {
    let (ok, err) = plan(experiment);
    assert!(!ok, "plan should fail for:\n{experiment}");
    let at = format!("e.toml:{}:", line_of(experiment, needle));
    for w in [at.as_str(), &format!("key `{key}`"), what] {
        assert!(err.contains(w), "error should contain {w:?}, got:\n{err}");
    }
}

#[test]
fn the_base_experiment_plans() {
    let (ok, err) = plan(BASE);
    assert!(ok, "{err}");
}

#[test]
fn width_that_the_heads_do_not_divide() {
    let text = format!("{BASE}\n[train]\nwidth = 33\nheads = 2\n");
    expect_error(
        &text,
        "heads = 2",
        "train.heads",
        "width 33 must split into 2 heads",
    );
}

#[test]
fn more_test_conversations_than_the_data_has() {
    let text = BASE.replace("test_conversations = 3", "test_conversations = 100000");
    expect_error(
        &text,
        "test_conversations = 100000",
        "split.test_conversations",
        "has at most 10",
    );
}

#[test]
fn a_dev_split_that_leaves_nothing_to_train_on() {
    let text = BASE.replace(
        "test_conversations = 3",
        "test_conversations = 3\ndev_conversations = 7",
    );
    expect_error(
        &text,
        "dev_conversations = 7",
        "split.dev_conversations",
        "holding out 3 test and 7 dev conversations leaves none to train on",
    );
}

#[test]
fn judge_base_url_that_is_not_http() {
    let text = format!(
        "{BASE}\n[judge]\njudge = \"llm\"\n\n[judge.llm]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n"
    );
    expect_error(
        &text,
        "ftp://x",
        "judge.llm.base_url",
        "must start with http:// or https://",
    );
}

#[test]
fn teacher_base_url_that_is_not_http() {
    let text = BASE.replace(
        "steps = [\"tokenizer\"",
        "steps = [\"filter\", \"generate\", \"tokenizer\"",
    ) + "\n[generate]\nteacher = \"http\"\n\n[generate.http]\nbase_url = \"ftp://x\"\nmodel = \"m\"\n";
    expect_error(
        &text,
        "ftp://x",
        "generate.http.base_url",
        "must start with http:// or https://",
    );
}

#[test]
fn vocabulary_of_zero() {
    let text = format!("{BASE}\n[tokenizer]\nvocab_size = 0\n");
    expect_error(
        &text,
        "vocab_size = 0",
        "tokenizer.vocab_size",
        "must be at least 266",
    );
}

#[test]
fn pipeline_without_steps() {
    let text = format!("{BASE}\n[pipelines.empty]\nsteps = []\n");
    expect_error(
        &text,
        "steps = []",
        "pipelines.empty.steps",
        "pipeline \"empty\" has no steps",
    );
}

#[test]
fn unknown_sgd_service() {
    let text = r#"name = "t"
scenarios = ["clean"]

[data]
format = "sgd"
path = "data/sgd"
service = "Pizza_1"
task = "data/task.md"

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]
"#;
    let dir = tempfile::tempdir().unwrap();
    write_jsonl_project(dir.path(), &[], &small_tools(), "e.toml", text);
    let train = dir.path().join("data/sgd/train");
    std::fs::create_dir_all(&train).unwrap();
    let schema = json!([{"service_name": "Restaurants_1", "slots": [], "intents": []}]);
    std::fs::write(train.join("schema.json"), schema.to_string()).unwrap();
    std::fs::write(train.join("dialogues_001.json"), "[]").unwrap();
    let (ok, err) = plan_in(dir.path());
    assert!(!ok, "plan should fail");
    let at = format!("e.toml:{}:", line_of(text, "Pizza_1"));
    for w in [
        at.as_str(),
        "key `data.service`",
        "lists service \"Pizza_1\"; known: Restaurants_1",
    ] {
        assert!(err.contains(w), "error should contain {w:?}, got:\n{err}");
    }
    assert!(!err.contains("sgd:1:"), "no made-up line in:\n{err}");
    assert_eq!(err.matches("data/ingest").count(), 0, "{err}");
}

/// Writes the project with `scenario` as `scenarios/s.toml`, used by the experiment, and a
/// `sister` and a `foreign` pool of `roles` conversations each; runs `tracelab <command>`.
fn with_scenario(command: &str, scenario: &str, roles: usize) -> (tempfile::TempDir, bool, String) {
    let text = BASE.replace("scenarios = [\"clean\"]", "scenarios = [\"clean\", \"s\"]")
        + "\n[data.roles.sister]\npath = \"data/sister.jsonl\"\n\n[data.roles.foreign]\npath = \"data/foreign.jsonl\"\n";
    let dir = tempfile::tempdir().unwrap();
    let traces: Vec<Value> = (0..10)
        .map(|i| small_conversation(i, "FindRestaurants"))
        .collect();
    write_jsonl_project(dir.path(), &traces, &small_tools(), "e.toml", &text);
    let pool: Vec<String> = (0..roles)
        .map(|i| small_conversation(100 + i, "FindRestaurants").to_string())
        .collect();
    for role in ["sister", "foreign"] {
        std::fs::write(
            dir.path().join(format!("data/{role}.jsonl")),
            pool.join("\n") + "\n",
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("scenarios/s.toml"), scenario).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(dir.path())
        .args([command, "experiments/e.toml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (dir, out.status.success(), err)
}

/// `plan` fails at `scenarios/s.toml:<line of needle>:`, naming `key` and saying `what`.
fn expect_scenario_error(scenario: &str, needle: &str, key: &str, what: &str) {
    let (_dir, ok, err) = with_scenario("plan", scenario, 4);
    assert!(!ok, "plan should fail for:\n{scenario}");
    let at = format!("scenarios/s.toml:{}:", line_of(scenario, needle));
    for w in [at.as_str(), &format!("key `{key}`"), what] {
        assert!(err.contains(w), "error should contain {w:?}, got:\n{err}");
    }
}

#[test]
fn subsample_of_more_traces_than_the_training_pool_has() {
    let scenario = "[[operators]]\nop = \"subsample\"\ncount = 500\n";
    expect_scenario_error(
        scenario,
        "count = 500",
        "operators[0].count",
        "subsample: 500 traces asked for, the working set has 7 (counted when the experiment \
         is loaded: the training pool holds at most 7 traces)",
    );
    // `run` stops there too, before any step: nothing in the cache.
    let (dir, ok, err) = with_scenario("run", scenario, 4);
    assert!(!ok && err.contains("500 traces asked for"), "{err}");
    let entries = std::fs::read_dir(dir.path().join("cache"))
        .map(|d| d.flatten().filter(|e| e.file_name().len() == 64).count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "no step ran");
}

#[test]
fn more_role_traces_than_the_role_pool_has() {
    expect_scenario_error(
        "[[operators]]\nop = \"add_role\"\nrole = \"sister\"\ncount = 9\n",
        "count = 9",
        "operators[0].count",
        "add_role: 9 traces of \"sister\" asked for, the pool has 4",
    );
}

#[test]
fn a_foreign_share_that_cannot_be_met() {
    // 5% of foreign traces next to at most 7 target traces: not even one foreign trace.
    expect_scenario_error(
        "[[operators]]\nop = \"mix\"\nforeign_share = 0.05\n",
        "foreign_share = 0.05",
        "operators[0].foreign_share",
        "mix: a foreign share of 0.05 cannot be met with 4 foreign traces and a working set of 7",
    );
}

#[test]
fn schema_drift_on_a_training_pool_smaller_than_the_sister_pool_plans() {
    let drift = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/schema-drift.toml"),
    )
    .unwrap();
    // 7 training traces, 12 sister traces: equal halves of 7, no error.
    let (_dir, ok, err) = with_scenario("plan", &drift, 12);
    assert!(ok, "{err}");
}
