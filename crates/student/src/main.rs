//! `tracelab-student`: the worker process the orchestrator runs for the `tokenizer`, `train` and
//! `predict` steps. It is the only tracelab process that links libtorch.
//!
//! # Contract
//!
//! `tracelab-student JOB.json` where the job file is a `tracelab_core::job::WorkerJob`:
//!
//! ```json
//! {"task": "train", "params": {…canonical step params…},
//!  "inputs": {"traces": "…/traces.jsonl", "tools": "…/tools.json", "tokenizer": "…/tokenizer.json"},
//!  "output": "…/out/model", "threads": 2}
//! ```
//!
//! | task | inputs | output | params |
//! |---|---|---|---|
//! | `tokenizer` | `traces`, `tools`, optional `user_tokenizer` or `checkpoint_tokenizer` | `tokenizer.json` | `TokenizerParams` |
//! | `train` | `traces`, `tools`, `tokenizer`, optional `task` (reference date), `base_model` (qwen3's checkpoint, or tiny's pretrained `model/`) | `model/` | `TrainParams` |
//! | `pretrain` | `corpus` (a directory of `<service>.jsonl` and `<service>.tools.json`) | `tokenizer.json` and `model/` in the output directory | `PretrainParams` |
//! | `predict` | `model`, `tokenizer`, `pairs`, `tools`, `traces` (the training conversations the tiny student's value rules are learned from) | `predictions.jsonl`, and `rules.json` beside it (tiny: the rules it decoded with) | `PredictParams` |
//! | `serve` | `model`, `tokenizer`, `tools`, optional `rules` (a `rules.json` predict wrote; without it, those in `model/config.json`, where `tracelab pack` puts them) | none | `ServeParams` |
//!
//! `serve` (either family) prints `{"ready": {"functions": […], "respond": name}}` once the model
//! is loaded, then
//! answers each `ServeBatch` line on stdin with one `ServeAnswers` line (`tracelab_core::job`)
//! until stdin closes.
//!
//! `checkpoint_tokenizer` (a checkpoint's `tokenizer.json`) is copied byte for byte, nothing
//! added; `user_tokenizer` gets the tiny template's special tokens.
//!
//! Stdout carries one JSON object a line: progress `{"done": n, "total": n|null, "message": "…"}`
//! and, last, `{"stats": {…}}` (statistics for the step's manifest). Diagnostics go to stderr;
//! a non-zero exit status means failure and stderr says why. A line that cannot be written
//! (the orchestrator is gone) ends the worker with status 1.
//!
//! Model families: `params.family` (train) selects the implementation; at predict time a
//! `model/tracelab_student.json` marks a `qwen3` student, otherwise `family` in
//! `model/config.json` names it (`tiny`).
//!
//! - `tiny`: `model/` holds `config.json` (family, architecture, template settings) and
//!   `model.safetensors`.
//! - `qwen3`: `base_model` is the Hugging Face checkpoint directory; the tokenizer must be its
//!   `tokenizer.json`. With `save = "merged"`, `model/` is a Hugging Face checkpoint
//!   (`config.json`, `model.safetensors`, tokenizer and template files) that transformers loads;
//!   with `save = "adapter"`, it is a PEFT adapter (`adapter_config.json`,
//!   `adapter_model.safetensors`, whose `base_model_name_or_path` is the base's absolute path)
//!   plus the tokenizer and template files. Either way `model/tracelab_student.json` records
//!   the family, the save mode, the base (adapter) and the training context.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tracelab_core::job::TokenizerParams;
use tracelab_core::job::{PredictParams, ServeParams, RULES_FILE};
use tracelab_core::job::{PretrainParams, TrainParams, WorkerJob};
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};
use tracelab_student::{
    corpus_texts, data, grammar, predict, prefix, pretrain, qwen3_student, serve,
    template::ChatTemplate, tokenizer, train, Progress, WorkerError,
};

/// Writes one line to the orchestrator. A failed write means it is gone (EPIPE: Rust ignores
/// SIGPIPE, so writes to a closed pipe fail instead of killing us) and nobody will use what this
/// worker makes, so it stops now instead of training on into a directory that may be cleaned.
fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{v}").and_then(|()| out.flush()) {
        // Not eprintln!: it panics when stderr, likely closed as well, cannot be written.
        let _ = writeln!(
            std::io::stderr(),
            "stdout: {e}; stopping (the orchestrator is gone)"
        );
        std::process::exit(1);
    }
}

fn report(p: Progress) {
    emit(&serde_json::to_value(p).expect("progress serializes"));
}

fn input<'a>(job: &'a WorkerJob, name: &str) -> Result<&'a Path, WorkerError> {
    job.inputs
        .get(name)
        .map(PathBuf::as_path)
        .ok_or_else(|| WorkerError::Invalid(format!("job lacks input {name:?}")))
}

