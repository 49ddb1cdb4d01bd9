//! The step trait, the artifacts steps exchange, and `STEPS`: the one list of step kinds.
//!
//! Adding a step kind means one new file in this folder implementing [`Step`] and one line in
//! [`STEPS`]. A step never sees the DAG or the cache: it gets its canonical parameters, the
//! directories of its inputs by artifact, and a fresh directory to write its outputs into.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod corrupt;
pub mod filter;
pub mod generate;
pub mod ingest;
pub mod judge;
pub mod phrasebook;
pub mod predict;
pub mod pretrain;
pub mod report;
pub mod schema;
pub mod split;
pub mod tokenizer;
pub mod train;
pub mod validate;

/// Every step kind tracelab knows, in pipeline order. The experiment file names them by `kind()`.
pub static STEPS: &[&dyn Step] = &[
    &ingest::Ingest,
    &schema::Schema,
    &split::Split,
    &corrupt::Corrupt,
    &filter::Filter,
    &phrasebook::MakePhrasebook,
    &generate::Generate,
    &validate::Validate,
    &pretrain::Pretrain,
    &tokenizer::TokenizerStep,
    &train::Train,
    &predict::Predict,
    &judge::Judge,
    &report::Report,
];

/// The tokio runtime every HTTP-bound step shares (teacher and judge calls), created on first
/// use so runs that make no HTTP call never start it. Steps block on it from their worker thread
/// (`runtime().block_on(…)`); each client keeps its own concurrency limit inside.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tracelab-http")
            .enable_all()
            .build()
            .expect("tokio runtime starts")
    })
}

/// Looks a step kind up by its name.
pub fn find(kind: &str) -> Option<&'static dyn Step> {
    STEPS.iter().copied().find(|s| s.kind() == kind)
}

/// A typed product of a step. Every artifact lives in a fixed file name inside its producer's
/// cache entry, so consumers find it without knowing who produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Artifact {
    /// Conversations in OpenAI chat JSONL (`traces.jsonl`).
    Traces,
    /// The target tool schemas in OpenAI tools format (`tools.json`).
    Tools,
    /// The task description with its structured front matter (`task.md`).
    Task,
    /// Held-out evaluation pairs (`pairs.jsonl`).
    Pairs,
    /// A trained tokenizer (`tokenizer.json`).
    Tokenizer,
    /// A trained student (`model/`).
    Model,
    /// Other services' phrasings for the offline teacher (`phrasebook.json`).
    Phrasebook,
    /// Predictions next to their references (`predictions.jsonl`).
    Predictions,
    /// Judge verdicts and per-cell metrics (`verdicts.jsonl`, `metrics.json`).
    Verdicts,
    /// Result tables (`table.md`, `table.csv`, `long.csv`).
    Table,
}

impl Artifact {
    /// The file (or directory) name the artifact has inside its producer's output directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Artifact::Traces => "traces.jsonl",
            Artifact::Tools => "tools.json",
            Artifact::Task => "task.md",
            Artifact::Pairs => "pairs.jsonl",
            Artifact::Tokenizer => "tokenizer.json",
            Artifact::Model => "model",
            Artifact::Phrasebook => "phrasebook.json",
            Artifact::Predictions => "predictions.jsonl",
            Artifact::Verdicts => "metrics.json",
            Artifact::Table => "table.csv",
        }
    }

    /// Human name used in error messages.
    pub fn noun(self) -> &'static str {
        match self {
            Artifact::Traces => "traces",
            Artifact::Tools => "tool schemas",
            Artifact::Task => "a task description",
            Artifact::Pairs => "evaluation pairs",
            Artifact::Tokenizer => "a tokenizer",
            Artifact::Model => "a trained model",
            Artifact::Phrasebook => "a phrasebook",
            Artifact::Predictions => "predictions",
            Artifact::Verdicts => "verdicts",
            Artifact::Table => "a result table",
        }
    }
}

/// What a step occupies while it runs; the executor limits each class separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Ordinary CPU work: takes `slots` of the `--jobs` budget.
    Cpu { slots: usize },
    /// Mostly waiting on HTTP: one job slot, its own concurrency limit inside.
    Http,
    /// Needs the GPU: takes the device semaphore (and one job slot).
    Gpu,
}

