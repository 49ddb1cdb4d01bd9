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

/// Decodes one call greedily from fixed scores, no model: `name_scores` outside values,
/// `value_scores` inside them, so what the grammar allows decides.
pub fn decode_call(
    tpl: &tracelab_student::template::ChatTemplate,
    mut st: tracelab_student::grammar::CallState,
    name_scores: &[f32],
    value_scores: &[f32],
) -> tracelab_core::conversation::ToolCall {
    use tracelab_core::job::DecodeParams;
    use tracelab_student::grammar::{digit_tokens, pick, Limits};
    let lim = Limits {
        max_value_tokens: 12,
        // Room for a call of four arguments (BookHouse's); nothing here is cut by it.
        max_new_tokens: 60,
        forced_runs: false, // not read here: this loop feeds no model
    };
    let digits = digit_tokens(tpl);
    while !st.done() {
        let scores = if st.in_value() {
            value_scores
        } else {
            name_scores
        };
        let t = pick(
            &st.allowed(tpl, &lim),
            scores,
            tpl,
            &digits,
            &DecodeParams::default(),
        );
        st.push(tpl, t);
    }
    st.call(tpl)
}