fn params<T: serde::de::DeserializeOwned>(job: &WorkerJob) -> Result<T, WorkerError> {
    serde_json::from_value(job.params.clone())
        .map_err(|e| WorkerError::Invalid(format!("params: {e}")))
}

fn tools(job: &WorkerJob) -> Result<ToolSet, WorkerError> {
    ToolSet::load(input(job, "tools")?, DEFAULT_RESPOND, &[])
        .map_err(|e| WorkerError::Invalid(e.to_string()))
}

/// The value rules a tiny student decodes with: learned from the job's `traces` (the training
/// conversations) with `p.rules`' thresholds, read from its `rules` file, or, for a packed
/// student, those of `model/config.json`.
fn value_rules(
    job: &WorkerJob,
    tpl: &ChatTemplate,
    p: &PredictParams,
    saved: train::ValueRules,
) -> Result<train::ValueRules, WorkerError> {
    if let Some(path) = job.inputs.get("traces") {
        let convs = data::read_conversations(path)?;
        return Ok(train::ValueRules::learn(tpl, &convs, &p.rules));
    }
    match job.inputs.get("rules") {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| WorkerError::io(path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| WorkerError::Invalid(format!("{}: {e}", path.display())))
        }
        None => Ok(saved),
    }
}

/// A tiny student from the job's `model`, `tokenizer` and `tools`, ready to decode with `p`,
/// keeping the caches of `prefix_cache` recent prompts for reuse (served requests only).
fn load_tiny(
    job: &WorkerJob,
    p: PredictParams,
    prefix_cache: usize,
) -> Result<serve::Served, WorkerError> {
    let tools = tools(job)?;
    let tok = tokenizer::load(input(job, "tokenizer")?)?;
    let dev = train::device(p.device)?;
    let probe = ChatTemplate::new(tok.clone(), &tools, 0, None).map_err(WorkerError::Invalid)?;
    let (saved, _vs, model) = train::load(
        input(job, "model")?,
        &probe.is_special,
        [probe.sp.arg, probe.sp.end],
        dev,
    )?;
    let tpl = ChatTemplate::new(
        tok,
        &tools,
        saved.max_records,
        saved.reference_date.as_deref(),
    )
    .map_err(WorkerError::Invalid)?;
    let rules = value_rules(job, &tpl, &p, saved.rules)?;
    let spans = grammar::SpanSetup::new(&tpl, &rules, &p.decoding);
    Ok(serve::Served {
        rules,
        digits: grammar::digit_tokens(&tpl),
        model,
        tpl,
        spans,
        params: p,
        dev,
        prefixes: std::cell::RefCell::new(prefix::PrefixCache::new(prefix_cache)),
    })
}

/// Refuses to fine-tune a pretrained base with a tokenizer other than its own: a vocabulary of
/// the same size with other ids would train, on garbage.
fn same_tokenizer(tokenizer: &Path, base: &Path) -> Result<(), WorkerError> {
    let own = pretrain::base_tokenizer(base);
    let read = |p: &Path| std::fs::read(p).map_err(|e| WorkerError::io(p, e));
    if read(tokenizer)? != read(&own)? {
        return Err(WorkerError::Invalid(format!(
            "the tokenizer {} is not the pretrained base's ({}): a student fine-tuned from the \
             base must use its tokenizer (put `pretrain`, not `tokenizer`, before `train` in the \
             pipeline)",
            tokenizer.display(),
            own.display()
        )));
    }
    Ok(())
}

