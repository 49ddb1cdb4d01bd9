//! `train`: trains the student on the cell's traces, in the `tracelab-student` worker process.
//!
//! This module also holds what the three student steps (`tokenizer`, `train`, `predict`) share:
//! the worker job file ([`WorkerJob`]) and [`run_worker`], which spawns the worker, turns its JSON
//! progress lines into `ctx.report` calls, kills it on cancellation and returns its final stats.
//! The orchestrator never links libtorch: everything tensor-shaped happens in the worker.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

use super::{Artifact, ParamError, Resource, Step, StepContext, StepError};

pub use tracelab_core::job::{
    qwen3_defaults, DeviceChoice, LoraParams, SaveMode, TrainParams, WorkerJob, FAMILIES,
    LORA_TARGETS,
};

/// Files of the `qwen3` checkpoint the worker reads, relative to the project root:
/// `config.json`, the weights (`model.safetensors`, or the index and every shard it names)
/// and the tokenizer, template and generation files that exist. Empty for `tiny`.
pub fn train_checkpoint_files(p: &TrainParams, root: &Path) -> Result<Vec<PathBuf>, StepError> {
    let Some(dir) = p.model_dir.as_deref().filter(|_| p.family == "qwen3") else {
        return Ok(Vec::new());
    };
    checkpoint_files(root, dir)
}

/// Files a Hugging Face checkpoint directory holds that are not weights and that the worker reads
/// or copies into a saved model (the student crate's `hf::COMPANION_FILES`).
pub const CHECKPOINT_COMPANIONS: [&str; 8] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// The files of the checkpoint directory `dir` (relative to `root`) that make up a student's
/// base: see [`train_checkpoint_files`]. Errors name `model_dir` and say what is missing.
pub fn checkpoint_files(root: &Path, dir: &str) -> Result<Vec<PathBuf>, StepError> {
    let rel = PathBuf::from(dir);
    let abs = root.join(&rel);
    let missing = |what: &str| StepError::MissingFile {
        key: "model_dir".into(),
        message: format!(
            "{}: {what} not found (a Hugging Face checkpoint directory, relative to the project \
             root {}; e.g. `huggingface-cli download Qwen/Qwen3-1.7B --local-dir {dir}`)",
            abs.display(),
            root.display()
        ),
    };
    if !abs.is_dir() {
        return Err(missing("the directory"));
    }
    let mut files = Vec::new();
    for required in ["config.json", "tokenizer.json"] {
        if !abs.join(required).is_file() {
            return Err(missing(required));
        }
        files.push(rel.join(required));
    }
    if abs.join("model.safetensors").is_file() {
        files.push(rel.join("model.safetensors"));
    } else if abs.join("model.safetensors.index.json").is_file() {
        let index = abs.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|e| StepError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| StepError::Data(format!("{}: {e}", index.display())))?;
        let map = v["weight_map"].as_object().ok_or_else(|| {
            StepError::Data(format!("{}: no \"weight_map\" object", index.display()))
        })?;
        files.push(rel.join("model.safetensors.index.json"));
        let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
        shards.sort_unstable();
        shards.dedup();
        for s in shards {
            if !abs.join(s).is_file() {
                return Err(missing(&format!(
                    "shard {s} (named in model.safetensors.index.json)"
                )));
            }
            files.push(rel.join(s));
        }
    } else {
        return Err(missing(
            "model.safetensors (or model.safetensors.index.json)",
        ));
    }
    for name in CHECKPOINT_COMPANIONS {
        if name != "tokenizer.json" && abs.join(name).is_file() {
            files.push(rel.join(name));
        }
    }
    Ok(files)
}

