//! `experiments/smoke.toml` end to end on the real SGD data, as a user runs it: every step of the
//! benchmark (ingest … report) on a small slice; a second run does nothing and prints the same
//! table. Skips with a message where ../shared/sgd is absent.

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
