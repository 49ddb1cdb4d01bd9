//! The worker contract end to end: job files in, JSON progress and stats lines out, artifacts
//! written, failures reported on stderr with a non-zero status.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::run_worker as run;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn conversation(i: usize) -> Value {
    let city = ["Fremont", "Oakland", "Napa", "Dublin"][i % 4];
    let call = |name: &str, args: Value| {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{i}"),
            "type": "function", "function": {"name": name, "arguments": args.to_string()}}]})
    };
    json!({"id": format!("t{i}"), "messages": [
        {"role": "user", "content": format!("Mexican food in {city} at 7 pm please.")},
        call("FindRestaurants", json!({"cuisine": "Mexican", "city": city})),
        {"role": "tool", "tool_call_id": format!("c{i}"), "content": "[{\"restaurant_name\": \"Taqueria\"}]"},
        call("respond_to_user", json!({"message": "How about Taqueria?"})),
    ]})
}

/// Writes `traces.jsonl`, `tools.json` and `task.md` into `d`.
fn write_inputs(d: &Path) {
    let traces: Vec<String> = (0..12).map(|i| conversation(i).to_string()).collect();
    write(&d.join("traces.jsonl"), &traces.join("\n"));
    write(
        &d.join("tools.json"),
        &json!([{"type": "function", "function": {"name": "FindRestaurants", "parameters": {
            "type": "object", "properties": {"cuisine": {"type": "string"}, "city": {"type": "string"}},
            "required": ["cuisine", "city"]}}}])
        .to_string(),
    );
    write(
        &d.join("task.md"),
        "+++\nreference_date = \"2019-03-01\"\n+++\nToy.\n",
    );
}

/// A tokenizer job's JSON for the inputs of [`write_inputs`], writing `d/tokenizer.json`.
fn tokenizer_job(d: &Path) -> Value {
    let p = |k: &str| d.join(k).display().to_string();
    json!({"task": "tokenizer", "params": {"vocab_size": 300, "min_frequency": 2, "path": null},
        "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json")},
        "output": p("tokenizer.json"), "threads": 1})
}

#[test]
fn tokenizer_train_predict_through_job_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    let c = conversation(1);
    let pair = json!({"id": "t1#0", "question": [c["messages"][0]],
        "answer": {"name": "FindRestaurants", "arguments": {"cuisine": "Mexican", "city": "Oakland"}}});
    write(&d.join("pairs.jsonl"), &pair.to_string());
    let p = |k: &str| d.join(k).display().to_string();

    let (ok, lines, err) = run(d, tokenizer_job(d));
    assert!(ok, "{err}");
    assert!(
        lines.last().unwrap()["stats"]["vocab_size"]
            .as_u64()
            .unwrap()
            >= 256
    );

    let params = json!({"layers": 1, "width": 32, "heads": 2, "context": 96, "epochs": 2,
        "batch_tokens": 512, "warmup_steps": 1, "device": "cpu"});
    let params = tracelab_core::job::TrainParams::canonical(&params).unwrap();
    let (ok, lines, err) = run(
        d,
        json!({"task": "train", "params": params,
            "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json"),
                       "tokenizer": p("tokenizer.json"), "task": p("task.md")},
            "output": p("model"), "threads": 1}),
    );
    assert!(ok, "{err}");
    let progress: Vec<&Value> = lines.iter().filter(|l| l.get("done").is_some()).collect();
    assert!(!progress.is_empty(), "progress lines are reported");
    assert!(progress[0]["message"].as_str().unwrap().contains("tok/s"));
    let stats = &lines.last().unwrap()["stats"];
    assert!(stats["parameters"].as_u64().unwrap() > 0);
    assert!(d.join("model/model.safetensors").is_file());
    assert!(d.join("model/config.json").is_file());

    let predict = tracelab_core::job::canonicalize::<tracelab_core::job::PredictParams>(
        &json!({"device": "cpu"}),
    )
    .unwrap();
    let (ok, _, err) = run(
        d,
        json!({"task": "predict", "params": predict,
            "inputs": {"model": p("model"), "tokenizer": p("tokenizer.json"),
                       "pairs": p("pairs.jsonl"), "tools": p("tools.json"),
                       "traces": p("traces.jsonl")},
            "output": p("predictions.jsonl"), "threads": 1}),
    );
    assert!(ok, "{err}");
    // The value rules are learned at predict time from the training conversations, written
    // beside the predictions and summarized in the stats; the model holds none.
    let rules: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("rules.json")).unwrap()).unwrap();
    assert!(
        rules["span_params"]["FindRestaurants"].is_object(),
        "{rules}"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("model/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["span_params"], json!({}), "{config}");
    let rows: Vec<Value> = std::fs::read_to_string(d.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    for key in ["id", "question", "answer", "prediction"] {
        assert!(rows[0].get(key).is_some(), "row lacks {key}");
    }
    assert!(rows[0]["prediction"]["name"].is_string());

    // A broken input fails with the file named on stderr.
    write(&d.join("bad.jsonl"), "{\"id\": \"x\", \"messages\": 3}\n");
    let (ok, _, err) = run(
        d,
        json!({"task": "train", "params": params,
            "inputs": {"traces": p("bad.jsonl"), "tools": p("tools.json"),
                       "tokenizer": p("tokenizer.json")},
            "output": p("model2"), "threads": 1}),
    );
    assert!(!ok);
    assert!(err.contains("bad.jsonl:1"), "{err}");
}

/// The orchestrator gone (its end of the progress pipe closed): the worker's next progress line
/// fails with EPIPE, and it stops there with a non-zero status instead of training to the end.
#[test]
fn a_worker_whose_stdout_is_closed_stops_at_its_next_progress_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_inputs(d);
    let (ok, _, err) = run(d, tokenizer_job(d));
    assert!(ok, "{err}");
    // About 40 progress lines over the run: the first comes after a fortieth of it.
    let params = json!({"layers": 1, "width": 32, "heads": 2, "context": 96, "epochs": 40,
        "batch_tokens": 512, "device": "cpu"});
    let params = tracelab_core::job::TrainParams::canonical(&params).unwrap();
    let p = |k: &str| d.join(k).display().to_string();
    let job = json!({"task": "train", "params": params,
        "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json"),
                   "tokenizer": p("tokenizer.json"), "task": p("task.md")},
        "output": p("model"), "threads": 1});
    write(&d.join("train.job.json"), &job.to_string());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracelab-student"))
        .arg(d.join("train.job.json"))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the read end: every write of the worker now fails
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker trained on for 30 s with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "a worker that cannot report must fail");
    assert!(err.contains("stdout"), "{err}");
    assert!(
        !d.join("model/model.safetensors").exists(),
        "no model saved"
    );
}