/// Finds the worker binary: `$TRACELAB_STUDENT`, else `tracelab-student` next to the running
/// executable (or next to its parent, for test binaries in `target/*/deps`).
pub fn worker_path() -> Result<PathBuf, StepError> {
    if let Some(p) = std::env::var_os("TRACELAB_STUDENT") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| StepError::External(format!("cannot locate the running executable: {e}")))?;
    let name = format!("tracelab-student{}", std::env::consts::EXE_SUFFIX);
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = d.parent();
    }
    Err(StepError::External(format!(
        "student worker {name} not found next to {} (build it with `cargo build -p \
         tracelab-student`, or set TRACELAB_STUDENT)",
        exe.display()
    )))
}

/// The worker binary and a command that runs it as every worker runs: passive OpenMP waiting,
/// dying with tracelab.
pub(crate) fn worker_command() -> Result<(PathBuf, Command), StepError> {
    let exe = worker_path()?;
    let mut cmd = Command::new(&exe);
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // Measured: with the default (spinning) OpenMP barriers, 2 threads on a loaded 2-core
        // machine trained 10x slower than 1 thread; passive waiting removes that cliff.
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
    die_with_parent(&mut cmd);
    Ok((exe, cmd))
}

/// Runs the worker on `job`, forwarding progress, and returns the `stats` object of its last
/// `{"stats": …}` line. Stderr becomes the error message on failure; cancellation kills it, and
/// a worker the interruption's own signal killed (a terminal's Ctrl-C) is cancelled, not failed.
pub fn run_worker(ctx: &StepContext<'_>, job: &WorkerJob) -> Result<Map<String, Value>, StepError> {
    let job_path = ctx.out_dir.join(".worker-job.json");
    let text = serde_json::to_string_pretty(job).expect("job serializes");
    std::fs::write(&job_path, text).map_err(|e| StepError::io(&job_path, e))?;
    let (exe, mut cmd) = worker_command()?;
    let mut child = cmd
        .arg(&job_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StepError::External(format!("cannot start {}: {e}", exe.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out_reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stats = Map::new();
    let status = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) => {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(s) = v.get("stats").and_then(Value::as_object) {
                    stats = s.clone();
                } else if let Some(done) = v.get("done").and_then(Value::as_u64) {
                    ctx.report(
                        done,
                        v.get("total").and_then(Value::as_u64),
                        v.get("message").and_then(Value::as_str).unwrap_or_default(),
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                break child
                    .wait()
                    .map_err(|e| StepError::External(e.to_string()))?;
            }
        }
        if ctx.check_cancelled().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StepError::Cancelled);
        }
    };
    let _ = out_reader.join();
    let err = err_reader.join().unwrap_or_default();
    let _ = std::fs::remove_file(&job_path);
    if !status.success() && interrupted(ctx.cancel, status) {
        return Err(StepError::Cancelled);
    }
    if !status.success() {
        let tail: String = err
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(StepError::External(format!(
            "student worker ({}) failed with {status}:\n{tail}",
            job.task
        )));
    }
    Ok(stats)
}

