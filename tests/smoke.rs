//! `experiments/smoke.toml` end to end on the real SGD data, as a user runs it: every step of the
//! benchmark (ingest … report) on a small slice; a second run does nothing and prints the same
//! table. Skips with a message where ../shared/sgd is absent.
//!
//! It also guards step versions: every step kind's output on this slice is recorded next to its
//! version (`tests/fixtures/step-outputs.json`), and an output that changes while its version
//! stays the same fails, since the cache would go on serving the old output under that version.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sgd() -> Option<PathBuf> {
    let p = std::env::var_os("TRACELAB_SGD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/sgd"));
    p.join("train/schema.json").is_file().then_some(p)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn smoke_experiment_runs_end_to_end_and_reruns_nothing() {
    let Some(sgd) = sgd() else {
        eprintln!("SKIPPED: SGD data not found at ../shared/sgd (set TRACELAB_SGD)");
        return;
    };
    // A copy of the project's experiment, scenarios and task in a temporary root, so the test
    // writes its cache and results there.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for d in ["scenarios", "tasks", "experiments"] {
        copy_dir(&repo().join(d), &root.join(d));
    }
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
            .args(["run", "experiments/smoke.toml", "--set"])
            .arg(format!("data.path={}", sgd.display()))
            .current_dir(root)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "smoke run failed:\n{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (table, first) = run();
    scratch_cell_runs(root, &sgd);
    outputs_change_only_with_their_step_version(root);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows[0], "| scenario | synthetic | direct | delta_pp | synthetic_macro | direct_macro | baseline | baseline_macro |");
    for (row, scenario) in rows[2..].iter().zip([
        "clean",
        "noisy-labels",
        "schema-drift",
        "low-data",
        "trace-mixing",
    ]) {
        assert!(row.starts_with(&format!("| {scenario} | ")), "{row}");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for v in &cells[2..4] {
            let x: f64 = v.parse().unwrap_or_else(|_| panic!("score {v:?} in {row}"));
            assert!((0.0..=1.0).contains(&x));
        }
    }
    assert!(
        first.contains(" ran, 0 cached, 0 failed, 0 skipped"),
        "{first}"
    );
    for f in ["table.md", "table.csv", "long.csv", "chart.svg"] {
        assert!(
            root.join("results/smoke").join(f).is_file(),
            "results/smoke/{f}"
        );
    }

    let show = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .args(["show", "experiments/smoke.toml", "--set"])
        .arg(format!("data.path={}", sgd.display()))
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&show.stdout),
        table,
        "show prints the run's table"
    );
    let csv = root.join("long.csv");
    let export = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .args(["export", "experiments/smoke.toml", "--csv"])
        .arg(&csv)
        .arg("--set")
        .arg(format!("data.path={}", sgd.display()))
        .current_dir(root)
        .output()
        .unwrap();
    assert!(export.status.success());
    let long = std::fs::read_to_string(&csv).unwrap();
    assert!(long.starts_with("experiment,scenario,pipeline,seed,metric,value\n"));
    assert!(
        long.contains("smoke,clean,synthetic,1,score,"),
        "{}",
        &long[..200.min(long.len())]
    );

    let (again, second) = run();
    assert_eq!(again, table, "a second run prints the same table");
    assert!(second.contains("\n0 ran, "), "nothing reruns: {second}");

    concurrent_noop_runs_all_succeed(root, &sgd);
    a_noop_run_needs_no_write_access_to_the_cache(root, &sgd, &table);
    a_rule_threshold_reruns_no_training(root, &sgd);
}

/// The student's value rules are learned by predict: a threshold of `[predict.rules]` reruns
/// predict, judge and the report, and no training.
fn a_rule_threshold_reruns_no_training(root: &Path, sgd: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .args(["run", "experiments/smoke.toml", "--set"])
        .arg(format!("data.path={}", sgd.display()))
        .args(["--set", "predict.rules.evidence_lift=3"])
        .current_dir(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let started: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("start"))
        .map(str::trim)
        .collect();
    assert!(
        started.iter().any(|l| l.ends_with("/predict")),
        "predict reruns: {started:?}"
    );
    assert!(
        started
            .iter()
            .all(|l| l.ends_with("/predict") || l.ends_with("/judge") || *l == "report"),
        "only predict, judge and the report rerun: {started:?}"
    );
}

