//! The Python side of the Qwen3 tests: finding an interpreter with transformers, and running
//! `crates/student/tests/qwen3_reference.py` (which builds the tiny random checkpoint and checks
//! what the Rust side saved). Shared by the student crate's tests and the root crate's
//! `tests/qwen3_run.rs`, hence paths from the repository root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The first interpreter that imports everything the reference script needs:
/// `TRACELAB_PYTHON`, else the project's `.venv`, else `python3`.
pub fn python(repo_root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("TRACELAB_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(repo_root.join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import transformers, peft, safetensors, tokenizers"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `qwen3_reference.py CMD DIR` with `py`; panics with its stderr when it fails.
pub fn reference(repo_root: &Path, py: &Path, cmd: &str, dir: &Path) {
    let out = Command::new(py)
        .arg(repo_root.join("crates/student/tests/qwen3_reference.py"))
        .arg(cmd)
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "qwen3_reference.py {cmd} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
