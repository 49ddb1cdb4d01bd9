//! The executor on DAGs of step kinds defined here: caching, early cut-off, failure isolation,
//! parallelism, forced reruns, deleted entries and cancellation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use tracelab::cache::Cache;
use tracelab::dag::{Dag, InputRole, Node};
use tracelab::events::{Event, Reporter};
use tracelab::executor::{self, RunOptions};
use tracelab::steps::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};

/// Parameters of the test step: what to write, how long to sleep, whether to fail.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestParams {
    #[serde(default)]
    text: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    fail: bool,
    /// When true, the output ignores the inputs (so reruns of inputs are cut off here).
    #[serde(default)]
    constant: bool,
}

/// Concatenates its inputs' `traces.jsonl` and its text into its own `traces.jsonl`.
struct Concat;

static RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Step for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test step"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        canonicalize::<TestParams>(params)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: TestParams = typed(ctx.params)?;
        let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK.fetch_max(now, Ordering::SeqCst);
        RUNS.lock().unwrap().push(p.text.clone());
        let deadline = Instant::now() + Duration::from_millis(p.sleep_ms);
        while Instant::now() < deadline {
            if let Err(e) = ctx.check_cancelled() {
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        if p.fail {
            return Err(StepError::Data(format!("{} failed on purpose", p.text)));
        }
        let mut out = String::new();
        if !p.constant {
            for (_, dir) in &ctx.inputs.all {
                out.push_str(&std::fs::read_to_string(dir.join("traces.jsonl")).unwrap());
            }
        }
        out.push_str(&p.text);
        std::fs::write(ctx.output(Artifact::Traces), out).unwrap();
        ctx.stat("chars", out_len(&ctx.output(Artifact::Traces)));
        Ok(())
    }
}

fn out_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

static CONCAT: Concat = Concat;

/// Like [`Concat`], but runs on the inputs that completed (as the report does) and writes a
/// line for each missing one.
struct Gather;

static GATHER: Gather = Gather;

impl Step for Gather {
    fn kind(&self) -> &'static str {
        "gather"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "test step on partial inputs"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        canonicalize::<TestParams>(params)
    }
    fn runs_on_partial_inputs(&self) -> bool {
        true
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let mut out = String::new();
        for (label, dir) in &ctx.inputs.all {
            out.push_str(&format!("{label}: "));
            out.push_str(&std::fs::read_to_string(dir.join("traces.jsonl")).unwrap());
            out.push('\n');
        }
        for (label, why) in &ctx.inputs.missing {
            out.push_str(&format!("missing {label}: {why}\n"));
        }
        std::fs::write(ctx.output(Artifact::Traces), out).map_err(|e| StepError::io("out", e))
    }
}

/// Builds a DAG from (label, params, input labels).
fn dag(spec: &[(&str, Value, &[&str])]) -> Dag {
    let mut graph = StableDiGraph::new();
    let mut ids: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for (label, params, inputs) in spec {
        let inputs: Vec<(InputRole, NodeIndex)> = inputs
            .iter()
            .map(|l| (InputRole::Item(l.to_string()), ids[*l]))
            .collect();
        let n = graph.add_node(Node {
            step: &CONCAT,
            params: CONCAT.canonical_params(params).unwrap(),
            label: label.to_string(),
            aliases: vec![],
            inputs: inputs.clone(),
        });
        for (r, from) in inputs {
            graph.add_edge(from, n, r);
        }
        ids.insert(label.to_string(), n);
    }
    let order = petgraph::algo::toposort(&graph, None).unwrap();
    Dag {
        graph,
        order,
        cells: vec![],
        report: None,
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl Reporter for Collect {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

impl Collect {
    fn labels(&self, f: fn(&Event) -> Option<&String>) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| f(e).cloned())
            .collect();
        v.sort();
        v
    }
    fn ran(&self) -> Vec<String> {
        self.labels(|e| match e {
            Event::StepFinished { label, .. } => Some(label),
            _ => None,
        })
    }
    fn cached(&self) -> Vec<String> {
        self.labels(|e| match e {
            Event::StepCached { label, .. } => Some(label),
            _ => None,
        })
    }
}

fn opts(jobs: usize) -> RunOptions {
    RunOptions {
        jobs,
        gpus: 0,
        only: None,
        force: None,
        lock_timeout: None,
        slurm: None,
    }
}

fn run(d: &Dag, cache: &Cache, o: &RunOptions) -> (Collect, executor::Summary) {
    let c = Collect::default();
    let cancel = AtomicBool::new(false);
    let s = executor::run("t", d, cache, cache.dir.parent().unwrap(), o, &c, &cancel).unwrap();
    (c, s)
}

// The tests share the RUNS/PEAK counters, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn diamond(b_text: &str) -> Dag {
    dag(&[
        ("a", json!({"text": "a"}), &[]),
        ("b", json!({"text": b_text}), &["a"]),
        ("c", json!({"text": "c"}), &["a"]),
        ("d", json!({"text": "d"}), &["b", "c"]),
    ])
}