/// Makes the worker die with tracelab: without this, a `kill -9` (or a second Ctrl-C, which
/// exits at once) leaves it training to the end, re-parented to init, writing into a temporary
/// directory the next run cleans. Linux sends the signal when the *thread* that spawned the
/// worker exits; steps run on the executor's worker threads, which live until every step has
/// ended, so only tracelab's death fires it. Elsewhere the worker stops at its next progress
/// line, which fails once the pipe's reader is gone.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (prctl, getppid; the errors do not allocate).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // tracelab died before the prctl: no signal will come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Whether a worker that failed with `status` was stopped by the run's interruption rather than
/// failing. A terminal's Ctrl-C reaches the whole process group: the worker may die of the
/// SIGINT before tracelab's own handler has set the cancel flag, so a worker killed by a
/// terminal's signal waits a moment for the flag; a worker killed that way with no flag
/// following (someone signalled the worker alone) has failed.
fn interrupted(cancel: &AtomicBool, status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    let by_terminal = {
        use std::os::unix::process::ExitStatusExt;
        matches!(
            status.signal(),
            Some(libc::SIGINT | libc::SIGTERM | libc::SIGHUP)
        )
    };
    #[cfg(not(unix))]
    let by_terminal = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if cancel.load(Ordering::SeqCst) {
            return true;
        }
        if !by_terminal || std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Builds a job with the step's params and the given inputs, writing into `output`.
pub fn job(
    ctx: &StepContext<'_>,
    task: &str,
    inputs: &[(&str, Artifact)],
    output: &Path,
) -> Result<WorkerJob, StepError> {
    let mut map = BTreeMap::new();
    for (name, a) in inputs {
        map.insert(name.to_string(), ctx.input(*a)?);
    }
    Ok(WorkerJob {
        task: task.into(),
        params: ctx.params.clone(),
        inputs: map,
        output: output.to_path_buf(),
        threads: ctx.threads.max(1),
    })
}

/// What a worker step occupies: the GPU for `device = "cuda"`, else its `threads` (≤ jobs).
pub(crate) fn worker_resource(params: &Value, jobs: usize) -> Resource {
    let device = params
        .get("device")
        .and_then(|d| serde_json::from_value::<DeviceChoice>(d.clone()).ok())
        .unwrap_or_default();
    if device == DeviceChoice::Cuda {
        return Resource::Gpu;
    }
    let threads = params.get("threads").and_then(Value::as_u64).unwrap_or(1) as usize;
    Resource::Cpu {
        slots: threads.clamp(1, jobs.max(1)),
    }
}

/// Version of the three student-worker steps (tokenizer, train, predict): they share the
/// worker's rendering of conversations, so a change there changes all three outputs.
/// 2: dates are no longer rewritten inside street addresses ("1434 1st Street").
/// 3: train records which arguments are copies of the conversation; predict decodes those as
/// spans of the prompt. `family = "qwen3"` (LoRA on a Hugging Face checkpoint, its chat
/// template and tokenizer, JSON-constrained decoding).
/// 4: span arguments keep the shape of their training values (a time is no city's name).
/// 5: train records which span arguments repeat values labelled with their key (keyed); predict
/// takes those from such values, never from a value labelled with another key.
/// 6: train records the vocabularies of categorical arguments (a cuisine, a city); predict
/// decodes those as spans whose sources include their training values, each whole.
/// 7: train records which optional arguments need evidence in the user's words; predict opens
/// those only after such a word.
/// 8: train records the words that ask for a categorical value without saying it (aliases:
/// "pizza" for `Italian`); predict counts those as said, and a keyed argument whose key labels
/// some value is not copied from the assistant's sentences.
/// 9: times said as SGD's users say them ("half past 5 in the evening", "twelve pm", "evening
/// 5:30", "noon") are rewritten to their canonical `HH:MM` in every text (before, "half past 5
/// in the evening" became "half past 17:00", and the student copied 17:00).
/// 10: the rewriting is find + replace on the text layer's finders (`tracelab_core::text`), and
/// a number after a part of the day that counts the word after it stays as said by a language
/// rule, not a list of head-count words ("evening 2 tickets" used to become a clock time); "evening 7
/// pm" is one time; a date inside a rewritten time is left alone.
/// 11: the value rules are learned by predict (and serve) from the training conversations, not
/// by train: `model/config.json` holds none, predict writes `rules.json` beside its predictions.
pub const WORKER_VERSION: u32 = 11;

/// The `train` step.
pub struct Train;

impl Step for Train {
    fn kind(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        WORKER_VERSION
    }
    fn about(&self) -> &'static str {
        "train the student (transformer with a copy head) on the cell's traces"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[
            Artifact::Traces,
            Artifact::Tokenizer,
            Artifact::Tools,
            Artifact::Task,
        ]
    }
    /// A student that starts from the pretrained base also reads the base's weights (the
    /// `pretrain` step's model; its tokenizer comes through [`Artifact::Tokenizer`] as usual).
    fn consumes_with(&self, params: &Value) -> &'static [Artifact] {
        if params["base"] == "pretrained" {
            &[
                Artifact::Traces,
                Artifact::Tokenizer,
                Artifact::Tools,
                Artifact::Task,
                Artifact::Model,
            ]
        } else {
            self.consumes()
        }
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Model]
    }
    fn seeded(&self) -> bool {
        true
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let canonical = TrainParams::canonical(params)?;
        if canonical["base"] == "pretrained" && canonical["family"] != "tiny" {
            return Err(ParamError {
                path: "base".into(),
                message: "a pretrained base is for the tiny family; a qwen3 student starts \
                          from its model_dir"
                    .into(),
            });
        }
        Ok(canonical)
    }
    fn resource(&self, params: &Value, jobs: usize) -> Resource {
        worker_resource(params, jobs)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        train_checkpoint_files(&super::typed::<TrainParams>(params)?, root)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: TrainParams = super::typed(ctx.params)?;
        let out = ctx.output(Artifact::Model);
        let mut job = job(
            ctx,
            "train",
            &[
                ("traces", Artifact::Traces),
                ("tokenizer", Artifact::Tokenizer),
                ("tools", Artifact::Tools),
                ("task", Artifact::Task),
            ],
            &out,
        )?;
        if let (Some(dir), "qwen3") = (&p.model_dir, p.family.as_str()) {
            job.inputs.insert("base_model".into(), ctx.resolve(dir));
        }
        if p.base == tracelab_core::job::Base::Pretrained {
            job.inputs
                .insert("base_model".into(), ctx.input(Artifact::Model)?);
        }
        let stats = run_worker(ctx, &job)?;
        for (k, v) in stats {
            ctx.stat(&k, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_canonicalize_with_defaults_and_reject_unknown_keys() {
        let c = Train.canonical_params(&json!({"epochs": 2})).unwrap();
        assert_eq!(c["epochs"], 2.0);
        assert_eq!(c["width"], TrainParams::default().width);
        assert_eq!(
            c,
            Train.canonical_params(&c).unwrap(),
            "canonical form is a fixed point"
        );
        let e = Train.canonical_params(&json!({"epoch": 2})).unwrap_err();
        assert!(e.message.contains("epoch"), "{}", e.message);
    }

    #[test]
    fn qwen3_params_take_study_defaults_and_name_bad_keys() {
        let c = Train
            .canonical_params(&json!({"family": "qwen3", "model_dir": "models/q"}))
            .unwrap();
        assert_eq!(c["lr"], 5e-5);
        assert_eq!(c["epochs"], 4.0);
        assert_eq!(c["lora"]["rank"], 64);
        assert_eq!(c["save"], "merged");
        assert_eq!(c, Train.canonical_params(&c).unwrap(), "fixed point");
        let tiny = Train.canonical_params(&json!({})).unwrap();
        assert_eq!(
            tiny["lr"],
            TrainParams::default().lr,
            "tiny defaults unchanged"
        );
        let explicit = Train
            .canonical_params(&json!({"family": "qwen3", "model_dir": "m", "lr": 1e-4}))
            .unwrap();
        assert_eq!(explicit["lr"], 1e-4);

        let path = |v: Value| Train.canonical_params(&v).unwrap_err();
        let e = path(json!({"family": "llama"}));
        assert_eq!(e.path, "family");
        assert!(e.message.contains("tiny, qwen3"), "{}", e.message);
        assert_eq!(path(json!({"family": "qwen3"})).path, "model_dir");
        assert_eq!(path(json!({"model_dir": "m"})).path, "model_dir");
        let e = path(
            json!({"family": "qwen3", "model_dir": "m", "lora": {"target_modules": ["q", "zz"]}}),
        );
        assert_eq!(e.path, "lora.target_modules[1]");
        let e = path(json!({"family": "qwen3", "model_dir": "m", "lora": {"rank": 0}}));
        assert_eq!(e.path, "lora.rank");
        let e = path(json!({"family": "qwen3", "model_dir": "m", "lora": {"rnak": 8}}));
        assert_eq!(e.path, "lora.rnak");
        let e = path(json!({"family": "qwen3", "model_dir": "m", "width": 64}));
        assert_eq!(e.path, "width");
        let e = path(json!({"family": "qwen3", "model_dir": "m", "save": "lora"}));
        assert_eq!(e.path, "save");
    }

    #[test]
    fn checkpoint_files_list_weights_and_companions_and_name_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("models/q");
        std::fs::create_dir_all(&dir).unwrap();
        let p = TrainParams {
            family: "qwen3".into(),
            model_dir: Some("models/q".into()),
            ..TrainParams::default()
        };
        let e = train_checkpoint_files(&p, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("model_dir") && e.contains("config.json"), "{e}");
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "README.md",
        ] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(dir.join("m-1.safetensors"), "x").unwrap();
        let e = train_checkpoint_files(&p, root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("m-2.safetensors"), "{e}");
        std::fs::write(dir.join("m-2.safetensors"), "x").unwrap();
        let files = train_checkpoint_files(&p, root.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.strip_prefix("models/q").unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "config.json",
                "tokenizer.json",
                "model.safetensors.index.json",
                "m-1.safetensors",
                "m-2.safetensors",
                "tokenizer_config.json"
            ]
        );
    }

    #[test]
    fn resource_follows_the_device() {
        let cpu = Train.canonical_params(&json!({})).unwrap();
        assert_eq!(Train.resource(&cpu, 2), Resource::Cpu { slots: 1 });
        let two = Train.canonical_params(&json!({"threads": 2})).unwrap();
        assert_eq!(Train.resource(&two, 2), Resource::Cpu { slots: 2 });
        assert_eq!(Train.resource(&two, 1), Resource::Cpu { slots: 1 });
        let gpu = Train.canonical_params(&json!({"device": "cuda"})).unwrap();
        assert_eq!(Train.resource(&gpu, 2), Resource::Gpu);
        let p = super::super::predict::Predict;
        let gpu = p.canonical_params(&json!({"device": "cuda"})).unwrap();
        assert_eq!(p.resource(&gpu, 2), Resource::Gpu);
    }

    #[test]
    fn a_worker_killed_by_a_terminal_signal_is_cancelled_only_when_the_run_is() {
        use std::os::unix::process::ExitStatusExt;
        let sh = |script: &str| Command::new("sh").args(["-c", script]).status().unwrap();
        let by_sigint = sh("kill -INT $$");
        assert_eq!(by_sigint.signal(), Some(libc::SIGINT));
        // The group's Ctrl-C may kill the worker before tracelab's handler sets the flag.
        let cancel = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(100));
                cancel.store(true, Ordering::SeqCst);
            });
            assert!(
                interrupted(&cancel, by_sigint),
                "the flag came after the death"
            );
        });
        let not_set = AtomicBool::new(false);
        assert!(
            !interrupted(&not_set, by_sigint),
            "the worker alone was signalled: a failure"
        );
        let failed = sh("exit 3");
        assert!(!interrupted(&not_set, failed));
        assert!(
            interrupted(&AtomicBool::new(true), failed),
            "the run is interrupted"
        );
    }

    #[test]
    fn job_round_trips_as_json() {
        let job = WorkerJob {
            task: "train".into(),
            params: json!({"epochs": 1}),
            inputs: BTreeMap::from([("traces".to_string(), PathBuf::from("/x/traces.jsonl"))]),
            output: PathBuf::from("/y/model"),
            threads: 2,
        };
        let back: WorkerJob = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back.inputs, job.inputs);
        assert_eq!(back.output, job.output);
    }
}
