//! Runs a DAG: every node starts as soon as its inputs exist, within the job, GPU and cache-lock
//! limits; cached nodes are skipped; a failure fails only its descendants, except a step that
//! runs on partial inputs (the report), which runs on those that completed under a key that
//! names the missing ones; Ctrl-C stops cleanly.
//!
//! The same key computation also serves `plan` ([`plan`]), which says for each node whether it is
//! cached and, if not, why it will run.
//!
//! A node's job slots (and GPU) are freed as soon as its own work ends; its worker then hashes
//! the outputs and renames the entry into place without its manifest (see [`Cache::expose`]),
//! and dependents start on those outputs at once, while the worker makes them durable and
//! writes the manifest that commits the entry ([`Exposed::commit`]). Only a committed entry is
//! trusted by later runs; the per-key lock is held until the commit, the run ends only after
//! every commit, and a crash at any point leaves at most a directory in `cache/.tmp/` or an
//! entry without a manifest, which no run trusts.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use globset::GlobSet;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use serde_json::{Map, Value};

use crate::cache::{
    Cache, CacheError, Exposed, Exposure, KeyParts, Lock, LockWait, Manifest, StatCache, StepKey,
};
use crate::dag::{Dag, InputRole, Node};
use crate::events::{Event, Reporter};
use crate::steps::{Inputs, Progress, Resource, StepContext, StepError};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parallel job slots.
    pub jobs: usize,
    /// GPUs available to `Resource::Gpu` steps.
    pub gpus: usize,
    /// Run only nodes matching this (and what they need).
    pub only: Option<GlobSet>,
    /// Ignore the cache for nodes matching this.
    pub force: Option<GlobSet>,
    /// How long to wait for a lock another process holds before failing (`None`: as long as
    /// it takes).
    pub lock_timeout: Option<std::time::Duration>,
    /// Run the steps it takes as Slurm jobs (`None`: every step runs here).
    pub slurm: Option<std::sync::Arc<crate::slurm::Slurm>>,
}

/// Outcome of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Taken from the cache.
    Cached { key: StepKey, cut_off: bool },
    /// Ran and was published.
    Ran { key: StepKey, seconds: f64 },
    /// Failed with this cause.
    Failed(String),
    /// Not run (an input failed, or interrupted).
    Skipped(String),
    /// Left out by `--only`.
    Excluded,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Outcome per node label.
    pub outcomes: Vec<(String, Outcome)>,
    /// Whether Ctrl-C stopped it.
    pub interrupted: bool,
    /// Output directory per node (for nodes that are done).
    pub out_dirs: BTreeMap<NodeIndex, PathBuf>,
}

impl Summary {
    /// Failures as (label, cause).
    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.outcomes
            .iter()
            .filter_map(|(l, o)| match o {
                Outcome::Failed(e) => Some((l.as_str(), e.as_str())),
                _ => None,
            })
            .collect()
    }
}

/// Errors that stop the whole run (not one step).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An external file a step declared could not be read.
    #[error("{label}: {error}")]
    External { label: String, error: String },
}

/// The previous run's key parts per label (`cache/state/<experiment>.json`), for plan reasons.
pub type State = BTreeMap<String, KeyParts>;

fn state_path(cache: &Cache, experiment: &str) -> PathBuf {
    cache.dir.join("state").join(format!("{experiment}.json"))
}

