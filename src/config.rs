//! Experiment files: parse the TOML, apply `--set` overrides, check every name and parameter
//! against `STEPS`, and report each problem as `file:line:column: what is wrong`.
//!
//! An experiment names its data, scenarios (files in `scenarios/`), pipelines (ordered step kinds),
//! seeds, one parameter table per step kind (`[train]`), and overrides per pipeline or scenario
//! (`[overrides.direct.train]`). Relative paths resolve against the project root: the nearest
//! ancestor of the experiment file that has a `scenarios/` directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use toml::de::{DeTable, DeValue};

use crate::steps;

/// A configuration problem, located in a file (or in a `--set` argument).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigError {
    /// The file, or `--set KEY=VALUE` for command-line overrides.
    pub origin: String,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The dotted key concerned, when there is one.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
    /// The experiment is well-formed but names a file that does not exist (yet): data not
    /// downloaded, a checkpoint not fetched. `gc` skips such experiments instead of refusing.
    pub missing_file: bool,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            if !key.is_empty() {
                write!(f, "key `{key}`: ")?;
            }
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A TOML source kept with its text, so any dotted key can be turned back into a line and column.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path as shown in messages.
    pub origin: String,
    text: String,
}

impl Source {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            position: None,
            key: None,
            message: format!("cannot read: {e}"),
            ..Default::default()
        })?;
        Ok(Source { origin, text })
    }

    /// Parses the text into a TOML table; syntax errors carry their position.
    pub fn parse(&self) -> Result<toml::Table, ConfigError> {
        toml::from_str::<toml::Table>(&self.text).map_err(|e| ConfigError {
            origin: self.origin.clone(),
            position: e.span().map(|s| self.line_col(s.start)),
            key: None,
            message: e.message().trim().to_string(),
            ..Default::default()
        })
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// Position of the deepest existing part of a dotted path (`a.b[2].c`).
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let doc = DeTable::parse(&self.text).ok()?;
        let mut span = doc.span();
        let mut current: Option<&DeValue<'_>> = None;
        let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
        for seg in split_path(path) {
            match seg {
                Segment::Key(k) => {
                    let Some(t) = table else { break };
                    let Some((key, value)) = t.iter().find(|(key, _)| key.get_ref().as_ref() == k)
                    else {
                        break;
                    };
                    span = if matches!(value.get_ref(), DeValue::Table(_)) {
                        key.span()
                    } else {
                        value.span()
                    };
                    current = Some(value.get_ref());
                }
                Segment::Index(i) => {
                    let Some(DeValue::Array(a)) = current else {
                        break;
                    };
                    let Some(item) = a.get(i) else { break };
                    span = item.span();
                    current = Some(item.get_ref());
                }
            }
            table = match current {
                Some(DeValue::Table(t)) => Some(t),
                _ => None,
            };
        }
        Some(self.line_col(span.start))
    }

    /// An error about `path` in this source.
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            position: self.locate(path),
            key: Some(path.to_string()),
            message: message.into(),
            ..Default::default()
        }
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn split_path(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

// ---- The experiment file's schema ---------------------------------------------------------------

/// Keys of the experiment file that are not step tables.
const RESERVED: &[&str] = &[
    "name",
    "description",
    "seeds",
    "scenarios",
    "data",
    "pipelines",
    "overrides",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHead {
    name: Option<String>,
    #[allow(dead_code)] // cosmetic: shown nowhere in keys on purpose
    description: Option<String>,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    scenarios: Vec<String>,
    data: DataSpec,
    pipelines: toml::Table,
    #[serde(default)]
    overrides: toml::Table,
}

fn default_seeds() -> Vec<u64> {
    vec![1]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[allow(dead_code)]
    description: Option<String>,
    steps: Vec<String>,
}

/// Where the traces, tool schema and task come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// `sgd` (original SGD layout) or `jsonl` (OpenAI chat JSONL).
    #[serde(default = "default_format")]
    pub format: String,
    /// SGD root directory or JSONL file.
    pub path: String,
    /// SGD service of the target task (e.g. `Restaurants_1`).
    pub service: Option<String>,
    /// SGD splits to read the target traces from.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// The task description file (Markdown with TOML front matter).
    pub task: String,
    /// A tools JSON file; when absent the schema is derived from SGD's `schema.json`.
    pub tools: Option<String>,
    /// A held-out test set (OpenAI chat JSONL) instead of the seeded split.
    pub test_file: Option<String>,
    /// `error` (default) or `skip` malformed traces.
    #[serde(default = "default_on_bad")]
    pub on_bad_trace: String,
    /// Extra trace pools scenarios draw from, by role (`sister`, `foreign`).
    #[serde(default)]
    pub roles: BTreeMap<String, RoleSpec>,
    /// Where to fetch the data from when `path` is absent (checked by blake3).
    pub download: Option<crate::download::DownloadSpec>,
}

/// A trace pool other than the target's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// Format (defaults to the data's).
    pub format: Option<String>,
    /// Path (defaults to the data's).
    pub path: Option<String>,
    /// SGD service.
    pub service: Option<String>,
    /// SGD splits.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
}

