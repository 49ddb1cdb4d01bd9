//! The Slurm executor against a real Slurm cluster (`scripts/slurm-cluster.sh`, which `.ci/run`
//! starts): the smoke experiment's steps as jobs give the local executor's cache entries byte
//! for byte and a rerun submits nothing; GPU steps get their GPU from Slurm, at most two at once
//! on the two fake GPUs; a failing job fails its step with job id and log, and its dependents
//! never run; Ctrl-C cancels every job; a client killed with `kill -9` leaves jobs that the next
//! run adopts instead of submitting them twice; status queries grow with time, not with jobs.
//!
//! Skips with a message where no cluster answers (`SLURM_CONF` unset or `sinfo` failing) or
//! where ../shared/sgd is absent.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SGD data, when there is a cluster to run on too.
fn cluster_and_sgd() -> Option<PathBuf> {
    let up = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success());
    if !up {
        eprintln!(
            "SKIPPED: no Slurm cluster (start one with `scripts/slurm-cluster.sh start DIR` and \
             export the SLURM_CONF it prints)"
        );
        return None;
    }
    let sgd = common::sgd_dir()?;
    sgd.join("train/schema.json").is_file().then_some(sgd)
}

/// A project root with the repository's experiments, scenarios and tasks, and `settings` as its
/// `tracelab.toml`.
fn project(settings: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for d in ["scenarios", "tasks", "experiments"] {
        let to = tmp.path().join(d);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(repo().join(d)).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(tmp.path().join("tracelab.toml"), settings).unwrap();
    tmp
}

/// `tracelab run experiments/smoke.toml` on the SGD data, with these extra arguments.
fn smoke(root: &Path, sgd: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracelab"));
    c.args(["run", "experiments/smoke.toml", "--json", "--set"])
        .arg(format!("data.path={}", sgd.display()))
        .args(args)
        .current_dir(root);
    c
}

fn events(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The client's closing line: (submitted, adopted, queries, job name).
fn counts(stderr: &str) -> (usize, usize, usize, String) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("slurm: "))
        .unwrap_or_else(|| panic!("no slurm summary in:\n{stderr}"));
    let num = |after: &str| -> usize {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words.iter().position(|w| *w == after).unwrap();
        words[i - 1].parse().unwrap()
    };
    let name = line
        .rsplit("job name ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    (num("jobs"), num("adopted"), num("status"), name.to_string())
}

/// Every committed entry: key → (label, output file → bytes).
fn entries(cache: &Path) -> BTreeMap<String, (String, BTreeMap<String, Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(cache).unwrap().flatten() {
        let manifest = e.path().join("manifest.json");
        let Ok(text) = std::fs::read(&manifest) else {
            continue;
        };
        let m: Value = serde_json::from_slice(&text).unwrap();
        let outdir = e.path().join("out");
        let files = common::files_under(&outdir)
            .into_iter()
            .map(|f| {
                let rel = f.strip_prefix(&outdir).unwrap().display().to_string();
                (rel, std::fs::read(&f).unwrap())
            })
            .collect();
        let label = m["label"].as_str().unwrap().to_string();
        out.insert(e.file_name().to_string_lossy().into_owned(), (label, files));
    }
    out
}

fn manifests(cache: &Path) -> Vec<Value> {
    std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("manifest.json")).ok())
        .map(|t| serde_json::from_slice(&t).unwrap())
        .collect()
}

fn live_jobs(name: &str) -> Vec<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i %T", "--name", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run failed:\n{stderr}");
    stderr
}

const TWO_CELLS: [&str; 4] = ["--only", "clean/*", "--only", "noisy-labels/*"];

