//! The one event enum that joins the runner to its reporters: progress bars, JSON logs and tests
//! all consume the same stream.

use serde::{Deserialize, Serialize};

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The DAG is built; `steps` nodes will be considered.
    RunStarted {
        /// Experiment name.
        experiment: String,
        /// Number of nodes in the DAG (after `--only`).
        steps: usize,
        /// Parallel job slots.
        jobs: usize,
    },
    /// The run waits for the cache lock, held exclusively by another process (`gc`).
    RunWaiting {
        /// What it waits for.
        what: String,
        /// Who holds it.
        holder: String,
    },
    /// A node's output was found in the cache.
    StepCached {
        /// Node label.
        label: String,
        /// Cache key.
        key: String,
        /// True when an input ran again but reproduced identical bytes (early cut-off).
        cut_off: bool,
    },
    /// A node started running.
    StepStarted {
        /// Node label.
        label: String,
        /// Cache key.
        key: String,
        /// The cluster job running it (the Slurm job id), when it does not run here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<String>,
    },
    /// A started node waits for a lock another process holds (another run computing the same
    /// step, or `gc`).
    StepWaiting {
        /// Node label.
        label: String,
        /// What it waits for.
        what: String,
        /// Who holds it (process id and what it does).
        holder: String,
    },
    /// Progress inside a long step.
    StepProgress {
        /// Node label.
        label: String,
        /// Units done.
        done: u64,
        /// Units in all, when known.
        total: Option<u64>,
        /// Status text.
        message: String,
    },
    /// A node finished and its output is published.
    StepFinished {
        /// Node label.
        label: String,
        /// Cache key.
        key: String,
        /// Wall time in seconds.
        seconds: f64,
    },
    /// A node went on despite something the user should know (a skipped trace, a call to a
    /// function the tools do not define). Sent after the node ran, before `StepFinished`.
    StepWarning {
        /// Node label.
        label: String,
        /// What happened, naming file and line where there are some.
        message: String,
    },
    /// A node failed.
    StepFailed {
        /// Node label.
        label: String,
        /// The cause.
        error: String,
    },
    /// A node did not run because an input failed or the run was interrupted.
    StepSkipped {
        /// Node label.
        label: String,
        /// Why.
        reason: String,
    },
    /// The run ended.
    RunFinished {
        /// Nodes that ran.
        ran: usize,
        /// Nodes taken from the cache.
        cached: usize,
        /// Nodes that failed.
        failed: usize,
        /// Nodes skipped.
        skipped: usize,
        /// Whether Ctrl-C stopped it.
        interrupted: bool,
        /// Wall time in seconds.
        seconds: f64,
    },
}

/// Consumes events. Implementations synchronize internally: steps report from worker threads.
pub trait Reporter: Sync {
    /// Handles one event.
    fn event(&self, e: &Event);
}