#[test]
fn reruns_exactly_what_changed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let (c, s) = run(&diamond("b"), &cache, &opts(2));
    assert_eq!(c.ran(), ["a", "b", "c", "d"]);
    assert!(s.failures().is_empty());

    let (c, _) = run(&diamond("b"), &cache, &opts(2));
    assert!(c.ran().is_empty(), "no change, nothing runs");
    assert_eq!(c.cached().len(), 4);

    let (c, _) = run(&diamond("b2"), &cache, &opts(2));
    assert_eq!(
        c.ran(),
        ["b", "d"],
        "a parameter of b changed: b and its descendants"
    );

    // Deleting one entry reruns it; its output is identical, so its descendants are cut off.
    let d = diamond("b2");
    let lines = executor::plan(&d, &cache, tmp.path(), "t", None).unwrap();
    let key_c = lines
        .iter()
        .find(|l| l.label == "c")
        .unwrap()
        .cached
        .clone()
        .unwrap();
    cache.remove(&key_c).unwrap();
    let plan = executor::plan(&d, &cache, tmp.path(), "t", None).unwrap();
    assert_eq!(
        plan.iter().find(|l| l.label == "c").unwrap().reason,
        "cache entry missing"
    );
    assert_eq!(
        plan.iter().find(|l| l.label == "d").unwrap().reason,
        "after c runs"
    );
    let (c, _) = run(&d, &cache, &opts(2));
    assert_eq!(c.ran(), ["c"]);
    assert_eq!(c.cached(), ["a", "b", "d"]);
}

#[test]
fn plan_names_the_changed_parameter() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    run(&diamond("b"), &cache, &opts(1));
    let plan = executor::plan(&diamond("bb"), &cache, tmp.path(), "t", None).unwrap();
    let b = plan.iter().find(|l| l.label == "b").unwrap();
    assert_eq!(b.reason, "parameter text changed (\"b\" → \"bb\")");
    assert!(plan
        .iter()
        .find(|l| l.label == "a")
        .unwrap()
        .cached
        .is_some());
}

#[test]
fn early_cut_off_stops_at_identical_output() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let chain = |a: &str| {
        dag(&[
            ("a", json!({"text": a}), &[]),
            ("b", json!({"text": "b", "constant": true}), &["a"]),
            ("c", json!({"text": "c"}), &["b"]),
        ])
    };
    run(&chain("a"), &cache, &opts(1));
    let (c, _) = run(&chain("a2"), &cache, &opts(1));
    assert_eq!(
        c.ran(),
        ["a", "b"],
        "b reran but wrote the same bytes, so c stays cached"
    );
    let cut: Vec<bool> =
        c.0.lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                Event::StepCached { label, cut_off, .. } if label == "c" => Some(*cut_off),
                _ => None,
            })
            .collect();
    assert_eq!(cut, [true]);
}

#[test]
fn a_failure_fails_only_its_descendants() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let d = dag(&[
        ("a", json!({"text": "a"}), &[]),
        ("bad", json!({"text": "bad", "fail": true}), &["a"]),
        ("after-bad", json!({"text": "x"}), &["bad"]),
        ("good", json!({"text": "good"}), &["a"]),
        ("after-good", json!({"text": "y"}), &["good"]),
    ]);
    let (c, s) = run(&d, &cache, &opts(2));
    assert_eq!(c.ran(), ["a", "after-good", "good"]);
    assert_eq!(s.failures(), [("bad", "bad failed on purpose")]);
    let skipped = c.labels(|e| match e {
        Event::StepSkipped { label, .. } => Some(label),
        _ => None,
    });
    assert_eq!(skipped, ["after-bad"]);
    assert!(
        cache.keys().unwrap().len() == 3,
        "no entry for the failed step"
    );
}

#[test]
fn independent_steps_run_in_parallel_up_to_jobs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let spec: Vec<(String, Value)> = (0..6)
        .map(|i| {
            (
                format!("n{i}"),
                json!({"text": format!("p{i}"), "sleep_ms": 150}),
            )
        })
        .collect();
    let spec: Vec<(&str, Value, &[&str])> = spec
        .iter()
        .map(|(l, p)| (l.as_str(), p.clone(), &[][..]))
        .collect();
    PEAK.store(0, Ordering::SeqCst);
    let (c, _) = run(&dag(&spec), &cache, &opts(3));
    assert_eq!(c.ran().len(), 6);
    assert_eq!(
        PEAK.load(Ordering::SeqCst),
        3,
        "three at a time with --jobs 3"
    );
}

