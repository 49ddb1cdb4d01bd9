//! Expands an experiment's matrix (scenario × pipeline × seed) into a DAG of step nodes.
//!
//! Identical nodes (same kind, canonical parameters and inputs) are one node, so ingest runs once
//! and a corrupt step shared by both pipelines runs once. Each consumed artifact is wired from the
//! most recent producer in the cell's chain; a step whose artifact nobody produced is a dangling
//! input, reported by pipeline and step.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;
use serde_json::{json, Value};

use crate::config::{merge, ConfigError, Experiment};
use crate::steps::{self, Artifact, Step};

/// How a node's input is used by the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputRole {
    /// Provides one consumed artifact.
    Artifact(Artifact),
    /// Provides a trace pool by role (`sister`, `foreign`).
    Role(String),
    /// One of many labelled inputs (the report's cells).
    Item(String),
}

impl InputRole {
    /// Stable text form, used in cache keys and messages.
    pub fn name(&self) -> String {
        match self {
            InputRole::Artifact(a) => a.file_name().to_string(),
            InputRole::Role(r) => format!("role:{r}"),
            InputRole::Item(l) => format!("item:{l}"),
        }
    }
}

/// The matrix cell a node belongs to (the first one, for shared nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    /// Scenario name.
    pub scenario: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Seed.
    pub seed: u64,
}

impl Cell {
    /// `scenario/pipeline/s<seed>`.
    pub fn label(&self) -> String {
        steps::report::cell_label(&self.scenario, &self.pipeline, self.seed)
    }
}

/// One step instance.
pub struct Node {
    /// Its step kind.
    pub step: &'static dyn Step,
    /// Canonical parameters (hashed into the key).
    pub params: Value,
    /// Human label: `data/split`, `clean/s1/corrupt`, `clean/direct/s1/train`, `report`.
    pub label: String,
    /// Labels of other places in the matrix that share this node.
    pub aliases: Vec<String>,
    /// Inputs in a stable order.
    pub inputs: Vec<(InputRole, NodeIndex)>,
}

impl Node {
    /// Whether `pred` matches this node's label or an alias.
    pub fn matches(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        pred(&self.label) || self.aliases.iter().any(|a| pred(a))
    }
}

/// The expanded experiment.
pub struct Dag {
    /// Nodes and edges (input → consumer).
    pub graph: StableDiGraph<Node, InputRole>,
    /// Nodes in a topological order.
    pub order: Vec<NodeIndex>,
    /// The judge node of each cell, for results.
    pub cells: Vec<(Cell, NodeIndex)>,
    /// The report node, when the pipelines judge anything.
    pub report: Option<NodeIndex>,
}

struct Builder<'e> {
    exp: &'e Experiment,
    graph: StableDiGraph<Node, InputRole>,
    seen: HashMap<String, NodeIndex>,
}

