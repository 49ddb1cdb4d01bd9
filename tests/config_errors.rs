//! Bad experiment files get an error naming the file, line, column and what is wrong
//! (runs the real binary in a temporary project).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary project: `experiments/`, `scenarios/`, a task file and a JSONL data file.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in ["experiments", "scenarios", "data"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("scenarios/clean.toml"),
        "description = \"as is\"\noperators = []\n",
    )
    .unwrap();
    std::fs::write(root.join("data/task.md"), "Answer questions.\n").unwrap();
    std::fs::write(root.join("data/traces.jsonl"), "").unwrap();
    dir
}

const GOOD: &str = r#"name = "t"
seeds = [1]
scenarios = ["clean"]

[data]
format = "jsonl"
path = "data/traces.jsonl"
task = "data/task.md"

[pipelines.direct]
steps = ["report"]
"#;

fn run_plan(root: &Path, text: &str, extra: &[&str]) -> String {
    let exp: PathBuf = root.join("experiments/e.toml");
    std::fs::write(&exp, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tracelab"))
        .arg("plan")
        .arg(&exp)
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected failure for:\n{text}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn expect(text: &str, extra: &[&str], wanted: &[&str]) {
    let p = project();
    let err = run_plan(p.path(), text, extra);
    for w in wanted {
        assert!(err.contains(w), "error should contain {w:?}, got:\n{err}");
    }
}

#[test]
fn unknown_top_level_key() {
    expect(
        &format!("bogus = 1\n{GOOD}"),
        &[],
        &["e.toml:1:9", "key `bogus`", "unknown key"],
    );
}

#[test]
fn unknown_key_in_data() {
    let text = GOOD.replace(
        "task = \"data/task.md\"",
        "task = \"data/task.md\"\npth = \"x\"",
    );
    expect(
        &text,
        &[],
        &["e.toml:9:7", "key `data.pth`", "unknown field `pth`"],
    );
}

#[test]
fn wrong_type() {
    let text = GOOD.replace("seeds = [1]", "seeds = \"one\"");
    expect(
        &text,
        &[],
        &["e.toml:2:9", "key `seeds`", "expected a sequence"],
    );
}

#[test]
fn unknown_step_kind() {
    let text = GOOD.replace("steps = [\"report\"]", "steps = [\"report\", \"trian\"]");
    expect(
        &text,
        &[],
        &[
            "e.toml:11:20",
            "pipelines.direct.steps[1]",
            "unknown step kind \"trian\"",
        ],
    );
}

#[test]
fn unknown_scenario() {
    let text = GOOD.replace(
        "scenarios = [\"clean\"]",
        "scenarios = [\"clean\", \"noisy\"]",
    );
    expect(
        &text,
        &[],
        &["e.toml:3:23", "unknown scenario \"noisy\"", "known: clean"],
    );
}

#[test]
fn missing_file() {
    let text = GOOD.replace("data/task.md", "data/nope.md");
    expect(
        &text,
        &[],
        &["e.toml:8:8", "key `data.task`", "file not found"],
    );
}

#[test]
fn syntax_error() {
    expect(
        &format!("{GOOD}\n[broken\n"),
        &[],
        &["e.toml:13:8", "unclosed table"],
    );
}

#[test]
fn bad_set_override_is_blamed_on_the_flag() {
    expect(
        GOOD,
        &["--set", "seeds=oops"],
        &["--set seeds=oops", "expected a sequence"],
    );
}

#[test]
fn override_of_an_unknown_pipeline() {
    expect(
        &format!("{GOOD}\n[overrides.synthetic.report]\nmetric = \"x\"\n"),
        &[],
        &["e.toml:13:", "neither a pipeline nor a scenario"],
    );
}

#[test]
fn scenario_syntax_error_names_the_scenario_file() {
    let p = project();
    std::fs::write(p.path().join("scenarios/clean.toml"), "operators = [\n").unwrap();
    let err = run_plan(p.path(), GOOD, &[]);
    assert!(err.contains("scenarios/clean.toml:"), "{err}");
}

/// Runs `plan` with `--set ARG` and checks the error blames the flag, not a file position.
fn expect_blamed_on_set(arg: &str, wanted: &[&str]) {
    let p = project();
    let err = run_plan(p.path(), GOOD, &["--set", arg]);
    let flag = format!("--set {arg}");
    assert!(
        err.contains(&flag),
        "error should name {flag:?}, got:\n{err}"
    );
    assert!(
        !err.contains("e.toml:"),
        "the value came from the command line, not the file:\n{err}"
    );
    for w in wanted {
        assert!(err.contains(w), "error should contain {w:?}, got:\n{err}");
    }
}

#[test]
fn set_of_an_unknown_scenario_is_blamed_on_the_flag() {
    expect_blamed_on_set(
        r#"scenarios=["nope"]"#,
        &["key `scenarios[0]`", "unknown scenario \"nope\""],
    );
}

#[test]
fn set_of_an_unknown_step_kind_is_blamed_on_the_flag() {
    expect_blamed_on_set(
        r#"pipelines.direct.steps=["trian"]"#,
        &[
            "key `pipelines.direct.steps[0]`",
            "unknown step kind \"trian\"",
        ],
    );
}
