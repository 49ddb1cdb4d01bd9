//! The student worker's process life, with the real binaries on a small generated project: the
//! worker dies with tracelab (`kill -9`), and a terminal's Ctrl-C (SIGINT to the whole process
//! group, worker included) is an interruption, not a failure.
//!
//! Other tests and other runs start workers at the same time, so a test finds its own worker by
//! its command line, which names the test's unique temporary directory, and touches no other.

use std::io::{BufRead, BufReader, Lines};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{assistant_call, write_jsonl_project};

/// A restaurant conversation with two calls.
fn conversation(i: usize) -> Value {
    let city = ["San Jose", "Oakland", "Fremont", "Napa"][i % 4];
    let cuisine = ["Mexican", "Italian", "Chinese"][i % 3];
    json!({"messages": [
        {"role": "user", "content": format!("I want {cuisine} food in {city}.")},
        assistant_call("c0", "FindRestaurants", json!({"cuisine": cuisine, "city": city})),
        {"role": "tool", "tool_call_id": "c0", "content": "[{\"restaurant_name\": \"Olive\"}]"},
        assistant_call("c1", "respond_to_user", json!({"message": "How about Olive?"})),
    ]})
}

fn tools() -> Value {
    let params = |props: &[&str]| {
        let p: serde_json::Map<String, Value> = props
            .iter()
            .map(|k| (k.to_string(), json!({"type": "string"})))
            .collect();
        json!({"type": "object", "properties": p, "required": props})
    };
    json!([
        {"type": "function", "function": {"name": "FindRestaurants", "description": "Find",
          "x-kind": "search", "parameters": params(&["cuisine", "city"])}},
        {"type": "function", "function": {"name": "respond_to_user", "description": "Reply",
          "x-kind": "respond", "parameters": params(&["message"])}}
    ])
}

/// A tiny student with far more epochs than a test waits for: killed or interrupted, never done.
/// Two seeds on one job slot: when one trains, the other's steps wait, never reached.
const EXPERIMENT: &str = r#"name = "w"
seeds = [1, 2]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 4

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]

[tokenizer]
vocab_size = 300

[train]
device = "cpu"
layers = 1
width = 32
heads = 2
ffn = 64
copy_dim = 16
context = 128
batch_tokens = 256
epochs = 100000
"#;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let traces: Vec<Value> = (0..24).map(conversation).collect();
    write_jsonl_project(dir.path(), &traces, &tools(), "w.toml", EXPERIMENT);
    dir
}

/// `tracelab run --json` in `root`, stdout piped.
fn spawn_run(root: &Path, own_group: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracelab"));
    cmd.current_dir(root)
        .args(["run", "experiments/w.toml", "--json", "--jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if own_group {
        cmd.process_group(0);
    }
    cmd.spawn().unwrap()
}

/// The `tracelab-student` processes whose command line names `root` (their job file is in the
/// project's cache): this test's workers, and no one else's.
fn workers(root: &Path) -> Vec<i32> {
    let root = root.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A zombie's command line is empty: it is dead, whoever reaps it.
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("tracelab-student") && cmdline.contains(&root) {
            pids.push(pid);
        }
    }
    pids
}

/// Reads events until the train step has started and its worker is running; returns the
/// worker's PIDs.
fn wait_for_train_worker(lines: &mut Lines<BufReader<ChildStdout>>, root: &Path) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_ne!(v["event"], "step_failed", "{v}");
        if v["event"] == "step_started" && v["label"].as_str().unwrap().ends_with("/train") {
            break;
        }
        assert!(Instant::now() < deadline, "train never started");
    }
    loop {
        let pids = workers(root);
        if !pids.is_empty() {
            return pids;
        }
        assert!(Instant::now() < deadline, "no train worker appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `within` for every worker under `root` to be gone; kills (by PID) and reports
/// those left, so that a failing test leaves no orphan training behind.
fn assert_workers_gone(root: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    let mut left = workers(root);
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = workers(root);
    }
    for &pid in &left {
        // SAFETY: plain syscall; the PID is this test's own worker, found by its command line.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "workers {left:?} outlived tracelab");
}

#[test]
fn the_worker_dies_with_a_killed_tracelab() {
    let p = project();
    let root = p.path();
    let mut child = spawn_run(root, false);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_train_worker(&mut lines, root);
    child.kill().unwrap(); // SIGKILL: no handler runs, nothing is cleaned up
    child.wait().unwrap();
    assert_workers_gone(root, Duration::from_secs(3));
}

#[test]
fn a_terminal_ctrl_c_is_an_interruption_with_every_skip_reported() {
    let p = project();
    let root = p.path();
    let mut child = spawn_run(root, true);
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    wait_for_train_worker(&mut lines, root);
    // What a terminal does: the signal goes to the whole foreground group, worker included.
    let group = child.id() as i32;
    // SAFETY: plain syscall on the process group this test created for the run.
    assert_eq!(unsafe { libc::kill(-group, libc::SIGINT) }, 0);
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let status = child.wait().unwrap();
    let stderr = err_reader.join().unwrap();
    assert_workers_gone(root, Duration::from_secs(3));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
    let of = |kind: &'static str| rest.iter().filter(move |v| v["event"] == kind);
    assert_eq!(of("step_failed").count(), 0, "{rest:?}");
    let skipped: Vec<&str> = of("step_skipped")
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert!(
        skipped.iter().any(|l| l.ends_with("/train")),
        "the interrupted train is skipped: {skipped:?}"
    );
    let finished = of("run_finished").next().expect("run_finished");
    assert_eq!(finished["interrupted"], true);
    assert_eq!(finished["failed"], 0);
    assert_eq!(
        finished["skipped"],
        skipped.len(),
        "every skipped step has its event: {skipped:?}"
    );
}
