//! The `qwen3` family through the real worker binary, on the CPU: a tiny random Qwen3 checkpoint
//! (built with transformers by `qwen3_reference.py setup`, nothing downloaded), a few
//! conversations and tools; the tokenizer, train and predict jobs run as the orchestrator runs
//! them. Checks: the checkpoint's tokenizer is adopted unchanged, training lowers the loss,
//! every prediction is a call the schemas accept, the merged checkpoint loads in transformers
//! and the saved adapter in PEFT with the worker's logits. Skips with a message when python with
//! transformers, peft, safetensors and tokenizers is missing (`TRACELAB_PYTHON`, else the
//! project's `.venv`, else `python3`).

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_student::hf;
use tracelab_student::qwen3::Qwen3;
use tracelab_student::qwen3_student;

use crate::common::python::{python, reference};
use crate::common::{repo_root, run_worker as run};

const CITIES: [&str; 4] = ["Fremont", "Oakland", "Napa", "Dublin"];

fn call(i: usize, name: &str, args: Value) -> Value {
    json!({"role": "assistant", "content": null, "tool_calls": [{"id": format!("c{i}"),
        "type": "function", "function": {"name": name, "arguments": args.to_string()}}]})
}

fn conversation(i: usize) -> Value {
    let city = CITIES[i % 4];
    let cuisine = ["Mexican", "Italian"][i % 2];
    json!({"id": format!("t{i}"), "messages": [
        {"role": "user", "content": format!("{cuisine} food in {city} please.")},
        call(i, "FindRestaurants", json!({"cuisine": cuisine, "city": city})),
        {"role": "tool", "tool_call_id": format!("c{i}"), "content": "[{\"restaurant_name\": \"Il Fornaio\"}]"},
        call(i, "respond_to_user", json!({"message": "How about Il Fornaio?"})),
    ]})
}

fn train_params(save: &str) -> Value {
    let raw = json!({"family": "qwen3", "model_dir": "model", "device": "cpu", "epochs": 6,
        "lr": 0.01, "warmup_steps": 1, "batch_tokens": 2048, "context": 1024, "save": save,
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}});
    tracelab_core::job::TrainParams::canonical(&raw).unwrap()
}