fn default_format() -> String {
    "sgd".into()
}
fn default_splits() -> Vec<String> {
    vec!["train".into()]
}
fn default_on_bad() -> String {
    "error".into()
}

/// One scenario: its name, file and content (the corrupt step's parameters).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (file stem).
    pub name: String,
    /// Parsed content.
    pub table: Value,
    /// Its source, for locating parameter errors.
    pub source: Source,
}

/// One pipeline: a name and its step kinds in order.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Name (`synthetic`, `direct`).
    pub name: String,
    /// Step kinds in order.
    pub steps: Vec<&'static dyn steps::Step>,
}

impl fmt::Debug for dyn steps::Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// A fully checked experiment.
#[derive(Debug)]
pub struct Experiment {
    /// The experiment file.
    pub path: PathBuf,
    /// Project root (relative paths resolve here; holds `scenarios/` and `cache/`).
    pub root: PathBuf,
    /// Experiment name (defaults to the file stem).
    pub name: String,
    /// Seeds of the matrix.
    pub seeds: Vec<u64>,
    /// Data section.
    pub data: DataSpec,
    /// Scenarios in file order.
    pub scenarios: Vec<Scenario>,
    /// Pipelines in file order.
    pub pipelines: Vec<Pipeline>,
    /// Parameter table per step kind, after `--set`.
    step_tables: BTreeMap<String, Value>,
    /// Overrides per pipeline or scenario name, then per step kind.
    overrides: BTreeMap<String, BTreeMap<String, Value>>,
    /// The experiment file's source, for locating errors.
    pub source: Source,
    /// The `--set` overrides applied, so later checks blame them and not the file.
    sets: Vec<SetOverride>,
}

/// One command-line override `KEY=VALUE`.
#[derive(Debug, Clone)]
pub struct SetOverride {
    /// Dotted key.
    pub key: String,
    /// Value as typed (parsed as TOML, else taken as a string).
    pub value: String,
}

impl std::str::FromStr for SetOverride {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
        if k.trim().is_empty() {
            return Err(format!("empty key in {s:?}"));
        }
        Ok(SetOverride {
            key: k.trim().to_string(),
            value: v.to_string(),
        })
    }
}