/// Loads the recorded state of an experiment (empty when absent or unreadable).
pub fn load_state(cache: &Cache, experiment: &str) -> State {
    std::fs::read(state_path(cache, experiment))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(cache: &Cache, experiment: &str, update: &State) {
    let path = state_path(cache, experiment);
    let mut state = load_state(cache, experiment);
    if update.iter().all(|(k, v)| state.get(k) == Some(v)) {
        return; // a no-op run writes nothing
    }
    state.extend(update.iter().map(|(k, v)| (k.clone(), v.clone())));
    let _ = std::fs::create_dir_all(path.parent().expect("has parent"));
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    if std::fs::write(&tmp, serde_json::to_vec_pretty(&state).expect("serializes")).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// Shared key computation for `run` and `plan`.
pub struct Keys<'a> {
    dag: &'a Dag,
    root: &'a Path,
    stat: Mutex<StatCache>,
}

impl<'a> Keys<'a> {
    /// Prepares key computation for a DAG.
    pub fn new(dag: &'a Dag, root: &'a Path, cache: &Cache) -> Self {
        Keys {
            dag,
            root,
            stat: Mutex::new(StatCache::load(cache)),
        }
    }

    /// Key parts of a node, given its inputs' (label, output hash).
    pub fn parts(
        &self,
        n: NodeIndex,
        input_hashes: &BTreeMap<NodeIndex, String>,
    ) -> Result<KeyParts, RunError> {
        let node = &self.dag.graph[n];
        let inputs = node
            .inputs
            .iter()
            .map(|(role, from)| {
                (
                    role.name(),
                    self.dag.graph[*from].label.clone(),
                    input_hashes[from].clone(),
                )
            })
            .collect();
        let files = node
            .step
            .external_files(&node.params, self.root)
            .map_err(|e| RunError::External {
                label: node.label.clone(),
                error: e.to_string(),
            })?;
        let abs: Vec<PathBuf> = files.iter().map(|f| self.root.join(f)).collect();
        let hashes = self
            .stat
            .lock()
            .expect("stat cache lock")
            .hash_all(&abs)
            .map_err(|e| RunError::External {
                label: node.label.clone(),
                error: e.to_string(),
            })?;
        let mut external: Vec<(String, String)> = files
            .iter()
            .zip(hashes)
            .map(|(f, hash)| {
                let shown = f
                    .strip_prefix(self.root)
                    .unwrap_or(f)
                    .to_string_lossy()
                    .into_owned();
                (shown, hash)
            })
            .collect();
        external.sort();
        Ok(KeyParts {
            kind: node.step.kind().to_string(),
            version: node.step.version(),
            params: node.params.clone(),
            inputs,
            external,
        })
    }

    /// Saves the stat cache.
    pub fn finish(&self) {
        self.stat.lock().expect("stat cache lock").save();
    }
}

/// Nodes selected by `--only` (matches plus everything they need); all when no filter.
pub fn selected(dag: &Dag, only: Option<&GlobSet>) -> Vec<bool> {
    let mut sel = vec![only.is_none(); dag.graph.node_bound()];
    if let Some(g) = only {
        for &n in &dag.order {
            if dag.graph[n].matches(&|l| g.is_match(l)) {
                sel[n.index()] = true;
                for a in dag.ancestors(n) {
                    sel[a.index()] = true;
                }
            }
        }
    }
    sel
}

/// One line of `tracelab plan`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanLine {
    /// Node label.
    pub label: String,
    /// Cached (with key) or not.
    pub cached: Option<StepKey>,
    /// Why it will run (empty when cached).
    pub reason: String,
}

/// Says for each node whether it is cached and, if not, why it will run.
pub fn plan(
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    experiment: &str,
    force: Option<&GlobSet>,
) -> Result<Vec<PlanLine>, RunError> {
    walk(dag, cache, root, experiment, force, &|k| cache.lookup(k))
}

/// Every cache entry a run of the DAG reaches, as (label, key), whether or not its outputs are
/// still intact: what `tracelab verify` re-hashes.
pub fn reachable(
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    experiment: &str,
) -> Result<Vec<(String, StepKey)>, RunError> {
    let lines = walk(dag, cache, root, experiment, None, &|k| {
        cache.read_manifest(k)
    })?;
    Ok(lines
        .into_iter()
        .filter_map(|l| Some((l.label, l.cached?)))
        .collect())
}

/// The DAG in order, each node's key computed from its inputs' output hashes; `find` says which
/// keys have an entry (and gives its manifest).
fn walk(
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    experiment: &str,
    force: Option<&GlobSet>,
    find: &dyn Fn(&StepKey) -> Option<Manifest>,
) -> Result<Vec<PlanLine>, RunError> {
    let keys = Keys::new(dag, root, cache);
    let state = load_state(cache, experiment);
    let mut hashes: BTreeMap<NodeIndex, String> = BTreeMap::new();
    let mut lines = Vec::new();
    for &n in &dag.order {
        let node = &dag.graph[n];
        let pending: Vec<&str> = node
            .inputs
            .iter()
            .filter(|(_, f)| !hashes.contains_key(f))
            .map(|(_, f)| dag.graph[*f].label.as_str())
            .collect();
        if !pending.is_empty() {
            let mut names = pending.clone();
            names.dedup();
            lines.push(PlanLine {
                label: node.label.clone(),
                cached: None,
                reason: format!("after {} runs", names.join(", ")),
            });
            continue;
        }
        let parts = keys.parts(n, &hashes)?;
        let key = parts.key();
        let forced = force.is_some_and(|g| node.matches(&|l| g.is_match(l)));
        match find(&key) {
            Some(m) if !forced => {
                hashes.insert(n, m.output_hash);
                lines.push(PlanLine {
                    label: node.label.clone(),
                    cached: Some(key),
                    reason: String::new(),
                });
            }
            _ => {
                let reason = if forced {
                    "forced".to_string()
                } else {
                    why(&parts, state.get(&node.label))
                };
                lines.push(PlanLine {
                    label: node.label.clone(),
                    cached: None,
                    reason,
                });
            }
        }
    }
    keys.finish();
    Ok(lines)
}

