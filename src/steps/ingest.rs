//! Step `ingest`: reads one trace pool (SGD dialogues of a service, or an OpenAI chat JSONL file)
//! into `traces.jsonl`, with statistics of what came in.
//!
//! Parameters: `format = "sgd" | "jsonl"`, `path` (SGD root or JSONL file, relative to the project
//! root), `service` (SGD only, required there), `splits = ["train"]`, `single_domain = true`,
//! `on_bad_trace = "error" | "skip"` (JSONL only: SGD files are a fixed dataset and any problem in
//! them is an error).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::conversation::Conversation;
use crate::formats::{self, sgd, OnBadTrace};
use crate::tools::{CallValidator, DEFAULT_RESPOND};

/// Where traces come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// SGD in its original layout.
    Sgd,
    /// OpenAI chat JSONL.
    Jsonl,
}

/// Parameters of `ingest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestParams {
    /// Input format.
    pub format: TraceFormat,
    /// SGD root directory or JSONL file, relative to the project root.
    pub path: String,
    /// SGD service to select (required for SGD).
    #[serde(default)]
    pub service: Option<String>,
    /// SGD splits to read.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
    /// SGD: only dialogues of this one service.
    #[serde(default = "yes")]
    pub single_domain: bool,
    /// JSONL: what to do with a trace that cannot be read.
    #[serde(default)]
    pub on_bad_trace: OnBadTrace,
}

fn default_splits() -> Vec<String> {
    vec!["train".into()]
}
fn yes() -> bool {
    true
}

/// The `meta` key of a JSONL trace that holds `path:line` of the line it was read from.
pub const SOURCE_LINE: &str = "source_line";

/// The `ingest` step.
pub struct Ingest;

impl Step for Ingest {
    fn kind(&self) -> &'static str {
        "ingest"
    }
    fn version(&self) -> u32 {
        // 2: JSONL traces carry meta.source_line (the file and line they were read from).
        2
    }
    fn about(&self) -> &'static str {
        "read a trace pool (SGD service dialogues or OpenAI chat JSONL) into traces.jsonl"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<IngestParams>(params)?;
        let p: IngestParams = serde_json::from_value(v.clone()).expect("just canonicalized");
        match p.format {
            TraceFormat::Sgd if p.service.as_deref().is_none_or(str::is_empty) => {
                return Err(ParamError {
                    path: "service".into(),
                    message: "format \"sgd\" needs a service, e.g. service = \"Restaurants_1\""
                        .into(),
                })
            }
            TraceFormat::Sgd if p.splits.is_empty() => {
                return Err(ParamError {
                    path: "splits".into(),
                    message: "name at least one split (train, dev, test)".into(),
                })
            }
            _ => {}
        }
        Ok(v)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: IngestParams = typed(params)?;
        match p.format {
            TraceFormat::Jsonl => Ok(vec![PathBuf::from(&p.path)]),
            TraceFormat::Sgd => {
                let base = root.join(&p.path);
                let service = p.service.as_deref().unwrap_or_default();
                let mut files = sgd::dialogue_files(&base, &p.splits).map_err(param("splits"))?;
                files.extend(
                    sgd::find_service_schema(&base, service)
                        .map_err(param("service"))?
                        .consulted,
                );
                Ok(files
                    .into_iter()
                    .map(|f| f.strip_prefix(root).map(Path::to_path_buf).unwrap_or(f))
                    .collect())
            }
        }
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: IngestParams = typed(ctx.params)?;
        let path = ctx.resolve(&p.path);
        // SGD pools validate against their own service's schema (a check of the conversion).
        let mut own_tools = None;
        let (convs, skipped) = match p.format {
            TraceFormat::Jsonl => {
                let r = formats::read_conversations(&path, p.on_bad_trace).map_err(data)?;
                // Where each trace came from, so later checks can name the user's file and line.
                let mut convs = r.conversations;
                for (c, line) in convs.iter_mut().zip(&r.lines) {
                    c.meta
                        .insert(SOURCE_LINE.into(), format!("{}:{line}", p.path).into());
                }
                (convs, r.skipped)
            }
            TraceFormat::Sgd => {
                let service = p.service.clone().unwrap_or_default();
                let schema = sgd::find_service_schema(&path, &service).map_err(data)?;
                let tools = sgd::service_to_toolset(&schema.service, DEFAULT_RESPOND)
                    .map_err(|e| StepError::Data(format!("{}: {e}", schema.path.display())))?;
                let kinds: Map<String, Value> = tools
                    .functions
                    .iter()
                    .map(|f| (f.name.clone(), json!(f.kind)))
                    .collect();
                let sel = sgd::Selection {
                    service,
                    splits: p.splits.clone(),
                    single_domain: p.single_domain,
                };
                let mut convs = sgd::read_dialogues(&path, &sel).map_err(data)?;
                for c in &mut convs {
                    c.meta
                        .insert("function_kinds".into(), Value::Object(kinds.clone()));
                }
                own_tools = Some(tools);
                (convs, Vec::new())
            }
        };
        if convs.is_empty() {
            return Err(StepError::Data(format!(
                "{}: no traces selected",
                path.display()
            )));
        }
        let out = ctx.output(Artifact::Traces);
        formats::write_conversations(&out, &convs).map_err(|e| StepError::io(&out, e))?;
        let validator = own_tools.as_ref().map(|t| t.validator());
        for (k, v) in trace_stats(&convs, validator.as_ref()) {
            ctx.stat(&k, v);
        }
        ctx.stat("skipped", skipped.len() as u64);
        if !skipped.is_empty() {
            for why in &skipped {
                ctx.warn(format!("skipped an unreadable trace: {why}"));
            }
            ctx.stat("skipped_traces", json!(skipped));
        }
        Ok(())
    }
}