impl Builder<'_> {
    /// Adds a node, or returns the identical one already there.
    fn add(
        &mut self,
        step: &'static dyn Step,
        params: Value,
        inputs: Vec<(InputRole, NodeIndex)>,
        label: String,
    ) -> NodeIndex {
        let identity = json!({
            "kind": step.kind(),
            "params": params,
            "inputs": inputs.iter().map(|(r, n)| json!([r.name(), n.index()])).collect::<Vec<_>>(),
        })
        .to_string();
        if let Some(&n) = self.seen.get(&identity) {
            let node = &mut self.graph[n];
            if node.label != label && !node.aliases.contains(&label) {
                node.aliases.push(label);
            }
            return n;
        }
        let n = self.graph.add_node(Node {
            step,
            params,
            label,
            aliases: Vec::new(),
            inputs: inputs.clone(),
        });
        for (role, from) in inputs {
            self.graph.add_edge(from, n, role);
        }
        self.seen.insert(identity, n);
        n
    }

    fn data_step(&self, kind: &str) -> Result<&'static dyn Step, ConfigError> {
        steps::find(kind).ok_or_else(|| ConfigError {
            origin: self.exp.source.origin.clone(),
            position: None,
            key: None,
            message: format!(
                "this build of tracelab has no `{kind}` step, which every experiment needs"
            ),
            ..Default::default()
        })
    }

    /// Canonicalizes a step's parameters and checks the files they name, locating errors with
    /// `locate(path inside the step's table, message)`. Every node goes through here, so a bad
    /// value fails when the experiment is loaded, not when its step's turn comes.
    fn canonical(
        &self,
        step: &dyn Step,
        raw: &Value,
        locate: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Value, ConfigError> {
        let params = step
            .canonical_params(raw)
            .map_err(|e| locate(&e.path, e.message))?;
        match step.external_files(&params, &self.exp.root) {
            Ok(_) => Ok(params),
            Err(steps::StepError::Param { key, message }) => Err(locate(&key, message)),
            Err(steps::StepError::MissingFile { key, message }) => Err(ConfigError {
                missing_file: true,
                ..locate(&key, message)
            }),
            Err(other) => Err(locate("", other.to_string())),
        }
    }

    /// Wires a step's consumed artifacts (given its canonical parameters) from `avail`.
    fn wire(
        &self,
        step: &dyn Step,
        params: &Value,
        avail: &BTreeMap<Artifact, NodeIndex>,
        locate: &dyn Fn(String) -> ConfigError,
    ) -> Result<Vec<(InputRole, NodeIndex)>, ConfigError> {
        step.consumes_with(params)
            .iter()
            .map(|a| {
                avail.get(a).map(|&n| (InputRole::Artifact(*a), n)).ok_or_else(|| {
                    let producers: Vec<&str> =
                        steps::STEPS.iter().filter(|s| s.produces().contains(a)).map(|s| s.kind()).collect();
                    locate(format!(
                        "step `{}` needs {}, which no earlier step produces (dangling input; add one of: {})",
                        step.kind(),
                        a.noun(),
                        producers.join(", ")
                    ))
                })
            })
            .collect()
    }
}

