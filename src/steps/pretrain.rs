//! `pretrain`: trains a tokenizer and a tiny student once, in the `tracelab-student` worker, on
//! dialogues that share nothing with the experiment: by default every single-service dialogue of
//! SGD's services the experiment does not read (not the target, sister or foreign pools), each
//! rendered as a cell renders its conversations, with that service's own tools in the header.
//! A cell whose `[train] base = "pretrained"` fine-tunes its weights with its tokenizer.
//!
//! The step reads no cell artifact, so every cell (and every experiment file with the same
//! pretraining parameters) shares one node and one cache entry. Which services went in, and how
//! many conversations each gave, is in `services.json` and the manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tokenizer::MIN_VOCAB;
use super::train::{run_worker, worker_resource};
use super::{canonicalize, Artifact, ParamError, Resource, Step, StepContext, StepError};
use crate::conversation::Conversation;
use crate::formats::sgd;
use crate::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_core::job::WorkerJob;
pub use tracelab_core::job::{CorpusParams, PretrainParams};

/// The `pretrain` step.
pub struct Pretrain;

impl Step for Pretrain {
    fn kind(&self) -> &'static str {
        "pretrain"
    }
    fn version(&self) -> u32 {
        super::train::WORKER_VERSION
    }
    fn about(&self) -> &'static str {
        "train a tokenizer and a base student on dialogues of services the experiment does not use"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Tokenizer, Artifact::Model]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let mut canonical = canonicalize::<PretrainParams>(params)?;
        let err = |path: &str, message: &str| ParamError {
            path: path.into(),
            message: message.into(),
        };
        match canonical["corpus"]["format"].as_str() {
            Some("sgd" | "jsonl") => {}
            _ => {
                return Err(err(
                    "corpus.format",
                    "the pretraining corpus is \"sgd\" (a directory in SGD's layout) or \"jsonl\" \
                     (OpenAI chat JSONL whose lines carry their \"tools\")",
                ))
            }
        }
        if canonical["corpus"]["path"] == "" {
            let message = if canonical["corpus"]["format"] == "jsonl" {
                "a JSONL corpus needs its file ([pretrain.corpus] path)"
            } else {
                "no corpus: data.path is not SGD's, so name one ([pretrain.corpus] path)"
            };
            return Err(err("corpus.path", message));
        }
        let train = super::train::Train.canonical_params(&canonical["train"])?;
        if train["family"] != "tiny" || train["base"] == "pretrained" {
            return Err(err(
                "train",
                "pretraining trains a tiny student from scratch (family \"tiny\", no base)",
            ));
        }
        let tok = &canonical["tokenizer"];
        if !tok["path"].is_null() || !tok["model_dir"].is_null() {
            return Err(err("tokenizer", "pretraining trains its own tokenizer"));
        }
        if tok["vocab_size"].as_u64().unwrap_or(0) < MIN_VOCAB as u64 {
            return Err(err("tokenizer.vocab_size", "too small for the template"));
        }
        sort_exclusions(&mut canonical["corpus"]);
        canonical["train"] = train;
        Ok(canonical)
    }
    fn resource(&self, params: &Value, jobs: usize) -> Resource {
        worker_resource(&params["train"], jobs)
    }
    fn external_files(&self, params: &Value, root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: PretrainParams = super::typed(params)?;
        let dir = Path::new(&p.corpus.path);
        if p.corpus.format == "jsonl" {
            if !root.join(dir).is_file() {
                return Err(StepError::MissingFile {
                    key: "corpus.path".into(),
                    message: format!("{}: no such file", root.join(dir).display()),
                });
            }
            return Ok(vec![dir.to_path_buf()]);
        }
        sgd_corpus_files(&p.corpus, root)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: PretrainParams = super::typed(ctx.params)?;
        let corpus = ctx.out_dir.join(".corpus");
        let services = write_corpus(&ctx.resolve(&p.corpus.path), &p.corpus, &corpus)?;
        if services.is_empty() {
            return Err(StepError::Data(format!(
                "{}: no single-service dialogue outside the excluded services ({})",
                p.corpus.path,
                p.corpus.exclude.join(", ")
            )));
        }
        let record = ctx.out_dir.join("services.json");
        let text = serde_json::to_string_pretty(&services).expect("JSON");
        std::fs::write(&record, text + "\n").map_err(|e| StepError::io(&record, e))?;
        let job = WorkerJob {
            task: "pretrain".into(),
            params: ctx.params.clone(),
            inputs: [("corpus".to_string(), corpus.clone())].into(),
            output: ctx.out_dir.to_path_buf(),
            threads: ctx.threads.max(1),
        };
        let stats = run_worker(ctx, &job);
        // The corpus is SGD's text again: not worth a place in the cache.
        let _ = std::fs::remove_dir_all(&corpus);
        for (k, v) in stats? {
            ctx.stat(&k, v);
        }
        let total: u64 = services.values().filter_map(Value::as_u64).sum();
        ctx.stat("services", services.len());
        ctx.stat("conversations", total);
        ctx.stat("per_service", Value::Object(services));
        Ok(())
    }
}

