//! The Slurm executor: steps that are ready and not cached become Slurm jobs, while the DAG, the
//! cache checks and the events stay with the client ([`crate::executor`]).
//!
//! - [`settings`]: the project's `[slurm]` options (partition, time, GPUs per step kind …).
//! - [`client`]: what a worker thread of the executor does for a step that runs as a job: write
//!   its job file, submit it (or find the job a killed client left running), forward its
//!   progress, and read its result from the shared cache.
//! - [`node`]: `tracelab exec-step`, what the job runs on the compute node.
//! - this module: [`Slurm`], which submits jobs and keeps their states with one batched `squeue`
//!   per poll for all of a run's jobs (fast after a change, backing off while nothing changes),
//!   and cancels them all with one `scancel`.
//!
//! Slurm is driven through its commands (`sbatch`, `squeue`, `sacct`, `scancel`), as Snakemake
//! and Nextflow drive it; `SLURM_CONF` and the rest of the environment reach them unchanged.

pub mod client;
pub mod node;
pub mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use settings::Settings;

/// Errors of the Slurm executor itself (a step's failure is the step's).
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The settings file is unreadable or wrong.
    #[error("settings: {0}")]
    Settings(String),
    /// A Slurm command failed.
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    /// A job file could not be written or read.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// What the client knows of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// Slurm's state (`PENDING`, `RUNNING`, `COMPLETED`, `FAILED` …), or `VANISHED` when the
    /// controller forgot the job and accounting (if any) does not know it either.
    pub state: String,
    /// The exit code Slurm recorded, when it did.
    pub exit_code: Option<i64>,
    /// Why it waits (`Resources`, `Priority` …), when it does.
    pub reason: String,
}

impl JobState {
    /// Whether the job will not change any more. PREEMPTED, REQUEUED and NODE_FAIL are not
    /// final: such a job may be requeued and run again.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "CANCELLED"
                | "FAILED"
                | "TIMEOUT"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "REVOKED"
                | "SPECIAL_EXIT"
                | "VANISHED"
        )
    }
}

/// One watched job.
#[derive(Debug)]
struct Watched {
    state: Option<JobState>,
    /// Polls since submission that did not list it.
    unseen: u32,
}

#[derive(Debug, Default)]
struct Jobs {
    /// Every job of this run (submitted or adopted), by id.
    watched: HashMap<String, Watched>,
    /// Live jobs a previous client left running, by the step key in their comment.
    orphans: HashMap<String, String>,
    /// Set by a submission, so the next polls come quickly.
    nudged: bool,
    /// Whether the run's jobs have been cancelled.
    cancelled: bool,
    /// The last query's error, while queries fail.
    error: Option<String>,
}

impl Jobs {
    /// Starts watching a job, and has the status thread poll soon.
    fn watch(&mut self, id: &str) {
        let fresh = Watched {
            state: None,
            unseen: 0,
        };
        self.watched.insert(id.to_string(), fresh);
        self.nudged = true;
    }
}

/// Submits a run's jobs and keeps their states.
pub struct Slurm {
    settings: Settings,
    /// The job name all jobs on this cache share, so that one `squeue --name` lists them and a
    /// later client finds the jobs of an earlier one.
    job_name: String,
    /// `cache/slurm`: job files, logs and progress, per step key.
    dir: PathBuf,
    exe: PathBuf,
    jobs: Mutex<Jobs>,
    changed: Condvar,
    cancel: Arc<AtomicBool>,
    stop: AtomicBool,
    submitted: AtomicUsize,
    adopted: AtomicUsize,
    queries: AtomicUsize,
}

impl std::fmt::Debug for Slurm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slurm")
            .field("job_name", &self.job_name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What a run did on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Jobs submitted.
    pub submitted: usize,
    /// Running jobs of an earlier client waited for instead of submitting them again.
    pub adopted: usize,
    /// `squeue` (and `sacct`) calls.
    pub queries: usize,
}

