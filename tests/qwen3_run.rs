//! `tracelab run` with `family = "qwen3"`: the real binary runs tokenizer → train → predict →
//! judge → report on a tiny random Qwen3 checkpoint (built with transformers by the student
//! crate's `qwen3_reference.py setup`, nothing downloaded), the checkpoint's files are part of the
//! train step's key (touching one reruns train and what follows, nothing else), a second run
//! does nothing, and `tracelab serve` answers with a schema-valid call from the student. Skips with a message when python with transformers, peft, safetensors and
//! tokenizers is missing (`TRACELAB_PYTHON`, else the project's `.venv`, else `python3`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::common;
#[path = "../crates/student/tests/common/python.rs"]
mod python;

use crate::common::{assistant_call, write_jsonl_project};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const CITIES: [&str; 4] = ["Fremont", "Oakland", "Napa", "Dublin"];

fn conversation(i: usize) -> Value {
    let city = CITIES[i % CITIES.len()];
    let call = assistant_call;
    let record = json!({"restaurant_name": format!("Cafe {i}"), "city": city});
    json!({"messages": [
        {"role": "user", "content": format!("Find me food in {city}.")},
        call("c0", "FindRestaurants", json!({"city": city})),
        {"role": "tool", "tool_call_id": "c0", "content": json!([record]).to_string()},
        call("c1", "respond_to_user", json!({"message": format!("How about Cafe {i}?")})),
        {"role": "user", "content": "Thanks, that's all."},
        call("c2", "respond_to_user", json!({"message": "Enjoy!"})),
    ]})
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "FindRestaurants", "description": "Find restaurants",
          "x-kind": "search", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "respond_to_user", "description": "Reply",
          "x-kind": "respond", "parameters": {"type": "object",
            "properties": {"message": {"type": "string"}}, "required": ["message"]}}}
    ])
}

const EXPERIMENT: &str = r#"name = "q"
seeds = [1]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 2

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]

[tokenizer]
model_dir = "ckpt/model"

[train]
family = "qwen3"
model_dir = "ckpt/model"
device = "cpu"
lr = 1e-3
epochs = 1
context = 1024
batch_tokens = 2048

[train.lora]
rank = 4
alpha = 8

[predict]              # the fixture's 400-token BPE spells a whole call in ~60 tokens
device = "cpu"
max_new_tokens = 128
max_value_tokens = 12
"#;

/// Labels of the steps a run executed (from its JSON events).
fn run(root: &Path) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(["run", "experiments/q.toml", "--json"])
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tracelab run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "step_finished")
        .map(|e| e["label"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn qwen3_cell_runs_end_to_end_and_its_checkpoint_is_in_the_key() {
    let Some(py) = python::python(&repo_root()) else {
        eprintln!(
            "SKIP: no python with transformers, peft, safetensors and tokenizers \
             (run scripts/setup.sh, or set TRACELAB_PYTHON)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    python::reference(&repo_root(), &py, "setup", &root.join("ckpt"));
    // The fixture's small BPE spells the tool header in many tokens: give the (rotary) model
    // room beyond its 256 positions; no weight depends on this setting.
    let cfg_path = root.join("ckpt/model/config.json");
    let set_positions = |n: u64| {
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        cfg["max_position_embeddings"] = json!(n);
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    };
    set_positions(2048);
    let traces: Vec<Value> = (0..12).map(conversation).collect();
    write_jsonl_project(root, &traces, &tools(), "q.toml", EXPERIMENT);

    let first = run(root);
    for step in ["tokenizer", "train", "predict", "judge"] {
        let label = format!("clean/direct/s1/{step}");
        assert!(first.contains(&label), "{label} ran: {first:?}");
    }
    let table = std::fs::read_to_string(root.join("results/q/table.md")).unwrap();
    assert!(table.contains("clean"), "{table}");
    // The merged student is a Hugging Face checkpoint with its sidecar.
    let merged = common::files_under(&root.join("cache"))
        .into_iter()
        .filter(|p| p.ends_with("model/tracelab_student.json"))
        .count();
    assert_eq!(merged, 1, "one trained qwen3 student in the cache");
    // Every prediction is a finished call (a budget too small for the fixture's BPE left them
    // all empty before).
    for p in common::files_under(&root.join("cache")) {
        if p.ends_with("out/predictions.jsonl") {
            for l in std::fs::read_to_string(&p).unwrap().lines() {
                let row: Value = serde_json::from_str(l).unwrap();
                assert_ne!(row["prediction"]["name"], "", "{row}");
            }
        }
    }

    assert!(run(root).is_empty(), "a second run does nothing");

    // Served over the OpenAI API, the qwen3 student answers with a schema-valid call.
    {
        let exe = PathBuf::from(env!("CARGO_BIN_EXE_tracelab"));
        let (_server, url) = common::serve(
            &exe,
            root,
            &["experiments/q.toml", "--cell", "clean/direct/s1"],
        );
        let body = json!({"model": "student", "tool_choice": "required",
            "messages": [{"role": "user", "content": "Find me food in Napa."}],
            "tools": [tools()[0].clone()]});
        let (status, answer) = common::post(&url, &body.to_string());
        assert_eq!(status, 200, "{answer}");
        let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "FindRestaurants", "{answer}");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert!(args["city"].is_string(), "{answer}");
    }

    // The checkpoint is part of the key: changing its config reruns train and what follows.
    set_positions(4096);
    let again = run(root);
    assert!(
        again.contains(&"clean/direct/s1/train".to_string()),
        "{again:?}"
    );
    assert!(
        !again.contains(&"clean/direct/s1/tokenizer".to_string()),
        "the tokenizer file did not change: {again:?}"
    );
}
