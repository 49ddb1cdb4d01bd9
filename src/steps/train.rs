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

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{canonicalize, Artifact, ParamError, Resource, Step, StepContext, StepError};

/// Where a student runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when the worker sees a GPU, else CPU.
    #[default]
    Auto,
    /// CPU.
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// Parameters of the `train` step (`[train]` in the experiment). Defaults are measured on the
/// 2-core machine: see `crates/student/MEASUREMENTS.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainParams {
    /// Model family the worker builds (`tiny`: the from-scratch transformer).
    pub family: String,
    /// Device.
    pub device: DeviceChoice,
    /// Transformer blocks.
    pub layers: i64,
    /// Model width.
    pub width: i64,
    /// Attention heads.
    pub heads: i64,
    /// SwiGLU hidden width; 0 means 8/3 of the width (rounded to 16).
    pub ffn: i64,
    /// Context length in tokens (longer conversations are cut from the left at turn boundaries).
    pub context: i64,
    /// Dropout while training.
    pub dropout: f64,
    /// Width of the copy (pointer) head; 0 disables it.
    pub copy_dim: i64,
    /// Passes over the training windows.
    pub epochs: f64,
    /// Tokens per micro-batch (padding included).
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient norm clip.
    pub grad_clip: f64,
    /// Tool results keep at most this many records when rendered.
    pub max_records: usize,
    /// CPU threads of the worker. One by default: measured here, one thread trains as fast as
    /// two (6.9k tokens/s either way), so two trainings side by side double the throughput.
    pub threads: usize,
    /// Seed (weights, dropout, batch order).
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            family: "tiny".into(),
            device: DeviceChoice::Auto,
            layers: 2,
            width: 128,
            heads: 4,
            ffn: 0,
            context: 384,
            dropout: 0.1,
            copy_dim: 64,
            epochs: 8.0,
            batch_tokens: 4096,
            grad_accum: 1,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 30,
            weight_decay: 0.1,
            grad_clip: 1.0,
            max_records: 2,
            threads: 1,
            seed: 0,
        }
    }
}

/// What the orchestrator hands the worker: one JSON file, path given as the only argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    /// `tokenizer`, `train` or `predict`.
    pub task: String,
    /// The step's canonical parameters.
    pub params: Value,
    /// Input files by name: `traces`, `tools`, `tokenizer`, `model`, `pairs`, `user_tokenizer`.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where to write the product (a file, or the `model/` directory).
    pub output: PathBuf,
    /// CPU threads to use.
    pub threads: usize,
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

/// Runs the worker on `job`, forwarding progress, and returns the `stats` object of its last
/// `{"stats": …}` line. Stderr becomes the error message on failure; cancellation kills it.
pub fn run_worker(ctx: &StepContext<'_>, job: &WorkerJob) -> Result<Map<String, Value>, StepError> {
    let job_path = ctx.out_dir.join(".worker-job.json");
    let text = serde_json::to_string_pretty(job).expect("job serializes");
    std::fs::write(&job_path, text).map_err(|e| StepError::io(&job_path, e))?;
    let exe = worker_path()?;
    let mut cmd = Command::new(&exe);
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // Measured: with the default (spinning) OpenMP barriers, 2 threads on a loaded 2-core
        // machine trained 10x slower than 1 thread; passive waiting removes that cliff.
        cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    }
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
/// spans of the prompt.
pub const WORKER_VERSION: u32 = 3;

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
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Model]
    }
    fn seeded(&self) -> bool {
        true
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        canonicalize::<TrainParams>(params)
    }
    fn resource(&self, params: &Value, jobs: usize) -> Resource {
        worker_resource(params, jobs)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let out = ctx.output(Artifact::Model);
        let job = job(
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
