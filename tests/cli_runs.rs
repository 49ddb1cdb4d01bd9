//! The real binary on a small generated project: reruns do exactly what changed, `kill -9`
//! leaves no partial entry, two concurrent runs share one cache, and the plan explains itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    restaurant_conversation as conversation, restaurant_tools as tools, write_jsonl_project,
};

fn experiment(conversations: usize, low_count: usize) -> String {
    format!(
        r#"name = "t"
seeds = [1]
scenarios = ["clean", "low"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 5

[pipelines.synthetic]
steps = ["filter", "generate", "validate"]

[generate]
conversations = {conversations}

[overrides.low.generate]
conversations = {}
"#,
        conversations / 2
    ) + &format!("# low keeps {low_count}\n")
}

fn project(conversations: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let traces: Vec<Value> = (0..60).map(conversation).collect();
    write_jsonl_project(
        root,
        &traces,
        &tools(),
        "t.toml",
        &experiment(conversations, 5),
    );
    write_low(root, 5);
    dir
}

fn write_low(root: &Path, count: usize) {
    std::fs::write(
        root.join("scenarios/low.toml"),
        format!("[[operators]]\nop = \"subsample\"\ncount = {count}\n"),
    )
    .unwrap();
}

fn tracelab(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracelab"));
    c.current_dir(root);
    c
}

/// Runs `tracelab run --json` and returns labels per event kind.
fn run(root: &Path) -> BTreeMap<String, Vec<String>> {
    let out = tracelab(root)
        .args(["run", "experiments/t.toml", "--json", "--jobs", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    events(&String::from_utf8_lossy(&out.stdout))
}

fn events(stdout: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(label) = v["label"].as_str() {
            m.entry(v["event"].as_str().unwrap().to_string())
                .or_default()
                .push(label.to_string());
        }
    }
    for v in m.values_mut() {
        v.sort();
    }
    m
}

fn ran(e: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    e.get("step_finished").cloned().unwrap_or_default()
}

#[test]
fn reruns_exactly_what_changed() {
    let p = project(40);
    let root = p.path();
    let first = run(root);
    assert_eq!(
        ran(&first).len(),
        11,
        "ingest, schema, split, 2 corrupt, 2 × (filter, generate, validate)"
    );

    let second = run(root);
    assert!(
        ran(&second).is_empty(),
        "nothing changed: {:?}",
        ran(&second)
    );
    assert_eq!(second["step_cached"].len(), 11);

    // One scenario's parameter: that scenario's corrupt and its descendants, nothing else.
    write_low(root, 7);
    let plan = tracelab(root)
        .args(["plan", "experiments/t.toml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("low/s1/corrupt") && plan.contains("parameter operators changed"),
        "{plan}"
    );
    let third = run(root);
    let low_chain = [
        "low/s1/corrupt",
        "low/synthetic/s1/filter",
        "low/synthetic/s1/generate",
        "low/synthetic/s1/validate",
    ];
    let r = ran(&third);
    assert!(r.contains(&low_chain[0].to_string()), "{r:?}");
    assert!(
        r.iter().all(|l| low_chain.contains(&l.as_str())),
        "only the low chain reruns: {r:?}"
    );
    // The chain stops early only through cut-off: a step that did not rerun is reported cached.
    assert_eq!(r.len() + third["step_cached"].len(), 11);

    // A deleted entry: it runs again; what it feeds is cut off when its bytes are the same.
    let cache = root.join("cache");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("manifest.json"))
                .is_ok_and(|m| m.contains("\"label\": \"clean/synthetic/s1/filter\""))
        })
        .expect("filter entry");
    std::fs::remove_dir_all(entry.path()).unwrap();
    let fourth = run(root);
    assert_eq!(ran(&fourth), ["clean/synthetic/s1/filter"]);
    assert!(fourth["step_cached"].contains(&"clean/synthetic/s1/generate".to_string()));

    // The same experiment from a --set: part of the key, and shown in the plan.
    let out = tracelab(root)
        .args([
            "plan",
            "experiments/t.toml",
            "--set",
            "generate.conversations=41",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("parameter conversations changed (40 → 41)"),
        "{text}"
    );
}

#[test]
fn kill_minus_nine_leaves_no_partial_entry() {
    let p = project(3000);
    let root = p.path();
    let mut child = tracelab(root)
        .args(["run", "experiments/t.toml", "--json", "--jobs", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains("\"step_started\"") && line.contains("generate") {
            std::thread::sleep(Duration::from_millis(300));
            break;
        }
        assert!(Instant::now() < deadline, "generate never started");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let tmp_left = std::fs::read_dir(root.join("cache/.tmp")).unwrap().count();
    assert!(
        tmp_left > 0,
        "the killed step's work in progress sits in cache/.tmp"
    );
    for e in std::fs::read_dir(root.join("cache")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 64 {
            let m: Value = serde_json::from_str(
                &std::fs::read_to_string(e.path().join("manifest.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(m["key"], name.as_str(), "every published entry is complete");
        }
    }
    std::fs::write(root.join("experiments/t.toml"), experiment(40, 5)).unwrap();
    let e = run(root);
    assert!(!ran(&e).is_empty());
    assert_eq!(
        std::fs::read_dir(root.join("cache/.tmp")).unwrap().count(),
        0,
        "stale temp cleaned"
    );
    assert!(ran(&run(root)).is_empty());
}

#[test]
fn two_concurrent_runs_share_one_cache() {
    let p = project(200);
    let root = p.path();
    let spawn = || {
        tracelab(root)
            .args(["run", "experiments/t.toml", "--json", "--jobs", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let (ea, eb) = (
        events(&String::from_utf8_lossy(&a.stdout)),
        events(&String::from_utf8_lossy(&b.stdout)),
    );
    let mut all = ran(&ea);
    all.extend(ran(&eb));
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no step computed twice");
    assert_eq!(all.len(), 11, "every step computed once by one of the runs");
    assert!(ran(&run(root)).is_empty());
}

#[test]
fn gc_drops_only_unreachable_entries_and_graph_draws_the_dag() {
    let p = project(20);
    let root = p.path();
    run(root);
    write_low(root, 6);
    run(root);
    let entries = || {
        std::fs::read_dir(root.join("cache"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().len() == 64)
            .count()
    };
    let before = entries();
    // An experiment whose data is not there yet (a checkpoint not downloaded) reaches nothing:
    // gc skips it and says so. One that cannot be parsed makes gc keep everything.
    let t = std::fs::read_to_string(root.join("experiments/t.toml")).unwrap();
    let absent = t.replace("data/traces.jsonl", "data/absent.jsonl");
    assert_ne!(absent, t);
    std::fs::write(root.join("experiments/absent.toml"), absent).unwrap();
    std::fs::write(root.join("experiments/broken.toml"), "name = [\n").unwrap();
    let refused = tracelab(root).args(["gc", "--dry-run"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("broken.toml"));
    std::fs::remove_file(root.join("experiments/broken.toml")).unwrap();
    let out = tracelab(root).args(["gc", "--dry-run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipping")
            && String::from_utf8_lossy(&out.stderr).contains("absent.toml"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("would delete"))
        .count();
    assert!(listed >= 1, "the old low-data corrupt entry is unreachable");
    assert_eq!(entries(), before, "--dry-run deletes nothing");
    assert!(tracelab(root).arg("gc").status().unwrap().success());
    assert_eq!(entries(), before - listed);
    assert!(
        ran(&run(root)).is_empty(),
        "everything the experiment reaches is still cached"
    );

    let dot = tracelab(root)
        .args(["graph", "experiments/t.toml"])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(
        dot.starts_with("digraph tracelab {")
            && dot.contains("low/s1/corrupt")
            && dot.contains(" -> "),
        "{dot}"
    );
    let mermaid = tracelab(root)
        .args(["graph", "experiments/t.toml", "--format", "mermaid"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&mermaid.stdout).starts_with("flowchart LR"));
}

/// Runs `tracelab run --json` with extra flags; returns (exit code, stdout, stderr).
fn run_with(root: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = tracelab(root)
        .args(["run", "experiments/t.toml", "--json", "--jobs", "2"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes a lock on `path` in this (test) process, as another tracelab would.
fn hold(path: &Path, exclusive: bool) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    if exclusive {
        f.lock().unwrap();
    } else {
        f.lock_shared().unwrap();
    }
    f
}

#[test]
fn waiting_for_a_lock_says_for_what_and_whom_and_gives_up_at_the_timeout() {
    let p = project(20);
    let root = p.path();
    let first = run(root);
    let me = std::process::id();

    // gc during a run: it names the run it waits for, and gives up at --lock-timeout.
    let holders = root.join("cache/.locks/holders");
    std::fs::create_dir_all(&holders).unwrap();
    std::fs::write(holders.join(me.to_string()), "tracelab run t").unwrap();
    let shared = hold(&root.join("cache/.lock"), false);
    let gc = tracelab(root)
        .args(["gc", "--lock-timeout", "0.3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gc.stderr);
    assert_eq!(gc.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "waiting for the cache, held by pid {me} (tracelab run t)"
        )),
        "{err}"
    );
    assert!(err.contains("gave up after 0.3s"), "{err}");
    drop(shared);
    std::fs::remove_file(holders.join(me.to_string())).unwrap();

    // A step whose key another process is computing: a step_waiting event names the holder;
    // the step fails at the timeout, and nothing is computed twice.
    let label = "clean/synthetic/s1/generate";
    let key = first["step_finished"]
        .iter()
        .position(|l| l == label)
        .expect("generate ran");
    let _ = key;
    let entry = std::fs::read_dir(root.join("cache"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("manifest.json"))
                .is_ok_and(|m| m.contains(&format!("\"label\": \"{label}\"")))
        })
        .expect("generate entry");
    let key = entry.file_name().to_string_lossy().into_owned();
    std::fs::remove_dir_all(entry.path()).unwrap();
    let lock_path = root.join(format!("cache/.locks/{key}.lock"));
    let held = hold(&lock_path, true);
    std::fs::write(&lock_path, format!("pid {me} ({label})")).unwrap();
    let (code, out, err) = run_with(root, &["--lock-timeout", "0.4"]);
    assert_eq!(code, 1, "the step fails, the run ends: {err}");
    let waiting: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "step_waiting")
        .collect();
    assert_eq!(waiting.len(), 1, "{out}");
    assert_eq!(waiting[0]["label"], label);
    assert_eq!(waiting[0]["holder"], format!("pid {me} ({label})").as_str());
    assert!(
        out.contains("gave up after 0.4s waiting for the lock of step"),
        "{out}"
    );
    drop(held);
    // Once the lock is free, the run computes the step.
    assert_eq!(ran(&run(root)), [label]);
}

#[test]
fn verify_rehashes_every_reachable_entry_and_removes_damaged_ones() {
    let p = project(20);
    let root = p.path();
    run(root);
    let verify = |extra: &[&str]| {
        let out = tracelab(root)
            .args(["verify", "experiments/t.toml"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = verify(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("11 entries verified, 0 damaged"), "{err}");

    // A same-size edit of a cached output: plan treats it as a miss, verify finds it.
    let label = "clean/synthetic/s1/validate";
    let entry = std::fs::read_dir(root.join("cache"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("manifest.json"))
                .is_ok_and(|m| m.contains(&format!("\"label\": \"{label}\"")))
        })
        .expect("validate entry");
    let file = entry.path().join("out/traces.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let edited = text.replacen("respond_to_user", "ReserveRestaura", 1);
    assert_eq!(edited.len(), text.len());
    assert_ne!(edited, text);
    std::fs::write(&file, edited).unwrap();
    let plan = tracelab(root)
        .args(["plan", "experiments/t.toml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("run") && l.contains(label)),
        "the edited entry is a miss: {plan}"
    );
    let (code, out, _) = verify(&["--keep"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains(&format!("damaged {label}")) && out.contains("traces.jsonl: content differs"),
        "{out}"
    );
    assert!(entry.path().exists(), "--keep keeps it");
    let (code, out, _) = verify(&[]);
    assert_eq!(code, Some(1));
    assert!(out.contains(&format!("removed {label}")), "{out}");
    assert!(!entry.path().exists());
    assert_eq!(ran(&run(root)), [label], "the next run recomputes it");
    assert_eq!(verify(&[]).0, Some(0));
}

/// Two pipelines that train a tiny student each; the synthetic one's teacher is an HTTP server
/// that is not there (nothing listens on port 9), so its generate step fails at run time.
const PARTIAL: &str = r#"name = "t"
seeds = [1]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
tools = "data/tools.json"
task = "data/task.md"

[split]
test_conversations = 3

[pipelines.synthetic]
steps = ["filter", "generate", "validate", "tokenizer", "train", "predict", "judge"]

[pipelines.direct]
steps = ["tokenizer", "train", "predict", "judge"]

[generate]
conversations = 8
teacher = "http"

[generate.http]
base_url = "http://127.0.0.1:9/v1"
model = "m"
retries = 0

[tokenizer]
vocab_size = 300

[train]
device = "cpu"
layers = 1
width = 32
heads = 2
ffn = 64
copy_dim = 16
context = 256
batch_tokens = 512
epochs = 1

[judge]
bootstrap_samples = 20
"#;

#[test]
fn a_failed_cell_leaves_the_table_of_the_others_with_it_marked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let traces: Vec<Value> = (0..12).map(conversation).collect();
    write_jsonl_project(root, &traces, &tools(), "t.toml", PARTIAL);
    let (code, out, err) = run_with(root, &[]);
    assert_eq!(code, 1, "a step failed, so the run fails: {err}");
    let e = events(&out);
    assert!(
        e["step_failed"] == ["clean/synthetic/s1/generate"],
        "{:?}",
        e["step_failed"]
    );
    assert!(
        e["step_finished"].contains(&"report".to_string()),
        "the report ran on the direct cell: {err}"
    );
    let results = root.join("results/t");
    let md = std::fs::read_to_string(results.join("table.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| clean |")).unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | clean | synthetic | direct | delta | synthetic_macro | direct_macro | baseline | …
    assert_eq!((cells[2], cells[5]), ("failed", "failed"), "{md}");
    assert!(
        cells[3].parse::<f64>().is_ok(),
        "direct has its score: {md}"
    );
    assert!(
        md.contains("- clean/synthetic/s1: clean/synthetic/s1/generate failed"),
        "{md}"
    );
    let csv = std::fs::read_to_string(results.join("table.csv")).unwrap();
    assert!(csv.contains("clean,failed,"), "{csv}");
    let svg = std::fs::read_to_string(results.join("chart.svg")).unwrap();
    assert!(svg.contains("failed"));

    // The teacher fixed: the full table replaces the partial one; the direct cell is reused.
    let (code, out, err) = run_with(root, &["--set", "generate.teacher=offline"]);
    assert_eq!(code, 0, "{err}");
    let e = events(&out);
    assert!(e["step_cached"].contains(&"clean/direct/s1/train".to_string()));
    assert!(e["step_finished"].contains(&"report".to_string()));
    let md = std::fs::read_to_string(results.join("table.md")).unwrap();
    assert!(!md.contains("failed"), "{md}");
}