/// One clean cell of a student trained from scratch with its own tokenizer (`base = "none"`,
/// the ablation and the other domains' setting), on the smoke slice, and one that generates
/// with the teacher's phrasebook: the `tokenizer` and `phrasebook` step kinds, which no
/// benchmark pipeline runs, get their outputs recorded too. Its data steps are the smoke run's
/// cache entries.
fn scratch_cell_runs(root: &Path, sgd: &Path) {
    let smoke = std::fs::read_to_string(root.join("experiments/smoke.toml")).unwrap();
    let head = smoke.split("[pipelines.synthetic]").next().unwrap();
    let tail = &smoke[smoke.find("[generate]").unwrap()..];
    let scratch = head
        .replace("name = \"smoke\"", "name = \"smoke-scratch\"")
        .replace(
            "scenarios = [\"clean\", \"noisy-labels\", \"schema-drift\", \"low-data\", \"trace-mixing\"]",
            "scenarios = [\"clean\"]",
        )
        + "[pipelines.scratch]\nsteps = [\"tokenizer\", \"train\", \"predict\", \"judge\"]\n\n"
        + "[pipelines.phrased]\nsteps = [\"filter\", \"phrasebook\", \"generate\"]\n\n"
        + "[overrides.phrased.generate]\nphrasebook = 0.3\n\n"
        + &tail.replace("base = \"pretrained\"", "base = \"none\"");
    assert!(scratch.contains("smoke-scratch") && scratch.contains("base = \"none\""));
    std::fs::write(root.join("experiments/smoke-scratch.toml"), scratch).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .args(["run", "experiments/smoke-scratch.toml", "--quiet", "--set"])
        .arg(format!("data.path={}", sgd.display()))
        .current_dir(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scratch cell failed:\n{stderr}");
}

fn tracelab_run(root: &Path, sgd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tracelab"));
    c.args(["run", "experiments/smoke.toml", "--quiet", "--set"])
        .arg(format!("data.path={}", sgd.display()))
        .current_dir(root);
    c
}

/// Pairs of no-op runs on one complete cache, at the same moment: each publishes the same
/// results, and none may fail (they used to share one temporary file name in `results/`).
fn concurrent_noop_runs_all_succeed(root: &Path, sgd: &Path) {
    let mut failures = Vec::new();
    for _ in 0..15 {
        let spawn = || {
            tracelab_run(root, sgd)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "concurrent no-op runs failed: {failures:?}"
    );
}

/// A run with nothing to compute on a read-only cache (a read-only bind mount, in a mount
/// namespace of its own) prints the table; one with work to do says once what it cannot write.
fn a_noop_run_needs_no_write_access_to_the_cache(root: &Path, sgd: &Path, table: &str) {
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !probe {
        eprintln!("SKIPPED read-only cache check: `unshare -m` is not available here");
        return;
    }
    let cache = root.join("cache");
    let in_read_only_cache = |extra: &str| {
        let run = tracelab_run(root, sgd);
        let args: Vec<String> = std::iter::once(run.get_program())
            .chain(run.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        let script = format!(
            "mount --bind {c} {c} && mount -o remount,bind,ro {c} && exec {} {extra}",
            args.join(" "),
            c = shell_quote(&cache.to_string_lossy()),
        );
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .current_dir(root)
            .output()
            .unwrap()
    };
    let out = in_read_only_cache("");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a no-op run on a read-only cache: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), table);

    let out = in_read_only_cache("--set judge.bootstrap_samples=101");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the judge steps cannot be written");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l.matches("Read-only file system").count() <= 1),
        "each message says why once: {stderr}"
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The record of every step kind's output on the smoke slice.
const STEP_OUTPUTS: &str = "tests/fixtures/step-outputs.json";

/// What a step's output depends on beyond its code and inputs: the float arithmetic of the
/// machine (CPU model and core count, which set libtorch's kernels and reduction order). Steps
/// downstream of training are compared only on the platform they were recorded on.
fn platform() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map_or(String::new(), |(_, v)| v.trim().to_string())
    };
    // The instruction set extensions pick libtorch's kernels; a model name alone ("Intel(R)
    // Xeon(R) Processor" on a virtual machine) does not tell them apart.
    let flags = field("flags");
    let isa: Vec<&str> = SIMD_FLAGS
        .iter()
        .copied()
        .filter(|f| flags.split(' ').any(|x| x == *f))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{} ({}), {cores} cores, {}",
        field("model name"),
        std::env::consts::ARCH,
        isa.join(" ")
    )
}

/// The x86 extensions whose presence changes which kernels libtorch (oneDNN, MKL) runs.
const SIMD_FLAGS: &[&str] = &[
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
];

/// Steps whose output carries the student's floats (and those computed from them).
const FLOAT_KINDS: &[&str] = &["pretrain", "train", "predict", "judge", "report"];