/// Errors a step reports. The executor records the message as the failure's cause.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Input data is malformed (the message names file and line).
    #[error("{0}")]
    Data(String),
    /// A parameter is invalid in a way the type check could not see.
    #[error("parameter {key}: {message}")]
    Param { key: String, message: String },
    /// A file a parameter names does not exist (a checkpoint not downloaded yet).
    #[error("parameter {key}: {message}")]
    MissingFile { key: String, message: String },
    /// An external process (the student worker) failed.
    #[error("{0}")]
    External(String),
    /// The run was interrupted (Ctrl-C).
    #[error("interrupted")]
    Cancelled,
}

impl StepError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StepError::Io {
            path: path.into(),
            source,
        }
    }
}

pub use tracelab_core::job::{canonicalize, ParamError};

/// Reads canonical parameters back into the step's typed struct.
pub fn typed<P: DeserializeOwned>(params: &Value) -> Result<P, StepError> {
    serde_json::from_value(params.clone()).map_err(|e| StepError::Param {
        key: String::new(),
        message: e.to_string(),
    })
}

/// One kind of pipeline step.
pub trait Step: Sync {
    /// The name experiment files use (`"train"`).
    fn kind(&self) -> &'static str;
    /// Implementation version: bump it whenever the step's output for the same inputs changes,
    /// which invalidates every cached entry of this kind.
    fn version(&self) -> u32;
    /// One line for `tracelab steps` and error messages.
    fn about(&self) -> &'static str;
    /// Artifacts this step needs, wired from the most recent producer in its cell.
    fn consumes(&self) -> &'static [Artifact];
    /// What it needs with these canonical parameters: [`Step::consumes`] unless a parameter
    /// changes what the step reads (an HTTP endpoint as the predictor reads no trained model).
    fn consumes_with(&self, _params: &Value) -> &'static [Artifact] {
        self.consumes()
    }
    /// Artifacts this step writes into its output directory.
    fn produces(&self) -> &'static [Artifact];
    /// Whether the cell's seed is part of this step's parameters.
    fn seeded(&self) -> bool {
        false
    }
    /// Checks the parameters and returns their canonical form (see [`canonicalize`]).
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError>;
    /// What the step occupies while running, given its canonical parameters and the job budget.
    fn resource(&self, _params: &Value, _jobs: usize) -> Resource {
        Resource::Cpu { slots: 1 }
    }
    /// Trace pools by role that this step reads besides its artifacts (e.g. a scenario that mixes
    /// in `foreign` traces). Each role's `traces.jsonl` arrives in [`Inputs::roles`].
    fn roles(&self, _params: &Value) -> Vec<String> {
        Vec::new()
    }
    /// Files outside the cache this step reads, relative to the project root: their content is
    /// part of the cache key.
    fn external_files(&self, _params: &Value, _root: &Path) -> Result<Vec<PathBuf>, StepError> {
        Ok(Vec::new())
    }
    /// Whether this step also runs when some of its inputs did not complete, on those that did
    /// (at least one must have): the report writes the table of the cells that finished. The
    /// others arrive in [`Inputs::missing`], and what is missing is part of the step's cache
    /// key, so a partial output never stands for the complete one.
    fn runs_on_partial_inputs(&self) -> bool {
        false
    }
    /// Does the work: read inputs through `ctx`, write outputs into `ctx.out_dir`.
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError>;
}

/// Most warnings one step run keeps word for word; the rest are counted.
pub const MAX_WARNINGS: usize = 20;

/// The warnings a step recorded with [`StepContext::warn`], as the run shows them: each one, then
/// how many more there were.
pub fn warnings(stats: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = stats
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(String::from))
        .collect();
    if let Some(n) = stats.get("warnings_omitted").and_then(Value::as_u64) {
        out.push(format!("… and {n} more warnings"));
    }
    out
}

/// Progress of a long step, forwarded to the reporter as an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// Short status (e.g. `loss 1.23, 4.1k tok/s`).
    pub message: String,
}