#[test]
fn qwen3_student_trains_predicts_and_saves_loadable_checkpoints() {
    let Some(py) = python(&repo_root()) else {
        eprintln!(
            "SKIPPED qwen3 worker test: no python with transformers, peft, safetensors and \
             tokenizers (run scripts/setup.sh, or set TRACELAB_PYTHON)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    reference(&repo_root(), &py, "setup", d);
    let base = d.join("model");
    // The fixture's 400-token BPE spells the tool header in many tokens: give the (rotary)
    // model room beyond its 256 positions; no weight depends on this setting.
    let config_path = base.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(2048);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let traces: Vec<String> = (0..8).map(|i| conversation(i).to_string()).collect();
    std::fs::write(d.join("traces.jsonl"), traces.join("\n")).unwrap();
    let tools_json = json!([{"type": "function", "function": {"name": "FindRestaurants",
        "description": "Find restaurants", "parameters": {"type": "object", "properties": {
            "cuisine": {"type": "string", "enum": ["Mexican", "Italian"]},
            "city": {"type": "string"}, "party_size": {"type": "integer"}},
        "required": ["cuisine", "city"]}}}]);
    std::fs::write(d.join("tools.json"), tools_json.to_string()).unwrap();
    let mut pairs = Vec::new();
    for i in 0..4 {
        let c = conversation(i + 8);
        let m = &c["messages"];
        let (cuisine, city) = (["Mexican", "Italian"][i % 2], CITIES[i % 4]);
        pairs.push(json!({"id": format!("t{}#0", i + 8), "question": [m[0]],
            "answer": {"name": "FindRestaurants", "arguments": {"cuisine": cuisine, "city": city}}}));
        pairs.push(json!({"id": format!("t{}#1", i + 8), "question": [m[0], m[1], m[2]],
            "answer": {"name": "respond_to_user", "arguments": {"message": "How about Il Fornaio?"}}}));
    }
    let pair_lines: Vec<String> = pairs.iter().map(Value::to_string).collect();
    std::fs::write(d.join("pairs.jsonl"), pair_lines.join("\n")).unwrap();
    let p = |k: &str| d.join(k).display().to_string();

    // Tokenizer: the checkpoint's file, byte for byte.
    let (ok, lines, err) = run(
        d,
        json!({"task": "tokenizer", "params": {"vocab_size": 2048, "min_frequency": 2, "path": null, "model_dir": "model"},
            "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json"),
                       "checkpoint_tokenizer": base.join("tokenizer.json")},
            "output": p("tokenizer.json"), "threads": 1}),
    );
    assert!(ok, "{err}");
    assert_eq!(lines.last().unwrap()["stats"]["source"], "checkpoint");
    assert_eq!(
        std::fs::read(d.join("tokenizer.json")).unwrap(),
        std::fs::read(base.join("tokenizer.json")).unwrap()
    );

    // Train, merged.
    let train = |save: &str, out: &str| {
        run(
            d,
            json!({"task": "train", "params": train_params(save),
                "inputs": {"traces": p("traces.jsonl"), "tools": p("tools.json"),
                           "tokenizer": p("tokenizer.json"), "base_model": base},
                "output": p(out), "threads": 1}),
        )
    };
    let (ok, lines, err) = train("merged", "merged");
    assert!(ok, "{err}");
    let progress: Vec<&Value> = lines.iter().filter(|l| l.get("done").is_some()).collect();
    assert!(progress[0]["message"].as_str().unwrap().contains("tok/s"));
    let stats = &lines.last().unwrap()["stats"];
    let curve = stats["loss_curve"].as_array().unwrap();
    let (first, last) = (
        curve[0]["loss"].as_f64().unwrap(),
        curve.last().unwrap()["loss"].as_f64().unwrap(),
    );
    println!(
        "training loss {first:.3} -> {last:.3} over {} steps",
        stats["steps"]
    );
    assert!(curve.len() >= 5, "a handful of steps: {stats}");
    assert!(last < first * 0.7, "loss falls: {first} -> {last}");
    assert_eq!(stats["conversations"], 8);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        qwen3_student::SIDECAR,
    ] {
        assert!(d.join("merged").join(f).is_file(), "merged model lacks {f}");
    }

    // Predict: every call valid against the schemas, in the tiny family's row format.
    let predict = |model: &str, out: &str| {
        let params = tracelab_core::job::canonicalize::<tracelab_core::job::PredictParams>(
            &json!({"device": "cpu", "batch_size": 3}),
        )
        .unwrap();
        let (ok, lines, err) = run(
            d,
            json!({"task": "predict", "params": params,
                "inputs": {"model": p(model), "tokenizer": p("tokenizer.json"),
                           "pairs": p("pairs.jsonl"), "tools": p("tools.json")},
                "output": p(out), "threads": 1}),
        );
        assert!(ok, "{err}");
        assert_eq!(lines.last().unwrap()["stats"]["unfinished_calls"], 0);
        std::fs::read_to_string(d.join(out))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<Value>>()
    };
    let rows = predict("merged", "predictions.jsonl");
    assert_eq!(rows.len(), pairs.len());
    let tools = ToolSet::load(&d.join("tools.json"), DEFAULT_RESPOND, &[]).unwrap();
    let validator = tools.validator();
    let mut right = 0;
    for row in &rows {
        for key in ["id", "question", "answer", "prediction"] {
            assert!(row.get(key).is_some(), "row lacks {key}");
        }
        let call = tracelab_core::conversation::ToolCall::new(
            row["prediction"]["name"].as_str().unwrap(),
            row["prediction"]["arguments"].as_object().unwrap().clone(),
        );
        validator
            .check(&call)
            .unwrap_or_else(|e| panic!("invalid prediction {}: {e}", row["prediction"]));
        right += usize::from(row["prediction"]["name"] == row["answer"]["name"]);
    }
    println!(
        "predictions: {right}/{} with the right function",
        rows.len()
    );

    // Train again saving the adapter: PEFT layout plus tokenizer files; predictions equal.
    let (ok, _, err) = train("adapter", "adapter");
    assert!(ok, "{err}");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(d.join("adapter").join(f).is_file(), "adapter lacks {f}");
    }
    let adapter_rows = predict("adapter", "predictions_adapter.jsonl");
    let calls = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["prediction"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        calls(&adapter_rows),
        calls(&rows),
        "adapter and merged models predict alike"
    );

    // transformers loads the merged checkpoint, PEFT the adapter: same logits as the worker's.
    std::fs::rename(d.join("adapter"), d.join("rust_adapter")).unwrap();
    reference(&repo_root(), &py, "verify", d);
    let verify: std::collections::BTreeMap<String, Tensor> =
        hf::read_safetensors(&d.join("verify.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let reference_ids: std::collections::BTreeMap<String, Tensor> =
        hf::read_safetensors(&d.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let ids = &reference_ids["input_ids"];
    let merged = Qwen3::load(&d.join("merged"), Device::Cpu, Kind::Float).unwrap();
    let ours = tch::no_grad(|| merged.forward(ids));
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    let dm = diff(&ours, &verify["merged_logits"]);
    println!("merged checkpoint: max |worker - transformers| = {dm:.2e}");
    assert!(dm < 1e-4, "merged logits differ by {dm}");
    let sidecar = qwen3_student::read_sidecar(&d.join("rust_adapter"))
        .unwrap()
        .unwrap();
    let adapted = qwen3_student::load(&d.join("rust_adapter"), &sidecar, Device::Cpu).unwrap();
    let da = diff(
        &tch::no_grad(|| adapted.forward(ids)),
        &verify["adapter_logits"],
    );
    println!("adapter: max |worker - peft| = {da:.2e}");
    assert!(da < 1e-4, "adapter logits differ by {da}");
    let base_logits = tch::no_grad(|| {
        Qwen3::load(&base, Device::Cpu, Kind::Float)
            .unwrap()
            .forward(ids)
    });
    assert!(
        diff(&ours, &base_logits) > 1e-3,
        "training changed the model"
    );

    // A tokenizer other than the checkpoint's is refused, naming the setting to fix.
    let mut other = std::fs::read_to_string(base.join("tokenizer.json")).unwrap();
    other.push('\n');
    std::fs::write(d.join("tokenizer.json"), other).unwrap();
    let (ok, _, err) = train("merged", "merged2");
    assert!(!ok);
    assert!(err.contains("[tokenizer] model_dir"), "{err}");
}