#[test]
fn jobs_give_the_local_entries_byte_for_byte_gpus_come_from_slurm_and_a_rerun_submits_nothing() {
    let Some(sgd) = cluster_and_sgd() else {
        return;
    };
    // Every step a job, every job one of the two GPUs.
    let tmp =
        project("[slurm]\nclient_steps = []\npoll_min_s = 0.25\n[slurm.job]\ngres = \"gpu:1\"\n");
    let root = tmp.path();
    let t0 = std::time::Instant::now();
    let first = smoke(root, &sgd, &TWO_CELLS)
        .args(["--executor", "slurm", "--cache", "cache-slurm"])
        .output()
        .unwrap();
    let seconds = t0.elapsed().as_secs_f64();
    let stderr = ok(&first);
    let (submitted, _, queries, name) = counts(&stderr);
    let ev = events(&first.stdout);
    let started: Vec<&Value> = ev.iter().filter(|e| e["event"] == "step_started").collect();
    assert_eq!(started.len(), submitted, "one job per step that ran");
    assert!(
        started.iter().all(|e| e["job"].as_str().is_some()),
        "step_started carries the job id"
    );
    assert!(
        ev.iter()
            .any(|e| e["event"] == "step_progress" && e["label"] == "clean/direct/s1/train"),
        "the job's progress reaches the client"
    );
    // One squeue per poll for all jobs: at most one per poll_min_s, whatever the job count.
    assert!(
        queries as f64 <= 2.0 + seconds / 0.25,
        "{queries} queries in {seconds:.1}s for {submitted} jobs"
    );
    assert!(live_jobs(&name).is_empty());

    let local = smoke(root, &sgd, &TWO_CELLS)
        .args(["--cache", "cache-local"])
        .output()
        .unwrap();
    ok(&local);
    let (s, l) = (
        entries(&root.join("cache-slurm")),
        entries(&root.join("cache-local")),
    );
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        l.keys().collect::<Vec<_>>(),
        "the same steps under the same keys"
    );
    for (key, (label, files)) in &l {
        assert!(
            s[key].1 == *files,
            "{label}: outputs differ between executors"
        );
    }

    // Each job saw the GPU Slurm gave it, and no more than two ran at once.
    let logs: Vec<String> = common::files_under(&root.join("cache-slurm/slurm"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(logs.len(), submitted);
    for log in &logs {
        assert!(
            log.contains("CUDA_VISIBLE_DEVICES=0") || log.contains("CUDA_VISIBLE_DEVICES=1"),
            "{log}"
        );
    }
    let spans: Vec<(f64, f64)> = manifests(&root.join("cache-slurm"))
        .iter()
        .map(|m| {
            let s = m["started_at"].as_f64().unwrap();
            (s, s + m["duration_s"].as_f64().unwrap())
        })
        .collect();
    let most = spans
        .iter()
        .map(|&(s, _)| spans.iter().filter(|&&(a, b)| a <= s && s < b).count())
        .max()
        .unwrap();
    assert!(most <= 2, "{most} GPU steps ran at once on two GPUs");

    let again = smoke(root, &sgd, &TWO_CELLS)
        .args(["--executor", "slurm", "--cache", "cache-slurm"])
        .output()
        .unwrap();
    let (submitted, adopted, _, _) = counts(&ok(&again));
    assert_eq!((submitted, adopted), (0, 0), "a cached run submits nothing");
}

#[test]
fn a_failing_job_is_retried_then_fails_its_step_with_job_and_log_and_its_dependents_never_run() {
    let Some(sgd) = cluster_and_sgd() else {
        return;
    };
    let tmp = project("[slurm]\nretries = 1\n");
    let root = tmp.path();
    // A real failure: the pretrain step cannot start its student worker on the node.
    let out = smoke(
        root,
        &sgd,
        &["--only", "clean/direct/*", "--executor", "slurm"],
    )
    .env("TRACELAB_STUDENT", root.join("no-such-worker"))
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(counts(&stderr).0, 2, "one retry, then the step fails");
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("pretrain:"))
        .unwrap_or_else(|| panic!("no failure line for pretrain:\n{stderr}"));
    assert!(
        line.contains("no-such-worker"),
        "the step's own cause: {line}"
    );
    assert!(
        line.contains("[slurm job ") && line.contains(" FAILED"),
        "{line}"
    );
    let log = line.rsplit("log ").next().unwrap().trim_end_matches(']');
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("tracelab exec-step pretrain"), "{text}");
    let ev = events(&out.stdout);
    for after in [
        "clean/direct/s1/train",
        "clean/direct/s1/predict",
        "clean/direct/s1/judge",
    ] {
        assert!(ev
            .iter()
            .any(|e| e["event"] == "step_skipped" && e["label"] == after));
        assert!(!ev
            .iter()
            .any(|e| e["event"] == "step_started" && e["label"] == after));
    }
}

/// Starts a slurm run and returns it once `label` has started as a job (with its id).
fn start_until(root: &Path, sgd: &Path, only: &str, label: &str) -> (Child, String) {
    let mut child = smoke(root, sgd, &["--only", only, "--executor", "slurm"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if e["event"] == "step_started" && e["label"] == label {
            return (child, e["job"].as_str().unwrap().to_string());
        }
    }
    let _ = child.wait();
    panic!("the run ended before {label} started");
}

#[test]
fn ctrl_c_cancels_every_job_of_the_run() {
    let Some(sgd) = cluster_and_sgd() else {
        return;
    };
    let tmp = project("[slurm]\n");
    let root = tmp.path();
    let (child, job) = start_until(root, &sgd, "clean/*", "clean/direct/s1/train");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let state = Command::new("squeue")
        .args(["-h", "--states=all", "-o", "%T", "-j", &job])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "CANCELLED");
    let name = Command::new("squeue")
        .args(["-h", "--states=all", "-o", "%j", "-j", &job])
        .output()
        .unwrap();
    let name = String::from_utf8_lossy(&name.stdout).trim().to_string();
    assert_eq!(live_jobs(&name), Vec::<String>::new(), "squeue is empty");
}

#[test]
fn a_killed_client_s_jobs_are_adopted_by_the_next_run_not_submitted_twice() {
    let Some(sgd) = cluster_and_sgd() else {
        return;
    };
    let tmp = project("[slurm]\n");
    let root = tmp.path();
    let train = "clean/direct/s1/train";
    let (mut child, job) = start_until(root, &sgd, "clean/direct/*", train);
    child.kill().unwrap(); // SIGKILL: no cleanup
    child.wait().unwrap();
    let rerun = smoke(
        root,
        &sgd,
        &["--only", "clean/direct/*", "--executor", "slurm"],
    )
    .output()
    .unwrap();
    let (_, adopted, _, name) = counts(&ok(&rerun));
    assert_eq!(
        adopted, 1,
        "the train job is waited for, not submitted again"
    );
    let ev = events(&rerun.stdout);
    let again: BTreeSet<&str> = ev
        .iter()
        .filter(|e| e["event"] == "step_started" && e["label"] == train)
        .filter_map(|e| e["job"].as_str())
        .collect();
    assert_eq!(again, BTreeSet::from([job.as_str()]));
    assert!(live_jobs(&name).is_empty());
    // The result is the local executor's.
    let local = smoke(
        root,
        &sgd,
        &["--only", "clean/direct/*", "--cache", "cache-local"],
    )
    .output()
    .unwrap();
    ok(&local);
    let (s, l) = (
        entries(&root.join("cache")),
        entries(&root.join("cache-local")),
    );
    assert_eq!(s.keys().collect::<Vec<_>>(), l.keys().collect::<Vec<_>>());
    for (key, (label, files)) in &l {
        assert!(s[key].1 == *files, "{label}: outputs differ");
    }
}