/// Explains a cache miss by comparing with the parts recorded last time.
fn why(now: &KeyParts, before: Option<&KeyParts>) -> String {
    let Some(b) = before else { return "new".into() };
    if b.version != now.version {
        return format!("step version changed ({} → {})", b.version, now.version);
    }
    let mut reasons = Vec::new();
    if b.params != now.params {
        let (bo, no) = (b.params.as_object(), now.params.as_object());
        let mut keys: Vec<&String> = bo
            .into_iter()
            .flat_map(|m| m.keys())
            .chain(no.into_iter().flat_map(|m| m.keys()))
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let (x, y) = (b.params.get(k), now.params.get(k));
            if x != y {
                let show = |v: Option<&Value>| v.map_or("unset".to_string(), short);
                reasons.push(format!("parameter {k} changed ({} → {})", show(x), show(y)));
            }
        }
        if reasons.is_empty() {
            reasons.push("parameters changed".into());
        }
    }
    for (i, (role, label, hash)) in now.inputs.iter().enumerate() {
        if b.inputs
            .get(i)
            .is_none_or(|(r, _, h)| r != role || h != hash)
        {
            reasons.push(format!("input {label} changed"));
        }
    }
    if b.inputs.len() > now.inputs.len() {
        reasons.push("inputs changed".into());
    }
    if b.external != now.external {
        let changed: Vec<&str> = now
            .external
            .iter()
            .filter(|e| !b.external.contains(e))
            .map(|(p, _)| p.as_str())
            .take(3)
            .collect();
        reasons.push(if changed.is_empty() {
            "external files changed".into()
        } else {
            format!("file {} changed", changed.join(", "))
        });
    }
    if reasons.is_empty() {
        "cache entry missing".into()
    } else {
        reasons.join("; ")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

enum Status {
    Waiting,
    /// Inputs done, key computed, not in the cache: waiting for a job slot. Kept so that a node
    /// that waits for slots has its key computed (and the cache probed) once, not on every event.
    Ready {
        parts: Box<KeyParts>,
        key: StepKey,
        forced: bool,
        /// Inputs that did not complete, with why (a step that runs on partial inputs).
        missing: BTreeMap<NodeIndex, String>,
    },
    Running,
    Done {
        output_hash: String,
    },
    Failed,
    Skipped,
}

pub(crate) struct Launch {
    pub(crate) n: NodeIndex,
    pub(crate) lock_timeout: Option<std::time::Duration>,
    pub(crate) parts: KeyParts,
    pub(crate) key: StepKey,
    pub(crate) forced: bool,
    /// Threads the step may use (its job slots here, its CPUs on a cluster).
    pub(crate) slots: usize,
    pub(crate) gpu: bool,
    /// Runs as a cluster job, not in this process.
    pub(crate) remote: bool,
}

/// What a worker tells the scheduler.
enum Msg {
    /// The node's own work ended (or never started): its slots and GPU are free again, while the
    /// worker goes on publishing.
    Released { slots: usize, gpu: bool },
    /// The node is settled: published (its outputs readable by dependents), reused, failed or
    /// cancelled. `committing`: its worker now makes the entry durable and trusted, and sends
    /// [`Msg::Committed`] when done.
    Finished {
        n: NodeIndex,
        result: Box<Result<Manifest, Failure>>,
        committing: bool,
    },
    /// A published node's entry is committed (or could not be: the error).
    Committed(NodeIndex, Option<String>),
}

/// A step's published entry, and what remains to commit it (with its key lock, held until the
/// entry is committed).
pub(crate) struct Published {
    pub(crate) manifest: Manifest,
    pub(crate) commit: Option<(Exposed, Lock)>,
}

/// Sends [`Msg::Released`] once: when the step's work ends, or when the worker exits early. A
/// step run alone (`exec-step`, a Slurm job) has no scheduler to tell: `tx` is `None`.
struct Release<'a> {
    tx: Option<&'a mpsc::Sender<Msg>>,
    slots: usize,
    gpu: bool,
    sent: Cell<bool>,
}

impl Release<'_> {
    fn send(&self) {
        if let Some(tx) = self.tx.filter(|_| !self.sent.replace(true)) {
            let _ = tx.send(Msg::Released {
                slots: self.slots,
                gpu: self.gpu,
            });
        }
    }
}

