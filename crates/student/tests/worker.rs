//! The worker contract end to end: job files in, JSON progress and stats lines out, artifacts
//! written, failures reported on stderr with a non-zero status.

use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::run_worker as run;

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

#[test]
fn tokenizer_train_predict_through_job_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    let c = conversation(1);
    let pair = json!({"id": "t1#0", "question": [c["messages"][0]],
        "answer": {"name": "FindRestaurants", "arguments": {"cuisine": "Mexican", "city": "Oakland"}}});
    write(&d.join("pairs.jsonl"), &pair.to_string());
    let p = |k: &str| d.join(k).display().to_string();

    let (ok, lines, err) = run(
        d,
        json!({"task": "tokenizer", "params": {"vocab_size": 300, "min_frequency": 2, "path": null},
            "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json")},
            "output": p("tokenizer.json"), "threads": 1}),
    );
    assert!(ok, "{err}");
    assert!(
        lines.last().unwrap()["stats"]["vocab_size"]
            .as_u64()
            .unwrap()
            >= 256
    );

    let params = json!({"layers": 1, "width": 32, "heads": 2, "context": 96, "epochs": 2,
        "batch_tokens": 512, "warmup_steps": 1, "device": "cpu"});
    let params = tracelab::steps::find("train")
        .unwrap()
        .canonical_params(&params)
        .unwrap();
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

    let predict = tracelab::steps::find("predict")
        .unwrap()
        .canonical_params(&json!({"device": "cpu"}))
        .unwrap();
    let (ok, _, err) = run(
        d,
        json!({"task": "predict", "params": predict,
            "inputs": {"model": p("model"), "tokenizer": p("tokenizer.json"),
                       "pairs": p("pairs.jsonl"), "tools": p("tools.json")},
            "output": p("predictions.jsonl"), "threads": 1}),
    );
    assert!(ok, "{err}");
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
