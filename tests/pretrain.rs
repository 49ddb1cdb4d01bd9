//! The `pretrain` step on a small SGD fixture of five services: its corpus leaves out every
//! service the experiment reads (target and sister pools) and every multi-service dialogue, and
//! says which services went in; one pretrain entry serves every cell and a second experiment
//! file with the same pretraining; a student fine-tuned from it starts below a from-scratch
//! student's loss on the same batches (same tokenizer, same seed).

use crate::common;

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// An SGD service `S`: `FindS(city)` (a search) and `BookS(place, time)` (a transaction).
fn schema(service: &str) -> Value {
    let s = service.trim_end_matches("_1");
    let slot = |name: &str| json!({"name": name, "description": format!("the {name}"), "is_categorical": false, "possible_values": []});
    json!({
        "service_name": service,
        "slots": [slot("city"), slot("place"), slot("time")],
        "intents": [
            {"name": format!("Find{s}"), "is_transactional": false, "required_slots": ["city"],
             "optional_slots": {}, "result_slots": ["place", "city"]},
            {"name": format!("Book{s}"), "is_transactional": true, "required_slots": ["place", "time"],
             "optional_slots": {}, "result_slots": ["place", "time"]},
        ],
    })
}

/// Dialogue `i` of `services` (one, or two for a multi-service dialogue).
fn dialogue(services: &[&str], i: usize) -> Value {
    let s = services[0].trim_end_matches("_1");
    let city = ["Paris", "Oslo", "Lima", "Rome", "Kyiv"][i % 5];
    let place = format!("{s} House {i}");
    let call = |method: String, params: Value, results: Value| {
        json!({"service": services[0], "service_call": {"method": method, "parameters": params},
               "service_results": results})
    };
    json!({
        "dialogue_id": format!("{}_{i:05}", services.join("+")),
        "services": services,
        "turns": [
            {"speaker": "USER", "utterance": format!("find a {s} in {city}"), "frames": []},
            {"speaker": "SYSTEM", "utterance": format!("How about {place}?"), "frames": [
                call(format!("Find{s}"), json!({"city": city}), json!([{"place": place, "city": city}]))]},
            {"speaker": "USER", "utterance": "book it at 18:30", "frames": []},
            {"speaker": "SYSTEM", "utterance": "Booked.", "frames": [
                call(format!("Book{s}"), json!({"place": place, "time": "18:30"}), json!([{"place": place, "time": "18:30"}]))]},
        ],
    })
}

const SERVICES: [&str; 5] = ["Alpha_1", "Beta_1", "Gamma_1", "Delta_1", "Omega_1"];

/// A project on the fixture: `Alpha_1` the target, `Beta_1` the sister pool.
fn project(root: &Path) {
    let train = root.join("data/sgd/train");
    std::fs::create_dir_all(&train).unwrap();
    std::fs::create_dir_all(root.join("experiments")).unwrap();
    std::fs::create_dir_all(root.join("scenarios")).unwrap();
    let schemas: Vec<Value> = SERVICES.iter().map(|s| schema(s)).collect();
    std::fs::write(train.join("schema.json"), Value::from(schemas).to_string()).unwrap();
    let mut dialogues: Vec<Value> = Vec::new();
    for s in SERVICES {
        dialogues.extend((0..12).map(|i| dialogue(&[s], i)));
    }
    dialogues.push(dialogue(&["Omega_1", "Alpha_1"], 99));
    std::fs::write(
        train.join("dialogues_001.json"),
        Value::from(dialogues).to_string(),
    )
    .unwrap();
    std::fs::write(
        root.join("data/task.md"),
        "+++\nreference_date = \"2019-03-01\"\n+++\nAn assistant that finds and books places.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("scenarios/clean.toml"),
        "description = \"as is\"\noperators = []\n",
    )
    .unwrap();
}

const EXPERIMENT: &str = r#"name = "NAME"
seeds = [1]
scenarios = ["clean"]

[data]
format = "sgd"
path = "data/sgd"
service = "Alpha_1"
splits = ["train"]
task = "data/task.md"

[data.roles.sister]
service = "Beta_1"
splits = ["train"]

[split]
test_conversations = 3

[tokenizer]
vocab_size = 320

[train]
layers = 1
width = 32
heads = 2
ffn = 64
copy_dim = 16
context = 256
epochs = 2
"#;