fn run(job: &WorkerJob) -> Result<Value, WorkerError> {
    tch::set_num_threads(job.threads.max(1) as i32);
    match job.task.as_str() {
        "tokenizer" => {
            let p: TokenizerParams = params(job)?;
            if let Some(path) = job.inputs.get("checkpoint_tokenizer") {
                // A checkpoint's tokenizer is the student's vocabulary: parsed to check it, then
                // copied byte for byte so train can tell it is the checkpoint's own.
                let tok = tokenizer::load(path)?;
                std::fs::copy(path, &job.output).map_err(|e| WorkerError::io(path, e))?;
                return Ok(json!({"vocab_size": tok.get_vocab_size(true), "source": "checkpoint"}));
            }
            let tok = match job.inputs.get("user_tokenizer") {
                Some(path) => tokenizer::load(path)?,
                None => {
                    let convs = data::read_conversations(input(job, "traces")?)?;
                    let texts = corpus_texts(&convs, &tools(job)?);
                    tokenizer::train_bpe(&texts, p.vocab_size, p.min_frequency)?
                }
            };
            tokenizer::save(&tok, &job.output)?;
            Ok(json!({"vocab_size": tok.get_vocab_size(true)}))
        }
        "train" => {
            let p: TrainParams = params(job)?;
            let tools = tools(job)?;
            match p.family.as_str() {
                "tiny" => {}
                "qwen3" => {
                    let convs = data::read_conversations(input(job, "traces")?)?;
                    return qwen3_student::train(
                        &p,
                        input(job, "base_model")?,
                        input(job, "tokenizer")?,
                        &tools,
                        &convs,
                        &job.output,
                        &mut report,
                    );
                }
                other => {
                    return Err(WorkerError::Invalid(format!(
                        "unknown model family {other:?}; this worker knows tiny, qwen3"
                    )))
                }
            }
            let tok = tokenizer::load(input(job, "tokenizer")?)?;
            let reference = match job.inputs.get("task") {
                Some(path) => Some(
                    tracelab_core::task::Task::load(path)
                        .map_err(|e| WorkerError::Invalid(e.to_string()))?
                        .settings
                        .reference_date,
                ),
                None => None,
            };
            let tpl = ChatTemplate::new(tok, &tools, p.max_records, reference.as_deref())
                .map_err(WorkerError::Invalid)?;
            let convs = data::read_conversations(input(job, "traces")?)?;
            let base = job.inputs.get("base_model").map(PathBuf::as_path);
            if let Some(dir) = base {
                same_tokenizer(input(job, "tokenizer")?, dir)?;
            }
            train::train(
                &p,
                &tpl,
                &convs,
                reference.as_deref(),
                base,
                &job.output,
                &mut report,
            )
        }
        "pretrain" => {
            let p: PretrainParams = params(job)?;
            let corpus = pretrain::read_corpus(input(job, "corpus")?)?;
            pretrain::pretrain(&p, &corpus, &job.output, &mut report)
        }
        "predict" => {
            let p: PredictParams = params(job)?;
            let tools = tools(job)?;
            if let Some(sidecar) = qwen3_student::read_sidecar(input(job, "model")?)? {
                let pairs = data::read_pairs(input(job, "pairs")?)?;
                let (calls, stats) = qwen3_student::predict(
                    input(job, "model")?,
                    input(job, "tokenizer")?,
                    &tools,
                    &pairs,
                    &p,
                    &sidecar,
                    &mut report,
                )?;
                data::write_predictions(&job.output, &pairs, &calls)?;
                return Ok(stats);
            }
            let served = load_tiny(job, p, 0)?;
            let pairs = data::read_pairs(input(job, "pairs")?)?;
            let (calls, stats) = predict::predict(
                &served.model,
                &served.tpl,
                &pairs,
                &served.params,
                &served.spans,
                served.dev,
                &mut report,
            );
            data::write_predictions(&job.output, &pairs, &calls)?;
            // The rules beside the predictions: what `tracelab serve --cell` and `pack` use.
            let rules_path = job.output.with_file_name(RULES_FILE);
            let text = serde_json::to_string_pretty(&served.rules).expect("rules serialize");
            std::fs::write(&rules_path, text).map_err(|e| WorkerError::io(&rules_path, e))?;
            let mut stats = stats;
            if let Value::Object(m) = &mut stats {
                m.insert("rules".into(), Value::Object(served.rules.stats()));
            }
            Ok(stats)
        }
        "serve" => {
            let ServeParams {
                predict: p,
                prefix_cache,
            } = params(job)?;
            let model_dir = input(job, "model")?;
            let served: Box<dyn serve::Answerer> = match qwen3_student::read_sidecar(model_dir)? {
                Some(sidecar) => Box::new(qwen3_student::Qwen3Served::load(
                    model_dir,
                    input(job, "tokenizer")?,
                    tools(job)?,
                    &p,
                    &sidecar,
                )?),
                None => Box::new(load_tiny(job, p, prefix_cache)?),
            };
            emit(&json!({"ready": {
                "functions": served.functions(),
                "respond": served.respond_name(),
            }}));
            serve::serve(served.as_ref(), std::io::stdin().lock(), &mut |v| emit(v))?;
            Ok(json!({}))
        }
        other => Err(WorkerError::Invalid(format!(
            "unknown task {other:?} (tokenizer, pretrain, train, predict, serve)"
        ))),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, job_path] = args.as_slice() else {
        eprintln!("usage: tracelab-student JOB.json   (see the module docs for the job format)");
        std::process::exit(2);
    };
    let job: WorkerJob = match std::fs::read_to_string(job_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            eprintln!("{job_path}: {e}");
            std::process::exit(2);
        }
    };
    match run(&job) {
        Ok(stats) => emit(&json!({ "stats": stats })),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
