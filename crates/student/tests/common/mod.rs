//! Helpers shared by the student crate's integration tests.
#![allow(dead_code)]

pub mod python;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the worker binary on `job` (written to `DIR/<task>.job.json`) as the orchestrator does:
/// whether it succeeded, its stdout lines (each must be JSON) and its stderr.
pub fn run_worker(dir: &Path, job: Value) -> (bool, Vec<Value>, String) {
    let path = dir.join(format!("{}.job.json", job["task"].as_str().unwrap()));
    std::fs::write(&path, job.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab-student"))
        .arg(&path)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into(),
    )
}