impl SetOverride {
    /// Whether this override wrote `key`, a table above it, or something inside it. Keys are
    /// compared by whole segments: `scenarios` covers `scenarios[0]`, not `scenarios_extra`.
    fn touches(&self, key: &str) -> bool {
        let within = |long: &str, short: &str| {
            long.strip_prefix(short)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        within(key, &self.key) || within(&self.key, key)
    }

    fn origin(&self) -> String {
        format!("--set {}={}", self.key, self.value)
    }

    fn toml_value(&self) -> toml::Value {
        let parsed: Result<toml::Table, _> = toml::from_str(&format!("v = {}", self.value));
        match parsed {
            Ok(mut t) => t.remove("v").expect("parsed key"),
            Err(_) => toml::Value::String(self.value.clone()),
        }
    }

    fn apply(&self, table: &mut toml::Table) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError {
            origin: self.origin(),
            position: None,
            key: Some(self.key.clone()),
            message,
            ..Default::default()
        };
        let parts: Vec<&str> = self.key.split('.').collect();
        let (last, parents) = parts.split_last().expect("non-empty key");
        let mut t = table;
        for p in parents {
            let entry = t
                .entry(p.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            t = entry
                .as_table_mut()
                .ok_or_else(|| err(format!("`{p}` is not a table")))?;
        }
        t.insert(last.to_string(), self.toml_value());
        Ok(())
    }
}

/// An error about `key`: blamed on the last `--set` that touched it (the bad value came from the
/// command line, and a file position would point at a value that is not the one used), else
/// located in `source`.
fn blame(source: &Source, sets: &[SetOverride], key: &str, message: String) -> ConfigError {
    match sets.iter().rev().find(|s| s.touches(key)) {
        Some(s) => ConfigError {
            origin: s.origin(),
            position: None,
            key: Some(key.to_string()),
            message,
            ..Default::default()
        },
        None => source.error(key, message),
    }
}

/// Finds the project root for an experiment file: the nearest ancestor with `scenarios/`.
pub fn project_root(experiment: &Path) -> PathBuf {
    let abs = std::path::absolute(experiment).unwrap_or_else(|_| experiment.to_path_buf());
    let mut dir = abs.parent();
    while let Some(d) = dir {
        if d.join("scenarios").is_dir() {
            return d.to_path_buf();
        }
        dir = d.parent();
    }
    abs.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn to_json(v: &toml::Value) -> Value {
    serde_json::to_value(v).expect("TOML values are JSON values")
}

impl Experiment {
    /// Loads and checks an experiment file with command-line overrides.
    pub fn load(path: &Path, sets: &[SetOverride]) -> Result<Experiment, ConfigError> {
        let source = Source::read(path)?;
        let mut table = source.parse()?;
        for s in sets {
            s.apply(&mut table)?;
        }
        let locate = |key: &str, message: String| blame(&source, sets, key, message);

        // Split reserved keys from step tables.
        let mut head = toml::Table::new();
        let mut step_tables = BTreeMap::new();
        for (k, v) in table {
            if RESERVED.contains(&k.as_str()) {
                head.insert(k, v);
            } else if steps::find(&k).is_some() || is_data_step(&k) {
                if !v.is_table() {
                    return Err(locate(
                        &k,
                        format!("expected a table of `{k}` step parameters"),
                    ));
                }
                step_tables.insert(k, to_json(&v));
            } else {
                return Err(locate(
                    &k,
                    format!(
                        "unknown key; expected one of {} or a step kind ({})",
                        RESERVED.join(", "),
                        known_kinds()
                    ),
                ));
            }
        }
        let head: FileHead =
            serde_path_to_error::deserialize(toml::Value::Table(head)).map_err(|e| {
                let key = e.path().to_string();
                locate(&key, e.into_inner().message().to_string())
            })?;

        let root = project_root(path);
        let name = head.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map_or_else(|| "experiment".into(), |s| s.to_string_lossy().into_owned())
        });
        if head.seeds.is_empty() {
            return Err(locate("seeds", "at least one seed is needed".into()));
        }
        if !["sgd", "jsonl"].contains(&head.data.format.as_str()) {
            return Err(locate(
                "data.format",
                format!(
                    "unknown format {:?}; expected \"sgd\" or \"jsonl\"",
                    head.data.format
                ),
            ));
        }
        if !["error", "skip"].contains(&head.data.on_bad_trace.as_str()) {
            return Err(locate(
                "data.on_bad_trace",
                format!(
                    "expected \"error\" or \"skip\", got {:?}",
                    head.data.on_bad_trace
                ),
            ));
        }
        for (key, rel) in [
            ("data.path", Some(&head.data.path)),
            ("data.task", Some(&head.data.task)),
            ("data.tools", head.data.tools.as_ref()),
        ] {
            if let Some(rel) = rel {
                let p = root.join(rel);
                let will_download = key == "data.path" && head.data.download.is_some();
                if !will_download && !p.exists() {
                    return Err(ConfigError {
                        missing_file: true,
                        ..locate(
                            key,
                            format!(
                                "file not found: {} (relative paths start at the project root {})",
                                p.display(),
                                root.display()
                            ),
                        )
                    });
                }
            }
        }

        // Scenarios.
        let mut scenarios = Vec::new();
        for (i, name) in head.scenarios.iter().enumerate() {
            let file = root.join("scenarios").join(format!("{name}.toml"));
            if !file.is_file() {
                let known = list_scenarios(&root).join(", ");
                return Err(locate(
                    &format!("scenarios[{i}]"),
                    format!(
                        "unknown scenario {name:?}: no file {}; known: {known}",
                        file.display()
                    ),
                ));
            }
            let src = Source::read(&file)?;
            let t = src.parse()?;
            scenarios.push(Scenario {
                name: name.clone(),
                table: to_json(&toml::Value::Table(t)),
                source: src,
            });
        }
        if scenarios.is_empty() {
            return Err(locate(
                "scenarios",
                "at least one scenario is needed".into(),
            ));
        }

        // Pipelines.
        let mut pipelines = Vec::new();
        for (pname, pv) in &head.pipelines {
            let pf: PipelineFile = serde_path_to_error::deserialize(pv.clone()).map_err(|e| {
                locate(
                    &format!("pipelines.{pname}.{}", e.path()),
                    e.into_inner().message().to_string(),
                )
            })?;
            if pf.steps.is_empty() {
                return Err(locate(
                    &format!("pipelines.{pname}.steps"),
                    format!(
                        "pipeline {pname:?} has no steps; known kinds: {}",
                        known_kinds()
                    ),
                ));
            }
            let mut kinds = Vec::new();
            for (i, k) in pf.steps.iter().enumerate() {
                let step = steps::find(k)
                    .filter(|s| !is_data_step(s.kind()))
                    .ok_or_else(|| {
                        locate(
                            &format!("pipelines.{pname}.steps[{i}]"),
                            format!("unknown step kind {k:?}; known: {}", known_kinds()),
                        )
                    })?;
                kinds.push(step);
            }
            pipelines.push(Pipeline {
                name: pname.clone(),
                steps: kinds,
            });
        }
        if pipelines.is_empty() {
            return Err(locate(
                "pipelines",
                "at least one pipeline is needed".into(),
            ));
        }

        // Overrides: [overrides.<pipeline or scenario>.<kind>].
        let mut overrides = BTreeMap::new();
        for (target, tv) in &head.overrides {
            if !pipelines.iter().any(|p| &p.name == target)
                && !scenarios.iter().any(|s| &s.name == target)
            {
                return Err(locate(
                    &format!("overrides.{target}"),
                    format!("{target:?} is neither a pipeline nor a scenario of this experiment"),
                ));
            }
            let tt = tv.as_table().ok_or_else(|| {
                locate(
                    &format!("overrides.{target}"),
                    "expected a table of step tables".into(),
                )
            })?;
            let mut per_kind = BTreeMap::new();
            for (kind, kv) in tt {
                if steps::find(kind).is_none() && !is_data_step(kind) {
                    return Err(locate(
                        &format!("overrides.{target}.{kind}"),
                        format!("unknown step kind {kind:?}; known: {}", known_kinds()),
                    ));
                }
                if !kv.is_table() {
                    return Err(locate(
                        &format!("overrides.{target}.{kind}"),
                        "expected a table of parameters".into(),
                    ));
                }
                per_kind.insert(kind.clone(), to_json(kv));
            }
            overrides.insert(target.clone(), per_kind);
        }

        let exp = Experiment {
            path: path.to_path_buf(),
            root,
            name,
            seeds: head.seeds,
            data: head.data,
            scenarios,
            pipelines,
            step_tables,
            overrides,
            source: source.clone(),
            sets: sets.to_vec(),
        };
        exp.check_params(&locate)?;
        Ok(exp)
    }

