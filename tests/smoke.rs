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
}