/// Expands an experiment into its DAG.
pub fn build(exp: &Experiment) -> Result<Dag, ConfigError> {
    let mut b = Builder {
        exp,
        graph: StableDiGraph::new(),
        seen: HashMap::new(),
    };
    let d = &exp.data;
    let at =
        |key: &'static str| move |path: &str, msg: String| exp.error(&join_key(key, path), msg);

    // Data stage: ingest the target pool, derive the schema, split off the test set.
    let ingest = b.data_step("ingest")?;
    let mut ingest_params = json!({"format": d.format, "path": d.path, "splits": d.splits, "on_bad_trace": d.on_bad_trace});
    if let Some(s) = &d.service {
        ingest_params["service"] = json!(s);
    }
    merge(&mut ingest_params, &exp.params_for("ingest", None, None));
    let ingest_params = b.canonical(ingest, &ingest_params, &at("data"))?;
    let ingest_node = b.add(ingest, ingest_params, vec![], "data/ingest".into());

    let schema = b.data_step("schema")?;
    let mut schema_params = match &d.tools {
        Some(t) => json!({"format": "tools", "path": t, "task": d.task}),
        None => json!({"format": d.format, "path": d.path, "service": d.service, "task": d.task}),
    };
    merge(&mut schema_params, &exp.params_for("schema", None, None));
    let schema_params = b.canonical(schema, &schema_params, &at("data"))?;
    let schema_node = b.add(schema, schema_params, vec![], "data/schema".into());

    let mut avail: BTreeMap<Artifact, NodeIndex> = BTreeMap::new();
    for a in schema.produces() {
        avail.insert(*a, schema_node);
    }
    for a in ingest.produces() {
        avail.insert(*a, ingest_node);
    }
    let split = b.data_step("split")?;
    let mut split_raw = match &d.test_file {
        Some(f) => json!({"test_file": f}),
        None => json!({}),
    };
    merge(&mut split_raw, &exp.params_for("split", None, None));
    let split_params = b.canonical(split, &split_raw, &at("split"))?;
    let pool = steps::ingest::pool_bound(&b.graph[ingest_node].params, &exp.root)
        .map_err(|e| exp.error("data.path", e.to_string()))?;
    steps::split::check_pool(&split_params, pool, &d.path)
        .map_err(|e| at("split")(&e.path, e.message))?;
    let train_pool = steps::split::train_bound(&split_params, pool);
    let split_inputs = b.wire(split, &split_params, &avail, &|m| exp.error("split", m))?;
    let split_node = b.add(split, split_params, split_inputs, "data/split".into());
    for a in split.produces() {
        avail.insert(*a, split_node);
    }

    let corrupt = b.data_step("corrupt")?;
    let mut role_nodes: BTreeMap<String, NodeIndex> = BTreeMap::new();
    // The most traces each role pool can hold, counted once per role.
    let mut role_pools: BTreeMap<String, usize> = BTreeMap::new();
    let mut cells = Vec::new();
    for &seed in &exp.seeds {
        for sc in &exp.scenarios {
            // Corrupt: the scenario file's table is the step's parameters.
            let mut raw = sc.table.clone();
            merge(&mut raw, &exp.params_for("corrupt", None, Some(&sc.name)));
            if corrupt.seeded() {
                raw["seed"] = json!(seed);
            }
            let params =
                b.canonical(corrupt, &raw, &|path: &str, msg| sc.source.error(path, msg))?;
            let mut inputs = b.wire(corrupt, &params, &avail, &|m| sc.source.error("", m))?;
            for role in corrupt.roles(&params) {
                let n = match role_nodes.get(&role) {
                    Some(&n) => n,
                    None => {
                        let spec = d.roles.get(&role).ok_or_else(|| {
                            sc.source.error("", format!("scenario {:?} needs the trace pool of role {role:?}, which the experiment does not declare: add [data.roles.{role}] to {}", sc.name, exp.source.origin))
                        })?;
                        let mut p = json!({
                            "format": spec.format.clone().unwrap_or_else(|| d.format.clone()),
                            "path": spec.path.clone().unwrap_or_else(|| d.path.clone()),
                            "splits": spec.splits,
                            "on_bad_trace": d.on_bad_trace,
                        });
                        if let Some(s) = &spec.service {
                            p["service"] = json!(s);
                        }
                        merge(&mut p, &exp.params_for("ingest", None, None));
                        let p = b.canonical(ingest, &p, &|path: &str, msg| {
                            exp.error(&join_key(&format!("data.roles.{role}"), path), msg)
                        })?;
                        let bound = steps::ingest::pool_bound(&p, &exp.root).map_err(|e| {
                            exp.error(&format!("data.roles.{role}.path"), e.to_string())
                        })?;
                        role_pools.insert(role.clone(), bound);
                        let n = b.add(ingest, p, vec![], format!("data/ingest:{role}"));
                        role_nodes.insert(role.clone(), n);
                        n
                    }
                };
                inputs.push((InputRole::Role(role), n));
            }
            // Sizes the pools cannot give fail now, not after the upstream work.
            let pools: BTreeMap<String, usize> = corrupt
                .roles(&params)
                .into_iter()
                .filter_map(|r| role_pools.get(&r).map(|n| (r, *n)))
                .collect();
            steps::corrupt::check_pools(&params, train_pool, &pools)
                .map_err(|e| sc.source.error(&e.path, e.message))?;
            let corrupt_node = b.add(
                corrupt,
                params,
                inputs,
                format!("{}/s{seed}/corrupt", sc.name),
            );

            for p in &exp.pipelines {
                let cell = Cell {
                    scenario: sc.name.clone(),
                    pipeline: p.name.clone(),
                    seed,
                };
                let mut chain = avail.clone();
                for a in corrupt.produces() {
                    chain.insert(*a, corrupt_node);
                }
                for (i, step) in p.steps.iter().enumerate() {
                    let mut raw = exp.cell_params(step.kind(), &p.name, &sc.name);
                    if step.seeded() {
                        raw["seed"] = json!(seed);
                    }
                    let params = b.canonical(*step, &raw, &|path: &str, msg| {
                        exp.error(
                            &exp.param_key(step.kind(), Some(&p.name), Some(&sc.name), path),
                            msg,
                        )
                    })?;
                    let inputs = b.wire(*step, &params, &chain, &|m| {
                        exp.error(&format!("pipelines.{}.steps[{i}]", p.name), m)
                    })?;
                    // A step that reads nothing of the cell (pretrain) is the same in every
                    // cell: it is named by its kind alone, as the report is.
                    let label = if inputs.is_empty() {
                        step.kind().to_string()
                    } else {
                        format!("{}/{}", cell.label(), step.kind())
                    };
                    let n = b.add(*step, params, inputs, label);
                    for a in step.produces() {
                        chain.insert(*a, n);
                    }
                }
                if let Some(&judge) = chain.get(&Artifact::Verdicts) {
                    cells.push((cell, judge));
                }
            }
        }
    }

    // Report: one node over every judged cell.
    let report = match (steps::find("report"), cells.is_empty()) {
        (Some(report), false) => {
            let mut raw = json!({
                "experiment": exp.name,
                "cells": cells.iter().map(|(c, _)| json!({"scenario": c.scenario, "pipeline": c.pipeline, "seed": c.seed})).collect::<Vec<_>>(),
                "pipelines": exp.pipelines.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            });
            merge(&mut raw, &exp.params_for("report", None, None));
            let params = b.canonical(report, &raw, &at("report"))?;
            let inputs = cells
                .iter()
                .map(|(c, n)| (InputRole::Item(c.label()), *n))
                .collect();
            Some(b.add(report, params, inputs, "report".into()))
        }
        _ => None,
    };

    let order = topological_order(&b.graph).map_err(|n| ConfigError {
        origin: exp.source.origin.clone(),
        position: None,
        key: None,
        message: format!("the steps form a cycle through `{}`", b.graph[n].label),
        ..Default::default()
    })?;
    Ok(Dag {
        graph: b.graph,
        order,
        cells,
        report,
    })
}