/// Runs the DAG.
pub fn run(
    experiment: &str,
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    opts: &RunOptions,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
) -> Result<Summary, RunError> {
    let start = Instant::now();
    let on_wait = |what: &str, holder: &str| {
        reporter.event(&Event::RunWaiting {
            what: what.to_string(),
            holder: holder.to_string(),
        });
    };
    let wait = LockWait {
        timeout: opts.lock_timeout,
        on_wait: &on_wait,
    };
    let _shared = cache.lock_cache(false, &format!("tracelab run {experiment}"), &wait)?;
    cache.clean_stale_tmp();
    let keys = Keys::new(dag, root, cache);
    let sel = selected(dag, opts.only.as_ref());
    let jobs = opts.jobs.max(1);
    reporter.event(&Event::RunStarted {
        experiment: experiment.to_string(),
        steps: dag.order.iter().filter(|n| sel[n.index()]).count(),
        jobs,
    });

    let mut progress = RunProgress::new(dag.graph.node_bound());
    let mut capacity = Capacity {
        free_slots: jobs,
        free_gpus: opts.gpus,
        running: 0,
        committing: 0,
        jobs_out: 0,
        max_jobs: opts
            .slurm
            .as_ref()
            .map_or(usize::MAX, |s| s.settings().max_jobs),
        is_job: vec![false; dag.graph.node_bound()],
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    let (jobs_tx, jobs_rx) = mpsc::channel::<(Launch, Inputs)>();

    let jobs_rx = Mutex::new(jobs_rx);
    // Workers waiting for a job and not yet promised one.
    let idle = AtomicUsize::new(0);
    std::thread::scope(|scope| -> Result<(), RunError> {
        // Dropped when this closure returns, which ends the idle workers' loops.
        let jobs_tx = jobs_tx;
        loop {
            let interrupted = cancel.load(Ordering::Relaxed);
            // Resolve every waiting node whose inputs are settled; launch what fits.
            let mut progressed = true;
            while progressed {
                progressed = false;
                for &n in &dag.order {
                    if !sel[n.index()] {
                        continue;
                    }
                    if matches!(progress.status[n.index()], Status::Waiting) {
                        let ctx = Resolve {
                            dag,
                            keys: &keys,
                            cache,
                            opts,
                            reporter,
                        };
                        progressed |= progress.resolve(n, &ctx, interrupted);
                    }
                    if interrupted || !matches!(progress.status[n.index()], Status::Ready { .. }) {
                        continue;
                    }
                    let node = &dag.graph[n];
                    let remote = opts
                        .slurm
                        .as_ref()
                        .is_some_and(|s| s.takes(node.step.kind()));
                    // A cluster job takes none of this machine's slots or GPUs: the cluster
                    // decides when it runs; its threads are the CPUs it asks Slurm for.
                    let (slots, gpu) = match node.step.resource(&node.params, jobs) {
                        _ if remote => (0, false),
                        Resource::Cpu { slots } => (slots.clamp(1, jobs), false),
                        Resource::Http => (1, false),
                        Resource::Gpu => (1, opts.gpus > 0),
                    };
                    if !capacity.fits(slots, gpu, remote) {
                        continue;
                    }
                    let Status::Ready {
                        parts,
                        key,
                        forced,
                        missing,
                    } = std::mem::replace(&mut progress.status[n.index()], Status::Running)
                    else {
                        unreachable!("checked above")
                    };
                    capacity.take(n, slots, gpu, remote);
                    let inputs_dirs = input_dirs(dag, n, &progress.summary.out_dirs, &missing);
                    let launch = Launch {
                        n,
                        lock_timeout: opts.lock_timeout,
                        parts: *parts,
                        key,
                        forced,
                        slots,
                        gpu,
                        remote,
                    };
                    // A cluster job's start is told once it is submitted, with its job id.
                    if !remote {
                        reporter.event(&Event::StepStarted {
                            label: node.label.clone(),
                            key: launch.key.0.clone(),
                            job: None,
                        });
                    }
                    // A worker that is idle takes the job; otherwise one more is started. Workers
                    // live for the whole run, so a step's start does not wait for a thread to be
                    // created, and each worker's malloc arena stays warm between steps.
                    if idle
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| i.checked_sub(1))
                        .is_err()
                    {
                        let (tx, jobs_rx, idle) = (tx.clone(), &jobs_rx, &idle);
                        let slurm = opts.slurm.as_deref();
                        scope.spawn(move || {
                            worker(
                                dag, cache, root, slurm, reporter, cancel, &tx, jobs_rx, idle,
                            )
                        });
                    }
                    jobs_tx
                        .send((launch, inputs_dirs))
                        .expect("workers live until the run ends");
                    progressed = true;
                }
            }
            if capacity.running == 0 && capacity.committing == 0 {
                break;
            }
            match rx.recv().expect("a worker is running") {
                Msg::Released { slots, gpu } => capacity.release(slots, gpu),
                Msg::Committed(n, error) => {
                    capacity.committing -= 1;
                    if let Some(e) = error {
                        progress.commit_failed(n, &e, dag, reporter);
                    }
                }
                Msg::Finished {
                    n,
                    result,
                    committing,
                } => {
                    capacity.committing += usize::from(committing);
                    capacity.settled(n);
                    progress.record(n, *result, dag, cache, reporter);
                }
            }
        }
        Ok(())
    })?;

    let RunProgress {
        mut summary,
        mut outcome,
        new_state,
        ..
    } = progress;
    summary.interrupted = cancel.load(Ordering::Relaxed);
    for &n in &dag.order {
        let o = if !sel[n.index()] {
            Outcome::Excluded
        } else {
            // A node the interruption left waiting is reported like every other skip, so that
            // `run_finished.skipped` counts the `step_skipped` events.
            outcome.remove(&n).unwrap_or_else(|| {
                reporter.event(&Event::StepSkipped {
                    label: dag.graph[n].label.clone(),
                    reason: "interrupted".into(),
                });
                Outcome::Skipped("interrupted".into())
            })
        };
        summary.outcomes.push((dag.graph[n].label.clone(), o));
    }
    keys.finish();
    save_state(cache, experiment, &new_state);
    let count = |f: fn(&Outcome) -> bool| summary.outcomes.iter().filter(|(_, o)| f(o)).count();
    reporter.event(&Event::RunFinished {
        ran: count(|o| matches!(o, Outcome::Ran { .. })),
        cached: count(|o| matches!(o, Outcome::Cached { .. })),
        failed: count(|o| matches!(o, Outcome::Failed(_))),
        skipped: count(|o| matches!(o, Outcome::Skipped(_))),
        interrupted: summary.interrupted,
        seconds: start.elapsed().as_secs_f64(),
    });
    Ok(summary)
}