/// Writes `<service>.jsonl` and `<service>.tools.json` into `dir` for every kept service (or
/// tool set, for a JSONL corpus); returns the conversations written per service.
fn write_corpus(
    corpus: &Path,
    c: &CorpusParams,
    dir: &Path,
) -> Result<serde_json::Map<String, Value>, StepError> {
    let groups = match c.format.as_str() {
        "jsonl" => jsonl_groups(corpus)?,
        _ => sgd_groups(corpus, c)?,
    };
    std::fs::create_dir_all(dir).map_err(|e| StepError::io(dir, e))?;
    let mut counts = serde_json::Map::new();
    for (service, tools, mut convs) in groups {
        if c.per_service > 0 {
            convs.truncate(c.per_service);
        }
        let tools_path = dir.join(format!("{service}.tools.json"));
        let text = serde_json::to_string(&tools.to_openai(true)).expect("JSON");
        std::fs::write(&tools_path, text).map_err(|e| StepError::io(&tools_path, e))?;
        let path = dir.join(format!("{service}.jsonl"));
        crate::formats::write_conversations(&path, &convs).map_err(|e| StepError::io(&path, e))?;
        counts.insert(service, json!(convs.len()));
    }
    Ok(counts)
}

/// Sorts and deduplicates a canonical corpus table's `exclude`: the same services in another
/// order are the same corpus, and the same cache key.
pub(super) fn sort_exclusions(corpus: &mut Value) {
    let exclude: BTreeSet<&str> = corpus["exclude"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    corpus["exclude"] = json!(exclude);
}

/// The files an SGD corpus reads (its dialogue files and schemas), relative to `root` as
/// `corpus.path` is: their contents are part of a step's key.
pub(super) fn sgd_corpus_files(c: &CorpusParams, root: &Path) -> Result<Vec<PathBuf>, StepError> {
    let dir = Path::new(&c.path);
    let mut files = Vec::new();
    for f in sgd::dialogue_files(&root.join(dir), &c.splits)
        .map_err(|e| StepError::Data(e.to_string()))?
    {
        let name = f.file_name().expect("a file").to_owned();
        let split = f.parent().and_then(Path::file_name).expect("in a split");
        files.push(dir.join(split).join(name));
    }
    for split in ["train", "dev", "test"] {
        if root.join(dir).join(split).join("schema.json").is_file() {
            files.push(dir.join(split).join("schema.json"));
        }
    }
    Ok(files)
}

/// One service of the corpus: its name, tools and conversations.
pub(super) type Group = (String, ToolSet, Vec<Conversation>);

/// SGD's single-service dialogues by service, the excluded services left out.
pub(super) fn sgd_groups(sgd_dir: &Path, c: &CorpusParams) -> Result<Vec<Group>, StepError> {
    let excluded: BTreeSet<&str> = c.exclude.iter().map(String::as_str).collect();
    let by_service = sgd::read_single_service(sgd_dir, &c.splits, &|s| !excluded.contains(s))
        .map_err(|e| StepError::Data(e.to_string()))?;
    by_service
        .into_iter()
        .map(|(service, convs)| {
            let schema = sgd::find_service_schema(sgd_dir, &service)
                .map_err(|e| StepError::Data(e.to_string()))?;
            let tools = sgd::service_to_toolset(&schema.service, DEFAULT_RESPOND)
                .map_err(|e| StepError::Data(format!("{}: {e}", schema.path.display())))?;
            Ok((service, tools, convs))
        })
        .collect()
}

/// An OpenAI chat JSONL corpus whose every line declares its `tools`: one group per distinct
/// tool list (`tools-1`, `tools-2` … in order of first appearance).
fn jsonl_groups(path: &Path) -> Result<Vec<Group>, StepError> {
    let text = std::fs::read_to_string(path).map_err(|e| StepError::io(path, e))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut groups: Vec<(Value, Group)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let bad = |message: String| StepError::Data(format!("{at}: {message}"));
        let c =
            crate::formats::openai::parse_line(line, &format!("{name}:{}", i + 1)).map_err(bad)?;
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let Some(tools) = v.get("tools").filter(|t| t.is_array()) else {
            return Err(bad(
                "no \"tools\" list: a pretraining corpus renders each conversation with the \
                 tools it was written against"
                    .into(),
            ));
        };
        match groups.iter_mut().find(|(t, _)| t == tools) {
            Some((_, g)) => g.2.push(c),
            None => {
                let set = ToolSet::from_openai(tools, DEFAULT_RESPOND, &[], &at)
                    .map_err(|e| StepError::Data(e.to_string()))?;
                let group = format!("tools-{}", groups.len() + 1);
                groups.push((tools.clone(), (group, set, vec![c])));
            }
        }
    }
    Ok(groups.into_iter().map(|(_, g)| g).collect())
}
