//! `tracelab exec-step JOB_FILE`: what a Slurm job runs on the compute node. It runs one step
//! exactly as the local executor would (key lock, cache re-check, publication through a
//! temporary directory, manifest last), writes the step's progress events to a file the client
//! follows, and on failure writes the cause to a file the client reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cache::{Cache, KeyParts, LockWait};
use crate::dag::Node;
use crate::events::{Event, Reporter};
use crate::executor::{self, Alone};
use crate::steps::{self, Inputs};

use super::SlurmError;

/// Everything a job needs to run one step, written by the client into the step's job
/// directory (`cache/slurm/<key>/job.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFile {
    /// The node's label (for messages).
    pub label: String,
    /// What the key is computed from: the step kind, its version, its canonical parameters.
    pub parts: KeyParts,
    /// Ignore an existing entry (`--force`).
    pub forced: bool,
    /// The step's input directories in the shared cache.
    pub inputs: Inputs,
    /// The project root (relative paths in parameters resolve here).
    pub root: PathBuf,
    /// The cache directory.
    pub cache: PathBuf,
    /// Threads the step may use.
    pub threads: usize,
}

/// The files of one step's job, inside its job directory.
pub struct JobPaths {
    /// The job file.
    pub job: PathBuf,
    /// The step's progress events, one JSON object per line.
    pub events: PathBuf,
    /// The cause of a failure, written by the job.
    pub error: PathBuf,
}

impl JobPaths {
    /// The paths in a step's job directory.
    pub fn in_dir(dir: &Path) -> JobPaths {
        JobPaths {
            job: dir.join("job.json"),
            events: dir.join("events.jsonl"),
            error: dir.join("error.txt"),
        }
    }
}

/// Writes events as JSON lines to a file.
struct FileReporter(Mutex<std::fs::File>);

impl Reporter for FileReporter {
    fn event(&self, e: &Event) {
        let line = serde_json::to_string(e).expect("events serialize");
        let mut f = self.0.lock().expect("events file lock");
        let _ = writeln!(f, "{line}");
        let _ = f.flush();
    }
}

/// Runs the step a job file describes. Returns the process exit status: 0 when the entry is
/// committed (or another run committed it), 130 when cancelled, 1 on failure (the cause in
/// `error.txt`).
pub fn exec_step(job_path: &Path, cancel: &AtomicBool) -> Result<u8, SlurmError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| SlurmError::Io { path, error }
    };
    let text = std::fs::read(job_path).map_err(io(job_path))?;
    let job: JobFile = serde_json::from_slice(&text).map_err(|e| SlurmError::Io {
        path: job_path.to_path_buf(),
        error: std::io::Error::other(e),
    })?;
    let dir = job_path.parent().unwrap_or(Path::new("."));
    let paths = JobPaths::in_dir(dir);
    let fail = |message: &str| -> Result<u8, SlurmError> {
        eprintln!("tracelab exec-step {}: {message}", job.label);
        write_atomically(&paths.error, message.as_bytes()).map_err(io(&paths.error))?;
        Ok(1)
    };
    eprintln!(
        "tracelab exec-step {} on {}: {} threads, CUDA_VISIBLE_DEVICES={}",
        job.label,
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim(),
        job.threads,
        std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "(unset)".into()),
    );
    let Some(step) = steps::find(&job.parts.kind) else {
        return fail(&format!(
            "this tracelab ({}) has no step kind {:?}",
            env!("CARGO_PKG_VERSION"),
            job.parts.kind
        ));
    };
    if step.version() != job.parts.version {
        return fail(&format!(
            "the client wants version {} of step {}, this tracelab ({}) has version {}: run the \
             same tracelab on the client and the nodes",
            job.parts.version,
            job.parts.kind,
            env!("CARGO_PKG_VERSION"),
            step.version()
        ));
    }
    let cache = match Cache::open(&job.cache) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let _shared = match cache.lock_cache(
        false,
        &format!("slurm job for {}", job.label),
        &LockWait::FOREVER,
    ) {
        Ok(l) => l,
        Err(e) => return fail(&e.to_string()),
    };
    let events = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.events)
        .map_err(io(&paths.events))?;
    let reporter = FileReporter(Mutex::new(events));
    let node = Node {
        step,
        params: job.parts.params.clone(),
        label: job.label.clone(),
        aliases: Vec::new(),
        inputs: Vec::new(),
    };
    let outcome = executor::run_alone(
        &node,
        &cache,
        &job.root,
        job.parts.clone(),
        job.forced,
        job.threads,
        &job.inputs,
        &reporter,
        cancel,
    );
    match outcome {
        Alone::Ran(_) | Alone::Reused(_) => Ok(0),
        Alone::Cancelled => {
            let _ = write_atomically(&paths.error, b"interrupted");
            Ok(130)
        }
        Alone::Failed(e) => fail(&e),
    }
}

/// Writes a whole file through a temporary name and a rename, so a reader never sees part of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