/// What a run has found of each node: where it stands, its outcome, its output directory and
/// key parts. The scheduler's bookkeeping, apart from the resources it hands out.
struct RunProgress {
    status: Vec<Status>,
    outcome: BTreeMap<NodeIndex, Outcome>,
    summary: Summary,
    new_state: State,
    /// Nodes whose step ran in this run: a cached dependent of one is a cut-off.
    ran: Vec<bool>,
}

/// What resolving a waiting node reads.
struct Resolve<'a> {
    dag: &'a Dag,
    keys: &'a Keys<'a>,
    cache: &'a Cache,
    opts: &'a RunOptions,
    reporter: &'a dyn Reporter,
}

impl RunProgress {
    fn new(nodes: usize) -> RunProgress {
        RunProgress {
            status: (0..nodes).map(|_| Status::Waiting).collect(),
            outcome: BTreeMap::new(),
            summary: Summary::default(),
            new_state: State::new(),
            ran: vec![false; nodes],
        }
    }

    /// A waiting node whose inputs have settled becomes skipped (an input failed), failed (its
    /// key cannot be computed), done (its entry is cached) or ready to launch. Returns whether
    /// it settled (ready is not settled: it still waits for resources).
    fn resolve(&mut self, n: NodeIndex, ctx: &Resolve<'_>, interrupted: bool) -> bool {
        let node = &ctx.dag.graph[n];
        let missing = match settle(ctx.dag, n, &self.status, interrupted) {
            Settled::Waiting => return false,
            Settled::Skip(bad) => {
                let reason = format!("input {} did not complete", ctx.dag.graph[bad].label);
                ctx.reporter.event(&Event::StepSkipped {
                    label: node.label.clone(),
                    reason: reason.clone(),
                });
                self.status[n.index()] = Status::Skipped;
                self.outcome.insert(n, Outcome::Skipped(reason));
                return true;
            }
            Settled::Ready(missing) => missing,
        };
        // A missing input enters the key as what is missing, never as a hash, so a partial
        // output has a key of its own.
        let hashes: BTreeMap<NodeIndex, String> = node
            .inputs
            .iter()
            .map(|(_, f)| match &self.status[f.index()] {
                Status::Done { output_hash } => (*f, output_hash.clone()),
                _ => (*f, format!("missing: {}", missing[f])),
            })
            .collect();
        let parts = match ctx.keys.parts(n, &hashes) {
            Ok(p) => p,
            Err(e) => {
                ctx.reporter.event(&Event::StepFailed {
                    label: node.label.clone(),
                    error: e.to_string(),
                });
                self.status[n.index()] = Status::Failed;
                self.outcome.insert(n, Outcome::Failed(e.to_string()));
                return true;
            }
        };
        let key = parts.key();
        let forced = ctx
            .opts
            .force
            .as_ref()
            .is_some_and(|g| node.matches(&|l| g.is_match(l)));
        if let Some(m) = ctx.cache.lookup(&key).filter(|_| !forced) {
            let cut_off = node.inputs.iter().any(|(_, f)| self.ran[f.index()]);
            ctx.reporter.event(&Event::StepCached {
                label: node.label.clone(),
                key: key.0.clone(),
                cut_off,
            });
            self.summary.out_dirs.insert(n, ctx.cache.out_dir(&key));
            self.status[n.index()] = Status::Done {
                output_hash: m.output_hash,
            };
            self.outcome.insert(n, Outcome::Cached { key, cut_off });
            self.new_state.insert(node.label.clone(), parts);
            return true;
        }
        self.status[n.index()] = Status::Ready {
            parts: Box::new(parts),
            key,
            forced,
            missing,
        };
        false
    }