/// Compares each recorded step's output hash and version with this run's manifests.
/// `TRACELAB_RECORD_STEP_OUTPUTS=1` writes the record instead.
fn outputs_change_only_with_their_step_version(root: &Path) {
    use serde_json::{json, Value};
    // label → (kind, version, what it was given, output hash); what it was given is the key's
    // parts without the version: parameters, inputs' output hashes, external files.
    let mut now: std::collections::BTreeMap<String, (String, u64, String, String)> =
        Default::default();
    for e in std::fs::read_dir(root.join("cache")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("manifest.json")) else {
            continue;
        };
        let m: Value = serde_json::from_str(&text).unwrap();
        let label = m["label"].as_str().unwrap().to_string();
        // One cell of each pipeline, every corruption and the data, pretrain and report steps
        // cover every step kind the benchmark runs.
        let scratch_report =
            label == "report" && m["parts"]["params"]["experiment"] == "smoke-scratch";
        let keep = label.starts_with("data/")
            || label.ends_with("/corrupt")
            || label.starts_with("clean/")
            || label == "pretrain"
            || label == "phrasebook"
            || (label == "report" && !scratch_report);
        if keep {
            let kind = m["parts"]["kind"].as_str().unwrap().to_string();
            let version = m["parts"]["version"].as_u64().unwrap();
            let hash = m["output_hash"].as_str().unwrap().to_string();
            // Where the data lies is no part of it (the test passes an absolute path): files
            // count by content.
            let mut given = m["parts"].clone();
            let g = given.as_object_mut().unwrap();
            g.remove("version");
            if let Some(p) = g.get_mut("params").and_then(|p| p.get_mut("path")) {
                *p = Value::Null;
            }
            if let Some(p) = g
                .get_mut("params")
                .and_then(|p| p.pointer_mut("/corpus/path"))
            {
                *p = Value::Null;
            }
            if let Some(Value::Array(files)) = g.get_mut("external") {
                for f in files.iter_mut() {
                    *f = f[1].clone();
                }
                files.sort_by_key(|f| f.to_string());
            }
            let given = blake3::hash(given.to_string().as_bytes())
                .to_hex()
                .to_string();
            now.insert(label, (kind, version, given, hash));
        }
    }
    let path = repo().join(STEP_OUTPUTS);
    if std::env::var_os("TRACELAB_RECORD_STEP_OUTPUTS").is_some() {
        let steps: Vec<Value> = now
            .iter()
            .map(|(l, (k, v, g, h))| {
                json!({"label": l, "kind": k, "version": v, "given": g, "output_hash": h})
            })
            .collect();
        let record = json!({
            "about": "each step's output hash on experiments/smoke.toml, by version; rewrite with TRACELAB_RECORD_STEP_OUTPUTS=1 cargo nextest run --test suite smoke::",
            "platform": platform(),
            "steps": steps,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&record).unwrap() + "\n").unwrap();
        eprintln!("recorded {} step outputs in {STEP_OUTPUTS}", now.len());
        return;
    }
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let same_platform = record["platform"].as_str() == Some(platform().as_str());
    let mut problems = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for r in record["steps"].as_array().unwrap() {
        let (label, kind) = (r["label"].as_str().unwrap(), r["kind"].as_str().unwrap());
        kinds.insert(kind);
        if FLOAT_KINDS.contains(&kind) && !same_platform {
            eprintln!(
                "not compared: {label} (recorded on {}, this is {})",
                record["platform"],
                platform()
            );
            continue;
        }
        let Some((_, version, given, hash)) = now.get(label) else {
            problems.push(format!("{label}: recorded, but the run has no such step"));
            continue;
        };
        let (old_version, old_hash) = (
            r["version"].as_u64().unwrap(),
            r["output_hash"].as_str().unwrap(),
        );
        if *version == old_version && r["given"].as_str() != Some(given.as_str()) {
            problems.push(format!(
                "{label}: the {kind} step's parameters or inputs changed (an upstream step's output): re-record"
            ));
        } else if *version == old_version && hash != old_hash {
            problems.push(format!(
                "{label}: the {kind} step's output changed at version {version}: bump the step's version (cached outputs of the old code would be served), then re-record"
            ));
        } else if *version != old_version {
            problems.push(format!(
                "{label}: the {kind} step is at version {version}, recorded at {old_version}: re-record"
            ));
        }
    }
    for (label, (kind, ..)) in &now {
        if !kinds.contains(kind.as_str()) {
            problems.push(format!("{label}: no {kind} step is recorded"));
        }
    }
    assert!(
        problems.is_empty(),
        "step outputs vs {STEP_OUTPUTS} (re-record with TRACELAB_RECORD_STEP_OUTPUTS=1 cargo nextest run --test suite smoke::):\n{}",
        problems.join("\n")
    );
}