    /// An error about the dotted `key` of the experiment: located in the file, or blamed on the
    /// `--set` that wrote it.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        blame(&self.source, &self.sets, key, message.into())
    }

    /// The parameters of a pipeline step of kind `kind` in a cell: [`Experiment::params_for`],
    /// and for `pretrain` what it takes from the rest of the experiment.
    pub fn cell_params(&self, kind: &str, pipeline: &str, scenario: &str) -> Value {
        let own = self.params_for(kind, Some(pipeline), Some(scenario));
        match kind {
            "pretrain" => self.pretrain_params(&own),
            "phrasebook" => {
                let mut raw = json!({});
                self.corpus_params(&mut raw, &own);
                raw
            }
            _ => own,
        }
    }

    /// The `pretrain` step's parameters under the experiment's `[pretrain]` table (`own`, with
    /// the cell's overrides): the corpus leaves out every service the experiment reads (target
    /// and role pools, besides any the table names), and the tokenizer and student take the
    /// experiment's `[tokenizer]` and `[train]`, so the cells' students have the base's shape.
    fn pretrain_params(&self, own: &Value) -> Value {
        // The experiment's own tables, not a pipeline's or scenario's overrides: every cell
        // shares one base (a cell whose overrides change the architecture is told so by train).
        let mut train = self.params_for("train", None, None);
        if let Some(t) = train.as_object_mut() {
            t.remove("base");
        }
        let mut raw = json!({
            "tokenizer": self.params_for("tokenizer", None, None),
            "train": train,
        });
        self.corpus_params(&mut raw, own);
        raw
    }

    /// Merges a corpus-reading step's table (`own`) into `raw` with the corpus defaults: SGD's
    /// `data.path`, and every service the experiment reads (target and role pools) excluded
    /// besides any the table names.
    fn corpus_params(&self, raw: &mut Value, own: &Value) {
        let d = &self.data;
        let mut services: Vec<String> = d.service.iter().cloned().collect();
        services.extend(d.roles.values().filter_map(|r| r.service.clone()));
        let path = if d.format == "sgd" {
            d.path.clone()
        } else {
            String::new()
        };
        raw["corpus"] = json!({ "path": path });
        merge(raw, own);
        // data.path is a default for an SGD corpus only: a JSONL corpus names its own file.
        if raw["corpus"]["format"] == "jsonl" && own["corpus"]["path"].is_null() {
            raw["corpus"]["path"] = json!("");
        }
        if let Some(listed) = raw["corpus"]["exclude"].as_array() {
            services.extend(listed.iter().filter_map(|v| v.as_str().map(String::from)));
        }
        raw["corpus"]["exclude"] = json!(services);
    }

    /// Parameters of a step kind in a cell: its table, then the pipeline's overrides, then the
    /// scenario's. The result is the raw (not yet canonical) table.
    pub fn params_for(&self, kind: &str, pipeline: Option<&str>, scenario: Option<&str>) -> Value {
        let mut out = self
            .step_tables
            .get(kind)
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        for target in [pipeline, scenario].into_iter().flatten() {
            if let Some(o) = self.overrides.get(target).and_then(|m| m.get(kind)) {
                merge(&mut out, o);
            }
        }
        out
    }

    /// Where a parameter of a step kind is written, for error messages.
    pub fn param_key(
        &self,
        kind: &str,
        pipeline: Option<&str>,
        scenario: Option<&str>,
        path: &str,
    ) -> String {
        let suffix = if path.is_empty() {
            String::new()
        } else {
            format!(".{path}")
        };
        for target in [scenario, pipeline].into_iter().flatten() {
            if let Some(o) = self.overrides.get(target).and_then(|m| m.get(kind)) {
                let first = path.split(['.', '[']).next().unwrap_or("");
                if !first.is_empty() && o.get(first).is_some() {
                    return format!("overrides.{target}.{kind}{suffix}");
                }
            }
        }
        format!("{kind}{suffix}")
    }

    /// Checks every step's parameters in every pipeline × scenario combination.
    fn check_params(
        &self,
        locate: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        for p in &self.pipelines {
            for s in &self.scenarios {
                for step in &p.steps {
                    let mut raw = self.cell_params(step.kind(), &p.name, &s.name);
                    if step.seeded() {
                        raw["seed"] = Value::from(self.seeds[0]);
                    }
                    let canonical = match step.canonical_params(&raw) {
                        Ok(c) => c,
                        Err(e) => {
                            let key =
                                self.param_key(step.kind(), Some(&p.name), Some(&s.name), &e.path);
                            return Err(locate(&key, e.message));
                        }
                    };
                    // Files the step will read (a model checkpoint, a tokenizer) must exist now,
                    // not when the step's turn comes after hours of upstream work.
                    if let Err(e) = step.external_files(&canonical, &self.root) {
                        let (path, message, missing_file) = match e {
                            steps::StepError::Param { key, message } => (key, message, false),
                            steps::StepError::MissingFile { key, message } => (key, message, true),
                            other => (String::new(), other.to_string(), false),
                        };
                        let key = self.param_key(step.kind(), Some(&p.name), Some(&s.name), &path);
                        return Err(ConfigError {
                            missing_file,
                            ..locate(&key, message)
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Step kinds that belong to the data stage (built by the engine, not listed in pipelines).
pub fn is_data_step(kind: &str) -> bool {
    matches!(kind, "ingest" | "schema" | "split" | "corrupt")
}

fn known_kinds() -> String {
    steps::STEPS
        .iter()
        .map(|s| s.kind())
        .filter(|k| !is_data_step(k))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_scenarios(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("scenarios"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Deep-merges `over` into `base` (tables merge key by key; anything else replaces).
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys_and_array_items() {
        let src = Source {
            origin: "x.toml".into(),
            text: "a = 1\n[p.q]\nsteps = [\"a\", \"b\"]\n".into(),
        };
        assert_eq!(src.locate("a"), Some((1, 5)));
        assert_eq!(src.locate("p.q"), Some((2, 4)));
        assert_eq!(src.locate("p.q.steps[1]"), Some((3, 15)));
        assert_eq!(
            src.locate("p.q.missing"),
            Some((2, 4)),
            "deepest existing part"
        );
    }

    #[test]
    fn a_set_touches_keys_by_whole_segments() {
        let s: SetOverride = "scenarios=[\"x\"]".parse().unwrap();
        assert!(s.touches("scenarios"));
        assert!(s.touches("scenarios[0]"));
        assert!(!s.touches("scenarios_extra"));
        let s: SetOverride = "train.width=8".parse().unwrap();
        assert!(s.touches("train"), "a table above the key");
        assert!(s.touches("train.width"));
        assert!(!s.touches("train.widths"));
        assert!(!s.touches("overrides.direct.train.width"));
    }

    #[test]
    fn set_values_are_typed() {
        let s: SetOverride = "train.epochs=2".parse().unwrap();
        assert_eq!(s.toml_value(), toml::Value::Integer(2));
        let s: SetOverride = "data.path=/x/y".parse().unwrap();
        assert_eq!(s.toml_value(), toml::Value::String("/x/y".into()));
        let mut t = toml::Table::new();
        "a.b.c=[1, 2]"
            .parse::<SetOverride>()
            .unwrap()
            .apply(&mut t)
            .unwrap();
        assert_eq!(t["a"]["b"]["c"].as_array().unwrap().len(), 2);
    }
}