fn data(e: formats::FormatError) -> StepError {
    StepError::Data(e.to_string())
}

/// Blames a data error on the parameter that asked for what is not there (a service no schema
/// lists, a split with no dialogues), so it is reported at that key of the experiment.
pub(super) fn param(key: &'static str) -> impl Fn(formats::FormatError) -> StepError {
    move |e| match e {
        formats::FormatError::NotFound { .. } | formats::FormatError::Io { .. } => {
            StepError::Param {
                key: key.into(),
                message: e.to_string(),
            }
        }
        other => data(other),
    }
}

/// The most traces ingest can produce with these (canonical) parameters, found cheaply when the
/// experiment is loaded: the SGD dialogues it selects, or the non-blank lines of a JSONL file
/// (some of which `on_bad_trace = "skip"` may leave out).
pub fn pool_bound(params: &Value, root: &Path) -> Result<usize, StepError> {
    let p: IngestParams = typed(params)?;
    let path = root.join(&p.path);
    match p.format {
        TraceFormat::Jsonl => {
            let text = std::fs::read_to_string(&path).map_err(|e| StepError::io(&path, e))?;
            Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
        }
        TraceFormat::Sgd => {
            let sel = sgd::Selection {
                service: p.service.unwrap_or_default(),
                splits: p.splits,
                single_domain: p.single_domain,
            };
            sgd::count_dialogues(&path, &sel).map_err(data)
        }
    }
}

/// Statistics of a trace set: `traces`, `messages`, `assistant_turns`, `calls`,
/// `calls_per_function` (name → count, sorted by name) and, with a validator, `valid_calls` and
/// `valid_share` (calls that validate against the target schema).
pub(crate) fn trace_stats(
    convs: &[Conversation],
    validator: Option<&CallValidator>,
) -> Map<String, Value> {
    let mut per_fn: BTreeMap<&str, u64> = BTreeMap::new();
    let mut calls = 0u64;
    let mut valid = 0u64;
    for c in convs {
        for call in c.calls() {
            calls += 1;
            *per_fn.entry(call.name.as_str()).or_insert(0) += 1;
            if validator.is_some_and(|v| v.check(call).is_ok()) {
                valid += 1;
            }
        }
    }
    let mut m = Map::new();
    m.insert("traces".into(), json!(convs.len()));
    m.insert(
        "messages".into(),
        json!(convs.iter().map(|c| c.messages.len()).sum::<usize>()),
    );
    m.insert(
        "assistant_turns".into(),
        json!(convs.iter().map(|c| c.assistant_turns()).sum::<usize>()),
    );
    m.insert("calls".into(), json!(calls));
    m.insert("calls_per_function".into(), json!(per_fn));
    if validator.is_some() {
        m.insert("valid_calls".into(), json!(valid));
        let share = if calls == 0 {
            0.0
        } else {
            valid as f64 / calls as f64
        };
        m.insert(
            "valid_share".into(),
            json!((share * 10000.0).round() / 10000.0),
        );
    }
    m
}