#[test]
fn force_reruns_matching_steps_and_cancel_leaves_no_entry() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let d = diamond("b");
    run(&d, &cache, &opts(2));
    let mut o = opts(2);
    let mut g = globset::GlobSetBuilder::new();
    g.add(globset::Glob::new("c").unwrap());
    o.force = Some(g.build().unwrap());
    let (c, _) = run(&d, &cache, &o);
    assert_eq!(
        c.ran(),
        ["c"],
        "forced c reproduces its bytes, so d stays cached"
    );

    // Cancel while a slow step runs: it stops, nothing partial is published.
    let slow = dag(&[
        ("slow", json!({"text": "slow", "sleep_ms": 5000}), &[]),
        ("next", json!({"text": "n"}), &["slow"]),
    ]);
    let cancel = AtomicBool::new(false);
    let collect = Collect::default();
    let before = cache.keys().unwrap().len();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            cancel.store(true, Ordering::SeqCst);
        });
        let t0 = Instant::now();
        let summary =
            executor::run("t", &slow, &cache, tmp.path(), &opts(2), &collect, &cancel).unwrap();
        assert!(summary.interrupted);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the step saw the cancel flag"
        );
    });
    assert_eq!(cache.keys().unwrap().len(), before);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("cache/.tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// The key `label` ran under or was found under in a run.
fn key_of(s: &executor::Summary, label: &str) -> Option<String> {
    s.outcomes
        .iter()
        .find(|(l, _)| l == label)
        .and_then(|(_, o)| match o {
            executor::Outcome::Ran { key, .. } | executor::Outcome::Cached { key, .. } => {
                Some(key.0.clone())
            }
            _ => None,
        })
}

#[test]
fn a_step_on_partial_inputs_runs_on_those_that_completed_under_a_key_of_its_own() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let matrix = |fail: bool| {
        let mut d = dag(&[
            ("a", json!({"text": "a"}), &[]),
            ("bad", json!({"text": "bad", "fail": fail}), &["a"]),
            ("after-bad", json!({"text": "x"}), &["bad"]),
            ("good", json!({"text": "good"}), &["a"]),
            ("all", json!({}), &["after-bad", "good"]),
        ]);
        let n = d.order.iter().copied().find(|n| d.graph[*n].label == "all");
        d.graph[n.unwrap()].step = &GATHER;
        d
    };
    let out = |s: &executor::Summary, d: &Dag| {
        let n = d
            .order
            .iter()
            .find(|n| d.graph[**n].label == "all")
            .unwrap();
        std::fs::read_to_string(s.out_dirs[n].join("traces.jsonl")).unwrap()
    };
    let failing = matrix(true);
    let (c, s) = run(&failing, &cache, &opts(2));
    assert_eq!(c.ran(), ["a", "all", "good"]);
    assert_eq!(
        s.failures(),
        [("bad", "bad failed on purpose")],
        "the run still failed"
    );
    assert_eq!(
        out(&s, &failing),
        "good: agood\nmissing after-bad: bad failed\n"
    );
    let partial = key_of(&s, "all").unwrap();
    assert!(
        cache
            .lookup(&tracelab::cache::StepKey(partial.clone()))
            .is_some(),
        "committed"
    );

    // The same failure again: the same partial output, from the cache.
    let (c, s) = run(&failing, &cache, &opts(2));
    assert!(c.cached().contains(&"all".to_string()), "{:?}", c.ran());
    assert_eq!(key_of(&s, "all").unwrap(), partial);

    // Fixed: the complete output runs under another key; the partial one never stands for it.
    let fixed = matrix(false);
    let (c, s) = run(&fixed, &cache, &opts(2));
    assert!(c.ran().contains(&"all".to_string()), "{:?}", c.ran());
    assert_eq!(out(&s, &fixed), "after-bad: abadx\ngood: agood\n");
    assert_ne!(key_of(&s, "all").unwrap(), partial);

    // With no input complete, it is skipped like any other step.
    let none = {
        let mut d = dag(&[
            ("bad", json!({"text": "bad2", "fail": true}), &[]),
            ("all", json!({}), &["bad"]),
        ]);
        let n = d.order.iter().copied().find(|n| d.graph[*n].label == "all");
        d.graph[n.unwrap()].step = &GATHER;
        d
    };
    let (c, s) = run(&none, &cache, &opts(2));
    assert!(c.ran().is_empty());
    assert!(s
        .outcomes
        .iter()
        .any(|(l, o)| l == "all" && matches!(o, executor::Outcome::Skipped(_))));
}
