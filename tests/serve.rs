//! `tracelab serve` end to end: a small student is trained by `tracelab run`, served, and called
//! with the official `openai` Python client and LangChain's `ChatOpenAI` (tests/openai_client.py:
//! tool calls plain and streamed, `tool_choice`, a tool-result round trip, bad requests); a killed
//! worker is replaced; `tracelab pack` makes a student directory that `serve --model` serves
//! elsewhere with the same answers; `predict` with `model = "http"` pointed at the server gives
//! the cell's own predictions.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common;
use crate::common::{
    post, restaurant_conversation, restaurant_tools, serve, write_jsonl_project, Server,
};

const EXPERIMENT: &str = r#"name = "s"
seeds = [1]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 6

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]

[tokenizer]
vocab_size = 400

[train]
layers = 1
width = 32
heads = 2
ffn = 64
copy_dim = 16
context = 256
epochs = 2
"#;

/// The same data scored through the server: `predict` asks it over HTTP.
fn served_experiment(base_url: &str) -> String {
    EXPERIMENT.replace("name = \"s\"", "name = \"via-http\"").replace(
        "[pipelines.direct]\nsteps = [\"tokenizer\", \"train\", \"predict\", \"judge\"]",
        &format!(
            "[pipelines.served]\nsteps = [\"predict\", \"judge\"]\n\n[predict]\nmodel = \"http\"\n\n\
             [predict.http]\nbase_url = \"{base_url}\"\nmodel = \"student\"\nconcurrency = 4\n"
        ),
    )
}

fn tracelab(root: &Path, args: &[&str], last: Option<&Path>) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .current_dir(root)
        .args(args)
        .args(last)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tracelab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process of `parent`, found in /proc (no procps needed).
fn child_of(parent: u32) -> Option<i32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid …: the fields after the last ')'.
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(parent.as_str())
            })
        })
}

/// Kills the server's student worker and checks that the server starts another and answers the
/// request that found it dead.
fn survives_a_worker_crash(server: &Server, url: &str) {
    let worker = child_of(server.0.id()).expect("the server has a worker process");
    // SAFETY: kill(2) with a pid we just found and a valid signal number.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let body = r#"{"model": "student", "messages": [{"role": "user", "content": "Hi"}]}"#;
    for _ in 0..2 {
        let (status, answer) = post(url, body);
        assert_eq!(status, 200, "{answer}");
        assert!(answer["choices"][0]["message"]["content"].is_string());
    }
    let replaced = child_of(server.0.id()).expect("a new worker");
    assert_ne!(replaced, worker, "the killed worker was replaced");
}

fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} is missing: run scripts/setup.sh (it installs the openai client)",
        py.display()
    );
    py
}

fn predictions(root: &Path) -> Vec<(PathBuf, Vec<Value>)> {
    common::files_under(&root.join("cache"))
        .into_iter()
        .filter(|p| p.ends_with("out/predictions.jsonl"))
        .map(|p| {
            let rows = std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (p, rows)
        })
        .collect()
}

#[test]
fn a_served_student_answers_the_openai_client_and_matches_its_own_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let traces: Vec<Value> = (0..60).map(restaurant_conversation).collect();
    write_jsonl_project(root, &traces, &restaurant_tools(), "s.toml", EXPERIMENT);
    tracelab(root, &["run", "experiments/s.toml", "--quiet"], None);

    let exe = Path::new(env!("CARGO_BIN_EXE_tracelab"));
    let (server, url) = serve(
        exe,
        root,
        &["experiments/s.toml", "--cell", "clean/direct/s1"],
    );
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py"))
        .args([url.as_str(), "student"])
        .arg(root.join("data/tools.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all checks passed"),
        "openai client checks failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    survives_a_worker_crash(&server, &url);

    // Packed into a directory, the student is served anywhere and answers the same.
    let elsewhere = tempfile::tempdir().unwrap();
    let packed = elsewhere.path().join("my-student");
    tracelab(
        root,
        &[
            "pack",
            "experiments/s.toml",
            "--cell",
            "clean/direct/s1",
            "--out",
        ],
        Some(&packed),
    );
    // The value rules predict learned travel in the packed model's config (train saves none).
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(packed.join("model/config.json")).unwrap())
            .unwrap();
    assert!(
        config["span_params"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "the packed config holds the cell's rules: {config}"
    );
    let (_copy, copy_url) = serve(exe, elsewhere.path(), &["--model", "my-student"]);
    let ask = r#"{"model": "student", "tool_choice": "required",
        "messages": [{"role": "user", "content": "I want Mexican food in Oakland."}],
        "tools": [{"type": "function", "function": {"name": "FindRestaurants"}}]}"#;
    let (a, b) = (post(&url, ask), post(&copy_url, ask));
    assert_eq!(a.0, 200, "{}", a.1);
    let call = |v: &Value| v["choices"][0]["message"]["tool_calls"][0]["function"].clone();
    assert_eq!(call(&a.1), call(&b.1));

    std::fs::write(
        root.join("experiments/via-http.toml"),
        served_experiment(&url),
    )
    .unwrap();
    tracelab(root, &["run", "experiments/via-http.toml", "--quiet"], None);
    let found = predictions(root);
    assert_eq!(found.len(), 2, "the cell's predict and the HTTP predict");
    let (a, b) = (&found[0].1, &found[1].1);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["id"], y["id"]);
        assert_eq!(
            x["prediction"], y["prediction"],
            "pair {}: the served student answers as the cell's predict step did",
            x["id"]
        );
    }
}