/// The inputs of one step run: producer output directories, by artifact, plus the labelled list
/// of all inputs (for steps such as `report` that take many).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Inputs {
    /// Output directory of the producer of each consumed artifact.
    pub by_artifact: BTreeMap<Artifact, PathBuf>,
    /// Trace pools by role (`sister`, `foreign`, …) for steps that declare [`Step::roles`].
    pub roles: BTreeMap<String, PathBuf>,
    /// Every input as (node label, output directory), in a stable order.
    pub all: Vec<(String, PathBuf)>,
    /// Inputs that did not complete, as (label, why: which step failed), for steps that
    /// [run on partial inputs](Step::runs_on_partial_inputs); empty otherwise.
    pub missing: Vec<(String, String)>,
}

/// Everything a running step may use.
pub struct StepContext<'a> {
    /// Canonical parameters.
    pub params: &'a Value,
    /// Input directories.
    pub inputs: &'a Inputs,
    /// The directory to write outputs into (a temporary directory inside the cache).
    pub out_dir: &'a Path,
    /// The project root relative paths resolve against.
    pub root: &'a Path,
    /// A durable directory shared by all runs for per-request records (teacher and judge
    /// responses keyed by blake3 of their request), so an interrupted step resumes without
    /// repeating a paid call. Only complete, successful responses may be stored there.
    pub responses: &'a Path,
    /// How many threads this step may use.
    pub threads: usize,
    /// Statistics to record in the manifest (`tracelab inspect` prints them).
    pub stats: Map<String, Value>,
    /// Set when the run is interrupted; long steps poll it through [`StepContext::check_cancelled`].
    pub cancel: &'a AtomicBool,
    /// Receives progress updates.
    pub progress: &'a (dyn Fn(Progress) + Sync),
}

impl StepContext<'_> {
    /// Path of a consumed artifact's file, e.g. `…/<key>/out/traces.jsonl`.
    pub fn input(&self, artifact: Artifact) -> Result<PathBuf, StepError> {
        self.inputs
            .by_artifact
            .get(&artifact)
            .map(|d| d.join(artifact.file_name()))
            .ok_or_else(|| StepError::Data(format!("internal: no input for {}", artifact.noun())))
    }

    /// Path where this step writes an artifact it produces.
    pub fn output(&self, artifact: Artifact) -> PathBuf {
        self.out_dir.join(artifact.file_name())
    }

    /// Path of a role's trace pool (`…/traces.jsonl`), for steps that declared the role.
    pub fn role_input(&self, role: &str) -> Result<PathBuf, StepError> {
        self.inputs
            .roles
            .get(role)
            .map(|d| d.join(Artifact::Traces.file_name()))
            .ok_or_else(|| {
                StepError::Data(format!(
                    "no trace pool for role {role:?}: add [data.roles.{role}]"
                ))
            })
    }

    /// Resolves a path from the experiment against the project root.
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Records one statistic for the manifest.
    pub fn stat(&mut self, key: &str, value: impl Into<Value>) {
        self.stats.insert(key.to_string(), value.into());
    }

    /// Records a warning: something the step went on despite (a skipped trace, a call to a
    /// function the tools do not define). Warnings are kept in the manifest's `warnings` stat
    /// (at most [`MAX_WARNINGS`]; `warnings_omitted` counts the rest) and shown when the run
    /// finishes the step.
    pub fn warn(&mut self, message: impl Into<String>) {
        let list = self
            .stats
            .entry("warnings")
            .or_insert_with(|| Value::Array(Vec::new()));
        match list.as_array_mut() {
            Some(l) if l.len() < MAX_WARNINGS => l.push(Value::String(message.into())),
            _ => {
                let omitted = self.stats.get("warnings_omitted").and_then(Value::as_u64);
                self.stat("warnings_omitted", omitted.unwrap_or(0) + 1);
            }
        }
    }

    /// Reports progress.
    pub fn report(&self, done: u64, total: Option<u64>, message: impl Into<String>) {
        (self.progress)(Progress {
            done,
            total,
            message: message.into(),
        });
    }

    /// Returns `Err(Cancelled)` once the run has been interrupted.
    pub fn check_cancelled(&self) -> Result<(), StepError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StepError::Cancelled)
        } else {
            Ok(())
        }
    }
}
