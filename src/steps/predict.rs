//! `predict`: the trained student answers every evaluation pair with one schema-valid call
//! (constrained greedy decoding in the `tracelab-student` worker), or, with `model = "http"`, any
//! OpenAI-compatible endpoint does (see [`crate::http_predictor`]), so a teacher or a deployed
//! model becomes a row of the table. The tiny student's value rules (which arguments are copied
//! spans, their vocabularies, the words that are evidence for an optional argument) are learned
//! here from the cell's training conversations, not in `train`: a change to them, or to
//! `[predict.rules]`, reruns predict and judge only. The worker writes them beside the
//! predictions (`rules.json`), where `tracelab serve --cell` and `tracelab pack` find them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracelab_core::tools::{ToolSet, DEFAULT_RESPOND};

use super::train::{job, run_worker};

use super::{canonicalize, Artifact, ParamError, Resource, Step, StepContext, StepError};
use crate::http_predictor::{predict_all, PredictorError};
use crate::llm::{LlmClient, LlmConfig};
pub use tracelab_core::job::PredictParams;

/// `[predict]` with `model = "http"`: an endpoint answers instead of the cell's student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPredictParams {
    /// Always `"http"`.
    pub model: String,
    /// The endpoint (`[predict.http]`); `temperature` defaults to 0 here (greedy, as the
    /// students decode).
    pub http: LlmConfig,
}

/// Which predictor the parameters name.
fn is_http(params: &Value) -> bool {
    params.get("model").and_then(Value::as_str) == Some("http")
}

/// The canonical parameters of an HTTP predictor.
fn http_params(params: &Value) -> Result<Value, ParamError> {
    let mut raw = params.clone();
    match raw.get_mut("http") {
        Some(Value::Object(h)) => {
            h.entry("temperature").or_insert(json!(0.0));
        }
        _ => {
            return Err(ParamError {
                path: "http".into(),
                message: "model = \"http\" needs a [predict.http] table with base_url and model"
                    .into(),
            })
        }
    }
    let v = canonicalize::<HttpPredictParams>(&raw)?;
    let p: HttpPredictParams = serde_json::from_value(v.clone()).expect("canonical");
    p.http.check().map_err(|(key, message)| ParamError {
        path: format!("http.{key}"),
        message,
    })?;
    Ok(v)
}

/// The canonical parameters of the cell's student, its rule thresholds checked.
fn student_params(params: &Value) -> Result<Value, ParamError> {
    let v = canonicalize::<PredictParams>(params)?;
    let p: PredictParams = serde_json::from_value(v.clone()).expect("canonical");
    p.rules.check()?;
    Ok(v)
}

/// The `predict` step.
pub struct Predict;

/// Revision of the worker's decoding alone on top of [`super::train::WORKER_VERSION`] (which
/// covers what all three worker steps share): bumped for a decoding change that needs no
/// retraining. Since version 11: 1, evidence words are the fewest likeliest that cover the
/// calls (`fewest_covering`); 2, grounded replies and feasible calls on by default.
const DECODE_REVISION: u32 = 2;

impl Step for Predict {
    fn kind(&self) -> &'static str {
        "predict"
    }
    fn version(&self) -> u32 {
        // Decoding changes alone do not retrain: they bump DECODE_REVISION.
        super::train::WORKER_VERSION * 100 + DECODE_REVISION
    }
    fn about(&self) -> &'static str {
        "answer every evaluation pair with the student (schema-constrained greedy decoding) or an OpenAI-compatible endpoint (model = \"http\")"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[
            Artifact::Model,
            Artifact::Tokenizer,
            Artifact::Pairs,
            Artifact::Tools,
            Artifact::Traces,
        ]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Predictions]
    }
    fn consumes_with(&self, params: &Value) -> &'static [Artifact] {
        if is_http(params) {
            &[Artifact::Pairs, Artifact::Tools]
        } else {
            self.consumes()
        }
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        match params.get("model") {
            Some(_) if is_http(params) => http_params(params),
            // The student is the default: naming it leaves the cache key as it was.
            None => student_params(params),
            Some(Value::String(s)) if s == "student" => {
                let mut rest = params.clone();
                rest.as_object_mut().expect("a table").remove("model");
                student_params(&rest)
            }
            Some(other) => Err(ParamError {
                path: "model".into(),
                message: format!("must be \"student\" (the cell's trained model) or \"http\" (an OpenAI-compatible endpoint), got {other}"),
            }),
        }
    }
    fn resource(&self, params: &Value, jobs: usize) -> Resource {
        if is_http(params) {
            // Waiting on the network: one slot, whatever the endpoint's concurrency.
            return Resource::Cpu { slots: 1 };
        }
        super::train::worker_resource(params, jobs)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        if is_http(ctx.params) {
            return run_http(ctx);
        }
        let out = ctx.output(Artifact::Predictions);
        let job = job(
            ctx,
            "predict",
            &[
                ("model", Artifact::Model),
                ("tokenizer", Artifact::Tokenizer),
                ("pairs", Artifact::Pairs),
                ("tools", Artifact::Tools),
                ("traces", Artifact::Traces),
            ],
            &out,
        )?;
        let stats = run_worker(ctx, &job)?;
        for (k, v) in stats {
            ctx.stat(&k, v);
        }
        Ok(())
    }
}

/// The HTTP predictor: every pair to the endpoint, the answers as `predictions.jsonl` (a row
/// whose answer held no readable call has `"prediction": null` and an `"error"`, which the judge
/// counts as unreadable).
fn run_http(ctx: &mut StepContext<'_>) -> Result<(), StepError> {
    let p: HttpPredictParams =
        serde_json::from_value(ctx.params.clone()).expect("canonical parameters");
    let pairs_path = ctx.input(Artifact::Pairs)?;
    let pairs = tracelab_core::formats::read_pairs(&pairs_path)
        .map_err(|e| StepError::Data(e.to_string()))?;
    let tools_path = ctx.input(Artifact::Tools)?;
    let tools = ToolSet::load(&tools_path, DEFAULT_RESPOND, &[])
        .map_err(|e| StepError::Data(e.to_string()))?;
    let client = LlmClient::new(p.http, ctx.responses).map_err(|e| StepError::Param {
        key: "http".into(),
        message: e.to_string(),
    })?;
    let total = pairs.len() as u64;
    let progress = |done: usize| ctx.report(done as u64, Some(total), "pairs");
    let (calls, stats) = predict_all(Arc::new(client), &pairs, &tools, &progress, ctx.cancel)
        .map_err(|e| match e {
            PredictorError::Cancelled => StepError::Cancelled,
            other => StepError::External(format!(
                "{other}; accepted answers are cached, so a rerun repeats only the failed requests"
            )),
        })?;
    // The student's row form (the step's output directory is published atomically).
    let rows = pairs.iter().zip(&calls).map(|(pair, call)| {
        let mut row = json!({
            "id": pair.id,
            "question": pair.question,
            "answer": pair.answer.to_plain_json(),
        });
        match call {
            Ok(c) => row["prediction"] = c.to_plain_json(),
            Err(why) => {
                row["prediction"] = Value::Null;
                row["error"] = json!(why);
            }
        }
        row
    });
    super::filter::write_jsonl(&ctx.output(Artifact::Predictions), rows)?;
    ctx.stat("pairs", pairs.len());
    ctx.stat("unreadable", stats.unreadable);
    ctx.stat("extra_calls", stats.extra_calls);
    ctx.stat("requests", stats.llm.requests);
    ctx.stat("retries", stats.llm.retries);
    ctx.stat("cache_hits", stats.llm.cache_hits);
    Ok(())
}