/// Kahn's algorithm, always taking the ready node added first, so nodes run in the order the
/// experiment lists scenarios and pipelines. A cycle is reported through one of its nodes.
pub fn topological_order(
    graph: &StableDiGraph<Node, InputRole>,
) -> Result<Vec<NodeIndex>, NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut indegree: HashMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|n| (n, graph.edges_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BinaryHeap<Reverse<NodeIndex>> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| Reverse(*n))
        .collect();
    let mut order = Vec::with_capacity(indegree.len());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        for e in graph.edges_directed(n, Direction::Outgoing) {
            let d = indegree.get_mut(&e.target()).expect("node exists");
            *d -= 1;
            if *d == 0 {
                ready.push(Reverse(e.target()));
            }
        }
    }
    match indegree
        .into_iter()
        .find(|(n, d)| *d > 0 && !order.contains(n))
    {
        Some((n, _)) => Err(n),
        None => Ok(order),
    }
}

fn join_key(prefix: &str, path: &str) -> String {
    if path.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{path}")
    }
}

impl Dag {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the DAG has no nodes.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every node that (transitively) consumes `n`'s output.
    pub fn descendants(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.reach(n, Direction::Outgoing)
    }

    /// Every node `n` (transitively) needs.
    pub fn ancestors(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.reach(n, Direction::Incoming)
    }

    fn reach(&self, n: NodeIndex, dir: Direction) -> Vec<NodeIndex> {
        let mut out = Vec::new();
        let mut stack = vec![n];
        let mut seen = std::collections::HashSet::new();
        while let Some(x) = stack.pop() {
            for next in self.graph.neighbors_directed(x, dir) {
                if seen.insert(next) {
                    out.push(next);
                    stack.push(next);
                }
            }
        }
        out
    }

    /// Graphviz DOT text.
    pub fn to_dot(&self) -> String {
        self.render(
            "digraph tracelab {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
            |n, label| format!("  n{n} [label=\"{label}\"];"),
            |from, to, role| format!("  n{from} -> n{to} [label=\"{role}\"];"),
            "}\n",
        )
    }

    /// Mermaid flowchart text.
    pub fn to_mermaid(&self) -> String {
        self.render(
            "flowchart LR\n",
            |n, label| format!("  n{n}[\"{label}\"]"),
            |from, to, role| format!("  n{from} -->|{role}| n{to}"),
            "",
        )
    }

    /// Nodes then edges, one line each, between a head and a tail.
    fn render(
        &self,
        head: &str,
        node: fn(usize, &str) -> String,
        edge: fn(usize, usize, &str) -> String,
        tail: &str,
    ) -> String {
        let mut s = String::from(head);
        for &n in &self.order {
            let _ = writeln!(
                s,
                "{}",
                node(n.index(), &self.graph[n].label.replace('"', "'"))
            );
        }
        for e in self.graph.edge_references() {
            let _ = writeln!(
                s,
                "{}",
                edge(e.source().index(), e.target().index(), &e.weight().name())
            );
        }
        s.push_str(tail);
        s
    }
}