/// Writes `experiments/<name>.toml` (the fixture's experiment and these pipelines) and runs it.
fn tracelab_run(root: &Path, name: &str, pipelines: &str) -> std::process::Output {
    let text = EXPERIMENT.replace("NAME", name) + pipelines;
    std::fs::write(root.join(format!("experiments/{name}.toml")), text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .args(["run", &format!("experiments/{name}.toml"), "--json"])
        .current_dir(root)
        .output()
        .unwrap()
}

/// A run that must succeed: its events.
fn run(root: &Path, name: &str, pipelines: &str) -> Vec<Value> {
    let out = tracelab_run(root, name, pipelines);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A run that must fail: what it printed on stderr.
fn run_failing(root: &Path, name: &str, pipelines: &str) -> String {
    let out = tracelab_run(root, name, pipelines);
    assert!(!out.status.success(), "{name} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Manifests of the committed entries of one step kind.
fn manifests(root: &Path, kind: &str) -> Vec<Value> {
    std::fs::read_dir(root.join("cache"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("manifest.json")).ok())
        .map(|t| serde_json::from_slice::<Value>(&t).unwrap())
        .filter(|m| m["parts"]["kind"] == kind)
        .collect()
}

fn first_loss(m: &Value) -> f64 {
    m["stats"]["loss_curve"][0]["loss"].as_f64().unwrap()
}

#[test]
fn pretraining_leaves_out_the_experiment_s_services_is_shared_and_gives_fine_tuning_a_head_start() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    project(root);
    let events = run(
        root,
        "a",
        r#"
[pipelines.scratch]
steps = ["pretrain", "train", "predict", "judge"]

[pipelines.tuned]
steps = ["pretrain", "train", "predict", "judge"]

[overrides.tuned.train]
base = "pretrained"
"#,
    );
    let pretrained = manifests(root, "pretrain");
    assert_eq!(pretrained.len(), 1, "one pretrain entry for both cells");
    // One node, named by its kind: it reads nothing of any cell.
    let ran = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "step_finished" && e["label"] == "pretrain")
            .count()
    };
    assert_eq!(ran(&events), 1);

    // The corpus: the services the experiment does not read, single-service dialogues only.
    let entry = root
        .join("cache")
        .join(pretrained[0]["key"].as_str().unwrap());
    let services: Value =
        serde_json::from_slice(&std::fs::read(entry.join("out/services.json")).unwrap()).unwrap();
    assert_eq!(
        services,
        json!({"Delta_1": 12, "Gamma_1": 12, "Omega_1": 12}),
        "target and sister left out, the Omega+Alpha dialogue too"
    );
    assert!(entry.join("out/tokenizer.json").is_file() && entry.join("out/model").is_dir());
    assert!(
        !entry.join("out/.corpus").exists(),
        "the corpus copy is not kept"
    );

    // Same tokenizer, seed and batches: the fine-tuned student starts lower.
    let trains = manifests(root, "train");
    let by_base = |b: bool| {
        trains
            .iter()
            .find(|m| m["stats"]["base"] == b)
            .unwrap_or_else(|| panic!("no train with base {b}"))
    };
    let (tuned, scratch) = (by_base(true), by_base(false));
    assert!(
        first_loss(tuned) < first_loss(scratch),
        "first loss: fine-tuned {} vs from scratch {}",
        first_loss(tuned),
        first_loss(scratch)
    );

    // Another experiment file with the same pretraining reuses the entry.
    let events = run(
        root,
        "b",
        "\n[pipelines.other]\nsteps = [\"pretrain\", \"train\"]\n\n[overrides.other.train]\nbase = \"pretrained\"\n",
    );
    assert_eq!(ran(&events), 0, "cached");
    assert_eq!(manifests(root, "pretrain").len(), 1);
}

#[test]
fn a_jsonl_corpus_is_grouped_by_its_lines_tools_and_a_line_without_tools_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    project(root);
    let line = |i: usize, function: &str, tools: Option<&Value>| {
        let mut v = common::small_conversation(i, function);
        if let Some(t) = tools {
            v["tools"] = t.clone();
        }
        v.to_string()
    };
    let restaurants = common::small_tools();
    let other = common::restaurant_tools();
    let mut lines: Vec<String> = (0..6)
        .map(|i| line(i, "FindRestaurants", Some(&restaurants)))
        .collect();
    lines.extend((6..10).map(|i| line(i, "FindRestaurants", Some(&other))));
    std::fs::write(root.join("data/corpus.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipelines = "\n[pipelines.p]\nsteps = [\"pretrain\", \"train\"]\n\n\
        [overrides.p.train]\nbase = \"pretrained\"\n\n\
        [pretrain.corpus]\nformat = \"jsonl\"\npath = \"data/corpus.jsonl\"\n";
    run(root, "j", pipelines);
    let m = &manifests(root, "pretrain")[0];
    assert_eq!(
        m["stats"]["per_service"],
        json!({"tools-1": 6, "tools-2": 4})
    );

    lines.push(line(10, "FindRestaurants", None));
    std::fs::write(root.join("data/corpus.jsonl"), lines.join("\n") + "\n").unwrap();
    let stderr = run_failing(root, "j", pipelines);
    assert!(
        stderr.contains("corpus.jsonl:11: no \"tools\" list"),
        "{stderr}"
    );

    // A JSONL corpus does not inherit data.path (an SGD directory): it must be named.
    let unnamed = pipelines.replace("path = \"data/corpus.jsonl\"\n", "");
    let stderr = run_failing(root, "j", &unnamed);
    assert!(
        stderr.contains("pretrain.corpus.path") && stderr.contains("a JSONL corpus needs its file"),
        "{stderr}"
    );
}

#[test]
fn a_base_fine_tuned_with_another_tokenizer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    project(root);
    // Same vocabulary size, other ids: the cell's own tokenizer after the base's.
    let stderr = run_failing(
        root,
        "t",
        "\n[pipelines.p]\nsteps = [\"pretrain\", \"tokenizer\", \"train\"]\n\n\
         [overrides.p.train]\nbase = \"pretrained\"\n",
    );
    assert!(
        stderr.contains("is not the pretrained base's") && stderr.contains("put `pretrain`"),
        "{stderr}"
    );
}

#[test]
fn the_phrasebook_reads_the_services_the_experiment_does_not_and_words_generated_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    project(root);
    let pipelines =
        "\n[pipelines.synthetic]\nsteps = [\"filter\", \"phrasebook\", \"generate\"]\n\n\
        [generate]\nconversations = 40\nphrasebook = 0.5\n";
    let events = run(root, "p", pipelines);
    let books = manifests(root, "phrasebook");
    assert_eq!(books.len(), 1);
    let entry = root.join("cache").join(books[0]["key"].as_str().unwrap());
    let book: Value =
        serde_json::from_slice(&std::fs::read(entry.join("out/phrasebook.json")).unwrap()).unwrap();
    assert_eq!(
        book["services"],
        json!({"Delta_1": 12, "Gamma_1": 12, "Omega_1": 12}),
        "target and sister left out, the Omega+Alpha dialogue too"
    );
    // The fixture's services share their wording: "book it at {time}" maps onto Alpha's time.
    let generate = &manifests(root, "generate")[0];
    assert!(
        generate["stats"]["borrowed_phrasings"].as_u64().unwrap() > 0,
        "{generate}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "step_finished" && e["label"] == "phrasebook"));

    // Another experiment file with the same corpus reuses it; a share with no phrasebook step
    // before generate is a dangling input that names the step to add.
    let again = run(root, "q", pipelines);
    assert!(!again
        .iter()
        .any(|e| e["event"] == "step_finished" && e["label"] == "phrasebook"));
    // Values alone need the phrasebook as well; the fixture's places are all the target's own.
    let values = pipelines.replace("phrasebook = 0.5", "phrasebook_values = true");
    run(root, "v", &values);
    let gens = manifests(root, "generate");
    let with_values = gens
        .iter()
        .find(|m| m["parts"]["params"]["phrasebook_values"] == true)
        .expect("a generate step with the phrasebook's values");
    assert_eq!(with_values["stats"]["borrowed_values"], 0, "{with_values}");
    let missing = pipelines.replace("\"phrasebook\", ", "");
    let stderr = run_failing(root, "r", &missing);
    assert!(
        stderr.contains("needs a phrasebook") && stderr.contains("add one of: phrasebook"),
        "{stderr}"
    );
}