    /// A launched node's result: published, reused (another process published the same key),
    /// interrupted or failed.
    fn record(
        &mut self,
        n: NodeIndex,
        result: Result<Manifest, Failure>,
        dag: &Dag,
        cache: &Cache,
        reporter: &dyn Reporter,
    ) {
        let node = &dag.graph[n];
        let label = || node.label.clone();
        let (outcome, status) = match result {
            Ok(m) => {
                tracing::debug!(label = %node.label, "published");
                for message in crate::steps::warnings(&m.stats) {
                    reporter.event(&Event::StepWarning {
                        label: label(),
                        message,
                    });
                }
                reporter.event(&Event::StepFinished {
                    label: label(),
                    key: m.key.0.clone(),
                    seconds: m.duration_s,
                });
                self.summary.out_dirs.insert(n, cache.out_dir(&m.key));
                self.ran[n.index()] = true;
                self.new_state.insert(label(), m.parts.clone());
                let outcome = Outcome::Ran {
                    key: m.key.clone(),
                    seconds: m.duration_s,
                };
                let status = Status::Done {
                    output_hash: m.output_hash,
                };
                (outcome, status)
            }
            Err(Failure::Reused(m)) => {
                reporter.event(&Event::StepCached {
                    label: label(),
                    key: m.key.0.clone(),
                    cut_off: false,
                });
                self.summary.out_dirs.insert(n, cache.out_dir(&m.key));
                self.new_state.insert(label(), m.parts.clone());
                let outcome = Outcome::Cached {
                    key: m.key.clone(),
                    cut_off: false,
                };
                let status = Status::Done {
                    output_hash: m.output_hash,
                };
                (outcome, status)
            }
            Err(Failure::Cancelled) => {
                reporter.event(&Event::StepSkipped {
                    label: label(),
                    reason: "interrupted".into(),
                });
                (Outcome::Skipped("interrupted".into()), Status::Skipped)
            }
            Err(Failure::Error(e)) => {
                reporter.event(&Event::StepFailed {
                    label: label(),
                    error: e.clone(),
                });
                (Outcome::Failed(e), Status::Failed)
            }
        };
        self.outcome.insert(n, outcome);
        self.status[n.index()] = status;
    }

    /// A published entry that could not be committed: the step failed after all.
    fn commit_failed(&mut self, n: NodeIndex, error: &str, dag: &Dag, reporter: &dyn Reporter) {
        let node = &dag.graph[n];
        let e = format!("its cache entry could not be committed: {error}");
        reporter.event(&Event::StepFailed {
            label: node.label.clone(),
            error: e.clone(),
        });
        self.new_state.remove(&node.label);
        self.outcome.insert(n, Outcome::Failed(e));
    }
}

/// What a run hands out: this machine's job slots and GPUs, and the cluster's job budget
/// (`[slurm] max_jobs`); with the launched nodes not yet settled and the entries not yet
/// committed, which keep the run going.
struct Capacity {
    free_slots: usize,
    free_gpus: usize,
    /// Nodes launched and not yet settled (running their step or publishing it).
    running: usize,
    /// Published nodes whose entries are still being committed.
    committing: usize,
    /// Nodes running as cluster jobs, and which nodes those are.
    jobs_out: usize,
    max_jobs: usize,
    is_job: Vec<bool>,
}

impl Capacity {
    fn fits(&self, slots: usize, gpu: bool, remote: bool) -> bool {
        slots <= self.free_slots
            && (!gpu || self.free_gpus > 0)
            && (!remote || self.jobs_out < self.max_jobs)
    }

    fn take(&mut self, n: NodeIndex, slots: usize, gpu: bool, remote: bool) {
        self.free_slots -= slots;
        self.free_gpus -= usize::from(gpu);
        self.running += 1;
        if remote {
            self.jobs_out += 1;
            self.is_job[n.index()] = true;
        }
    }

    /// A step's work ended: its slots and GPU are free again (before it is settled).
    fn release(&mut self, slots: usize, gpu: bool) {
        self.free_slots += slots;
        self.free_gpus += usize::from(gpu);
    }

    /// A launched node settled.
    fn settled(&mut self, n: NodeIndex) {
        self.running -= 1;
        if self.is_job[n.index()] {
            self.jobs_out -= 1;
        }
    }
}

/// What a waiting node's inputs allow.
enum Settled {
    /// Some input is still to come.
    Waiting,
    /// It cannot run: this input did not complete.
    Skip(NodeIndex),
    /// It can run; these inputs did not complete (why), which only a step that runs on
    /// partial inputs accepts.
    Ready(BTreeMap<NodeIndex, String>),
}