impl Slurm {
    /// Prepares to run jobs for a cache in `cache_dir`; `cancel` is the run's Ctrl-C flag.
    /// Lists the live jobs an earlier client on this cache left behind, so that their steps
    /// are waited for, not submitted twice.
    pub fn new(
        settings: Settings,
        cache_dir: &Path,
        cancel: Arc<AtomicBool>,
    ) -> Result<Arc<Slurm>, SlurmError> {
        let canonical = cache_dir
            .canonicalize()
            .unwrap_or_else(|_| cache_dir.to_path_buf());
        let hash = blake3::hash(canonical.to_string_lossy().as_bytes()).to_hex();
        let exe = match &settings.tracelab {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| SlurmError::Io {
                path: "the running tracelab".into(),
                error: e,
            })?,
        };
        let slurm = Arc::new(Slurm {
            settings,
            job_name: format!("tracelab-{}", &hash[..12]),
            dir: canonical.join("slurm"),
            exe,
            jobs: Mutex::new(Jobs::default()),
            changed: Condvar::new(),
            cancel,
            stop: AtomicBool::new(false),
            submitted: AtomicUsize::new(0),
            adopted: AtomicUsize::new(0),
            queries: AtomicUsize::new(0),
        });
        let live = slurm.query()?;
        {
            let mut jobs = slurm.jobs.lock().expect("jobs lock");
            for (id, (comment, state)) in live {
                if !state.is_final() && !comment.is_empty() {
                    jobs.orphans.insert(comment, id);
                }
            }
        }
        let poller = slurm.clone();
        std::thread::Builder::new()
            .name("tracelab-slurm".into())
            .spawn(move || poller.poll_loop())
            .map_err(|e| SlurmError::Io {
                path: "the status thread".into(),
                error: e,
            })?;
        Ok(slurm)
    }

    /// Whether steps of this kind run as jobs.
    pub fn takes(&self, kind: &str) -> bool {
        !self.settings.client_steps.iter().any(|k| k == kind)
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The job name of this cache's jobs.
    pub fn job_name(&self) -> &str {
        &self.job_name
    }

    /// What this run did so far.
    pub fn counts(&self) -> Counts {
        Counts {
            submitted: self.submitted.load(Ordering::Relaxed),
            adopted: self.adopted.load(Ordering::Relaxed),
            queries: self.queries.load(Ordering::Relaxed),
        }
    }

    /// Stops the status thread (the run is over).
    pub fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// The directory of a step key's job files.
    pub fn step_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The live job an earlier client submitted for this key, now watched by this run.
    pub fn adopt(&self, key: &str) -> Option<String> {
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let id = jobs.orphans.remove(key)?;
        jobs.watch(&id);
        self.adopted.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_all();
        Some(id)
    }

    /// Submits `script` as a job with these sbatch arguments (the job name, comment, output
    /// and resources), returning its id.
    pub fn submit(&self, args: &[String], script: &str) -> Result<String, SlurmError> {
        let out = Command::new("sbatch")
            .arg("--parsable")
            .arg(format!("--job-name={}", self.job_name))
            .args(args)
            .arg(format!("--wrap={script}"))
            .output()
            .map_err(|e| command_error("sbatch", &e.to_string()))?;
        if !out.status.success() {
            return Err(command_error(
                "sbatch",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        // `--parsable` prints `id` or `id;cluster`.
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(command_error(
                "sbatch",
                &format!("unexpected output {text:?}"),
            ));
        }
        let mut jobs = self.jobs.lock().expect("jobs lock");
        jobs.watch(&id);
        self.submitted.fetch_add(1, Ordering::Relaxed);
        // Submitted while Ctrl-C's scancel ran: cancelled like the others.
        let late = jobs.cancelled;
        drop(jobs);
        self.changed.notify_all();
        if late {
            self.scancel(std::slice::from_ref(&id));
        }
        Ok(id)
    }

    /// Waits up to `timeout` for job `id` to reach a final state; returns what is known then
    /// (`None`: not listed yet), and the status thread's error while queries fail.
    pub fn wait(&self, id: &str, timeout: Duration) -> (Option<JobState>, Option<String>) {
        let deadline = Instant::now() + timeout;
        let mut jobs = self.jobs.lock().expect("jobs lock");
        loop {
            let state = jobs.watched.get(id).and_then(|w| w.state.clone());
            let now = Instant::now();
            if state.as_ref().is_some_and(JobState::is_final) || now >= deadline {
                return (state, jobs.error.clone());
            }
            jobs = self
                .changed
                .wait_timeout(jobs, deadline - now)
                .expect("jobs lock")
                .0;
        }
    }

    /// Forgets a settled job.
    pub fn release(&self, id: &str) {
        self.jobs.lock().expect("jobs lock").watched.remove(id);
    }

    /// The status thread: one `squeue` per poll for every job of the run while any is not
    /// final, so at most one query per `poll_min_s` whatever the number of jobs; the interval
    /// starts at `poll_min_s` after a submission or a change and grows by half each quiet poll
    /// up to `poll_max_s`. Ctrl-C cancels every job with one `scancel`.
    fn poll_loop(&self) {
        let (min, max) = (self.settings.poll_min_s, self.settings.poll_max_s);
        let mut interval = min;
        loop {
            {
                let jobs = self.jobs.lock().expect("jobs lock");
                let (mut jobs, _) = self
                    .changed
                    .wait_timeout_while(jobs, Duration::from_secs_f64(interval), |j| {
                        // Sleep on unless a submission, the end of the run or a new Ctrl-C
                        // (whose jobs are not cancelled yet) needs this thread.
                        let wanted = j.nudged
                            || self.stop.load(Ordering::SeqCst)
                            || (self.cancel.load(Ordering::SeqCst) && !j.cancelled);
                        !wanted
                    })
                    .expect("jobs lock");
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                if jobs.nudged {
                    // A new job: poll quickly again, but after one short interval, so that
                    // queries grow with the run's duration, never with its number of jobs.
                    jobs.nudged = false;
                    interval = min;
                    continue;
                }
                if self.cancel.load(Ordering::SeqCst) && !jobs.cancelled {
                    jobs.cancelled = true;
                    let live: Vec<String> = jobs
                        .watched
                        .iter()
                        .filter(|(_, w)| !w.state.as_ref().is_some_and(JobState::is_final))
                        .map(|(id, _)| id.clone())
                        .collect();
                    drop(jobs);
                    self.scancel(&live);
                    interval = min;
                    continue;
                }
                if jobs
                    .watched
                    .values()
                    .all(|w| w.state.as_ref().is_some_and(JobState::is_final))
                {
                    continue;
                }
            }
            let changed = self.refresh();
            interval = if changed {
                min
            } else {
                (interval * 1.5).min(max)
            };
        }
    }

    /// One query; updates the watched jobs and wakes their waiters. Returns whether any state
    /// changed.
    fn refresh(&self) -> bool {
        let listed = self.query();
        let mut jobs = self.jobs.lock().expect("jobs lock");
        let listed = match listed {
            Ok(l) => {
                jobs.error = None;
                l
            }
            Err(e) => {
                // The controller may be briefly unreachable; jobs go on meanwhile.
                jobs.error = Some(e.to_string());
                return false;
            }
        };
        let mut changed = false;
        let mut vanished = Vec::new();
        for (id, w) in jobs.watched.iter_mut() {
            match listed.get(id) {
                Some((_, state)) => {
                    if w.state.as_ref() != Some(state) {
                        w.state = Some(state.clone());
                        changed = true;
                    }
                }
                None if w.state.as_ref().is_some_and(JobState::is_final) => {}
                None => {
                    w.unseen += 1;
                    // Listed before and gone, or never listed after a few polls: the controller
                    // forgot it (MinJobAge passed, or it was purged).
                    if w.state.is_some() || w.unseen >= 3 {
                        vanished.push(id.clone());
                    }
                }
            }
        }
        drop(jobs);
        let mut found = Vec::new();
        for id in vanished {
            found.push((id.clone(), self.sacct(&id)));
        }
        let mut jobs = self.jobs.lock().expect("jobs lock");
        for (id, state) in found {
            if let Some(w) = jobs.watched.get_mut(&id) {
                w.state = Some(state);
                changed = true;
            }
        }
        drop(jobs);
        if changed {
            self.changed.notify_all();
        }
        changed
    }

    /// Every job with this run's name, finished ones included: id → (comment, state).
    fn query(&self) -> Result<HashMap<String, (String, JobState)>, SlurmError> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let out = Command::new("squeue")
            .args(["--json", "--states=all", "--name", &self.job_name])
            .output()
            .map_err(|e| command_error("squeue", &e.to_string()))?;
        if !out.status.success() {
            return Err(command_error(
                "squeue",
                String::from_utf8_lossy(&out.stderr).trim(),
            ));
        }
        let doc: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| command_error("squeue --json", &e.to_string()))?;
        Ok(parse_squeue(&doc, &self.job_name))
    }

    /// The final state accounting recorded for a job the controller forgot; `VANISHED` when
    /// there is no accounting (or it does not know the job).
    fn sacct(&self, id: &str) -> JobState {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let vanished = JobState {
            state: "VANISHED".into(),
            exit_code: None,
            reason: "the controller no longer lists it and accounting does not know it".into(),
        };
        let Ok(out) = Command::new("sacct")
            .args(["-n", "-P", "-X", "-o", "State,ExitCode", "-j", id])
            .output()
        else {
            return vanished;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let Some((state, code)) = text.lines().next().and_then(|l| l.split_once('|')) else {
            return vanished;
        };
        if !out.status.success() || state.is_empty() {
            return vanished;
        }
        JobState {
            // `CANCELLED by 0` → `CANCELLED`.
            state: state.split_whitespace().next().unwrap_or(state).to_string(),
            exit_code: code.split(':').next().and_then(|c| c.parse().ok()),
            reason: String::new(),
        }
    }

    /// Cancels these jobs with one `scancel`.
    fn scancel(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        match Command::new("scancel").args(ids).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => tracing::warn!("scancel: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => tracing::warn!("scancel: {e}"),
        }
    }
}

fn command_error(command: &str, message: &str) -> SlurmError {
    SlurmError::Command {
        command: command.to_string(),
        message: message.to_string(),
    }
}

/// The jobs named `name` in `squeue --json`: id → (comment, state). Slurm 22.05 lists every
/// job whatever `--name` says (its JSON output ignores the filters), gives `job_state` as a
/// string and `exit_code` as a raw wait status; later versions give a list of states and an
/// object.
fn parse_squeue(doc: &Value, name: &str) -> HashMap<String, (String, JobState)> {
    let mut out = HashMap::new();
    let jobs = doc["jobs"].as_array().into_iter().flatten();
    for job in jobs.filter(|j| j["name"] == name) {
        let Some(id) = job["job_id"].as_u64() else {
            continue;
        };
        let state = match &job["job_state"] {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .next()
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        };
        let exit_code = match &job["exit_code"] {
            // Slurm 22.05 gives the raw wait status: the exit code is its high byte, and a
            // death by signal N reads as 128 + N, as a shell says it.
            Value::Number(n) => n.as_i64().map(|raw| match raw & 0x7f {
                0 => raw >> 8,
                signal => 128 + signal,
            }),
            Value::Object(o) => o
                .get("return_code")
                .and_then(|r| r.as_i64().or_else(|| r["number"].as_i64())),
            _ => None,
        };
        let reason = job["state_reason"].as_str().unwrap_or("").to_string();
        let comment = job["comment"].as_str().unwrap_or("").to_string();
        out.insert(
            id.to_string(),
            (
                comment,
                JobState {
                    state,
                    exit_code,
                    reason,
                },
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn squeue_json_of_slurm_22_and_of_later_versions_read_alike() {
        let old = json!({"jobs": [{"job_id": 7, "name": "tl", "job_state": "FAILED",
            "exit_code": 256, "state_reason": "NonZeroExitCode", "comment": "abc"},
            {"job_id": 8, "name": "someone else's", "job_state": "RUNNING"}]});
        let new = json!({"jobs": [{"job_id": 7, "name": "tl", "job_state": ["FAILED"],
            "exit_code": {"status": ["ERROR"], "return_code": {"set": true, "number": 1}},
            "state_reason": "NonZeroExitCode", "comment": "abc"}]});
        let want = (
            "abc".to_string(),
            JobState {
                state: "FAILED".into(),
                exit_code: Some(1),
                reason: "NonZeroExitCode".into(),
            },
        );
        assert_eq!(
            parse_squeue(&old, "tl"),
            HashMap::from([("7".into(), want.clone())])
        );
        assert_eq!(parse_squeue(&new, "tl")["7"], want);
        assert!(want.1.is_final());
    }

    #[test]
    fn requeued_preempted_and_node_failed_jobs_are_not_final() {
        for s in [
            "PENDING",
            "RUNNING",
            "REQUEUED",
            "PREEMPTED",
            "NODE_FAIL",
            "COMPLETING",
        ] {
            let st = JobState {
                state: s.into(),
                exit_code: None,
                reason: String::new(),
            };
            assert!(!st.is_final(), "{s}");
        }
    }
}