/// Decides whether node `n` waits, is skipped, or runs (on which inputs). A step that runs on
/// partial inputs waits until every input is settled and runs when at least one completed;
/// not after an interruption, which leaves inputs unfinished rather than failed.
fn settle(dag: &Dag, n: NodeIndex, status: &[Status], interrupted: bool) -> Settled {
    let node = &dag.graph[n];
    let is_bad = |f: &NodeIndex| matches!(status[f.index()], Status::Failed | Status::Skipped);
    let is_done = |f: &NodeIndex| matches!(status[f.index()], Status::Done { .. });
    let bad = node.inputs.iter().map(|(_, f)| *f).find(is_bad);
    let partial = node.step.runs_on_partial_inputs() && !interrupted;
    match bad {
        None if node.inputs.iter().all(|(_, f)| is_done(f)) => Settled::Ready(BTreeMap::new()),
        None => Settled::Waiting,
        Some(b) if !partial => Settled::Skip(b),
        Some(_) if node.inputs.iter().any(|(_, f)| !is_done(f) && !is_bad(f)) => Settled::Waiting,
        Some(b) if !node.inputs.iter().any(|(_, f)| is_done(f)) => Settled::Skip(b),
        Some(_) => Settled::Ready(
            node.inputs
                .iter()
                .filter(|(_, f)| is_bad(f))
                .map(|(_, f)| (*f, why_missing(dag, *f, status)))
                .collect(),
        ),
    }
}

/// Why input `f` did not complete: the steps that failed, `f` itself or those it needed.
fn why_missing(dag: &Dag, f: NodeIndex, status: &[Status]) -> String {
    let failed = |x: &NodeIndex| matches!(status[x.index()], Status::Failed);
    let mut labels: Vec<&str> = std::iter::once(f)
        .chain(dag.ancestors(f))
        .filter(failed)
        .map(|x| dag.graph[x].label.as_str())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() {
        "did not complete".into()
    } else {
        format!("{} failed", labels.join(", "))
    }
}

fn input_dirs(
    dag: &Dag,
    n: NodeIndex,
    out_dirs: &BTreeMap<NodeIndex, PathBuf>,
    missing: &BTreeMap<NodeIndex, String>,
) -> Inputs {
    let mut inputs = Inputs::default();
    for (role, from) in &dag.graph[n].inputs {
        let label = match role {
            InputRole::Item(l) => l.clone(),
            _ => dag.graph[*from].label.clone(),
        };
        if let Some(why) = missing.get(from) {
            inputs.missing.push((label, why.clone()));
            continue;
        }
        let dir = out_dirs[from].clone();
        match role {
            InputRole::Artifact(a) => {
                inputs.by_artifact.insert(*a, dir.clone());
            }
            InputRole::Role(r) => {
                inputs.roles.insert(r.clone(), dir.clone());
            }
            InputRole::Item(_) => {}
        }
        inputs.all.push((label, dir));
    }
    inputs
}

/// Why a node did not produce an entry.
pub(crate) enum Failure {
    /// Not a failure: another run published this key while we waited for its lock.
    Reused(Box<Manifest>),
    /// The run was interrupted while it ran.
    Cancelled,
    /// It failed with this cause.
    Error(String),
}

impl From<CacheError> for Failure {
    fn from(e: CacheError) -> Self {
        Failure::Error(e.to_string())
    }
}

/// A worker thread: runs the jobs the scheduler sends until the run ends.
#[allow(clippy::too_many_arguments)]
fn worker(
    dag: &Dag,
    cache: &Cache,
    root: &Path,
    slurm: Option<&crate::slurm::Slurm>,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
    tx: &mpsc::Sender<Msg>,
    jobs: &Mutex<mpsc::Receiver<(Launch, Inputs)>>,
    idle: &AtomicUsize,
) {
    loop {
        let job = jobs.lock().expect("job queue lock").recv();
        let Ok((launch, inputs)) = job else {
            return; // the run is over
        };
        let release = Release {
            tx: Some(tx),
            slots: launch.slots,
            gpu: launch.gpu,
            sent: Cell::new(false),
        };
        let node = &dag.graph[launch.n];
        let result = match (&launch.remote, slurm) {
            (true, Some(slurm)) => crate::slurm::client::execute(
                slurm, node, cache, root, &launch, &inputs, reporter, cancel,
            ),
            _ => execute(
                node, cache, root, &launch, &inputs, reporter, cancel, &release,
            ),
        };
        release.send();
        let (result, commit) = match result {
            Ok(p) => (Ok(p.manifest), p.commit),
            Err(e) => (Err(e), None),
        };
        let n = launch.n;
        match commit {
            // Dependents start on the published outputs while this worker commits the entry.
            Some((exposed, lock)) => {
                let _ = tx.send(Msg::Finished {
                    n,
                    result: Box::new(result),
                    committing: true,
                });
                let error = exposed.commit().err().map(|e| e.to_string());
                drop(lock);
                idle.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Msg::Committed(n, error));
            }
            None => {
                // Idle before the scheduler hears of the result, so that the node it launches
                // next can go to this worker instead of a new one.
                idle.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Msg::Finished {
                    n,
                    result: Box::new(result),
                    committing: false,
                });
            }
        }
    }
}

/// Runs one node in a worker thread: lock its key, re-check the cache, run, release its slots
/// (`release`), expose its outputs. The key lock goes with the exposed entry and is held until
/// the entry is committed, so a concurrent run waiting for this key finds a committed entry,
/// never an uncommitted one.
#[allow(clippy::too_many_arguments)]
fn execute(
    node: &Node,
    cache: &Cache,
    root: &Path,
    launch: &Launch,
    inputs: &Inputs,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
    release: &Release<'_>,
) -> Result<Published, Failure> {
    // Another run may be computing the same key: wait for it instead of doing the work twice,
    // and say so.
    let on_wait = |what: &str, holder: &str| {
        reporter.event(&Event::StepWaiting {
            label: node.label.clone(),
            what: what.to_string(),
            holder: holder.to_string(),
        });
    };
    let wait = LockWait {
        timeout: launch.lock_timeout,
        on_wait: &on_wait,
    };
    let lock = cache.lock_key(&launch.key, &node.label, &wait)?;
    if !launch.forced {
        if let Some(m) = cache.lookup(&launch.key) {
            return Err(Failure::Reused(Box::new(m)));
        }
    }
    let pending = cache.begin(&launch.key)?;
    tracing::info!(label = %node.label, key = %launch.key.short(), dir = %pending.dir.display(), "running");
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let t0 = Instant::now();
    let responses = cache.responses_dir();
    let label = node.label.clone();
    let progress = move |p: Progress| {
        reporter.event(&Event::StepProgress {
            label: label.clone(),
            done: p.done,
            total: p.total,
            message: p.message,
        });
    };
    let mut ctx = StepContext {
        params: &node.params,
        inputs,
        out_dir: &pending.out_dir,
        root,
        responses: &responses,
        threads: launch.slots,
        stats: Map::new(),
        cancel,
        progress: &progress,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.step.run(&mut ctx)));
    let duration_s = t0.elapsed().as_secs_f64();
    // The step's work is over: the next ready node may take its slots while this one publishes.
    release.send();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(StepError::Cancelled)) => return Err(Failure::Cancelled),
        Ok(Err(e)) => return Err(Failure::Error(e.to_string())),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            return Err(Failure::Error(format!(
                "step panicked: {}",
                msg.unwrap_or_default()
            )));
        }
    }
    let stats = std::mem::take(&mut ctx.stats);
    let manifest = Manifest {
        key: launch.key.clone(),
        label: node.label.clone(),
        parts: launch.parts.clone(),
        outputs: Vec::new(),
        output_hash: String::new(),
        tracelab_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        duration_s,
        stats,
    };
    if launch.forced {
        cache.remove(&launch.key)?;
    }
    tracing::info!(label = %node.label, seconds = manifest.duration_s, "publishing");
    Ok(match cache.expose(pending, manifest)? {
        Exposure::Existing(manifest) => Published {
            manifest,
            commit: None,
        },
        Exposure::New(exposed) => Published {
            manifest: exposed.manifest.clone(),
            commit: Some((exposed, lock)),
        },
    })
}

/// How a step run on its own ended (a cluster job: `tracelab exec-step`).
#[derive(Debug)]
pub enum Alone {
    /// It ran; its entry is committed.
    Ran(Box<Manifest>),
    /// Another run had published the key meanwhile.
    Reused(Box<Manifest>),
    /// Interrupted (the job was cancelled).
    Cancelled,
    /// It failed with this cause.
    Failed(String),
}

/// Runs one step outside a DAG run, as a cluster job does: the same locking, cache re-check,
/// publication and commit as a step of [`run`], with `threads` threads.
#[allow(clippy::too_many_arguments)]
pub fn run_alone(
    node: &Node,
    cache: &Cache,
    root: &Path,
    parts: KeyParts,
    forced: bool,
    threads: usize,
    inputs: &Inputs,
    reporter: &dyn Reporter,
    cancel: &AtomicBool,
) -> Alone {
    let launch = Launch {
        n: NodeIndex::new(0),
        lock_timeout: None,
        key: parts.key(),
        parts,
        forced,
        slots: threads.max(1),
        gpu: false,
        remote: false,
    };
    let release = Release {
        tx: None,
        slots: 0,
        gpu: false,
        sent: Cell::new(false),
    };
    match execute(
        node, cache, root, &launch, inputs, reporter, cancel, &release,
    ) {
        Ok(Published { manifest, commit }) => {
            if let Some((exposed, lock)) = commit {
                if let Err(e) = exposed.commit() {
                    return Alone::Failed(format!("its cache entry could not be committed: {e}"));
                }
                drop(lock);
            }
            Alone::Ran(Box::new(manifest))
        }
        Err(Failure::Reused(m)) => Alone::Reused(m),
        Err(Failure::Cancelled) => Alone::Cancelled,
        Err(Failure::Error(e)) => Alone::Failed(e),
    }
}
