//! `filter`: scores every trace's relevance to the target tool schema, drops the irrelevant ones
//! and relabels drifted function and argument names (see [`crate::filter`]). Side files:
//! `dropped.jsonl` (each dropped trace with its score and reasons) and `remaps.json` (every
//! renamed call signature).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::conversation::Conversation;
use crate::filter::{filter, FilterConfig};
use crate::formats::{read_conversations, OnBadTrace};
use crate::task::Task;
use crate::tools::ToolSet;

/// The filter step.
pub struct Filter;

/// Parameters of `[filter]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterParams {
    /// Traces with a relevance below this (0..1) are dropped.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Least score for mapping a trace's argument onto a schema argument.
    #[serde(default = "default_threshold")]
    pub min_arg_score: f64,
}

fn default_threshold() -> f64 {
    0.5
}

/// The three inputs every synthetic-pipeline step reads.
pub(super) struct PipelineInputs {
    pub task: Task,
    pub tools: ToolSet,
    pub traces: Vec<Conversation>,
    /// Traces that could not be read (`file:line: why`), with [`OnBadTrace::Skip`].
    pub unreadable: Vec<String>,
}

/// Reads Task, Tools (with the task's reply function and transactional list) and Traces.
pub(super) fn read_inputs(
    ctx: &StepContext<'_>,
    on_bad: OnBadTrace,
) -> Result<PipelineInputs, StepError> {
    let task =
        Task::load(&ctx.input(Artifact::Task)?).map_err(|e| StepError::Data(e.to_string()))?;
    let tools = ToolSet::load(
        &ctx.input(Artifact::Tools)?,
        &task.settings.respond_function,
        &task.settings.transactional,
    )
    .map_err(|e| StepError::Data(e.to_string()))?;
    let read = read_conversations(&ctx.input(Artifact::Traces)?, on_bad)
        .map_err(|e| StepError::Data(e.to_string()))?;
    Ok(PipelineInputs {
        task,
        tools,
        traces: read.conversations,
        unreadable: read.skipped,
    })
}

/// Writes one JSON value a line.
pub(super) fn write_jsonl<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = T>,
) -> Result<(), StepError> {
    let err = |e: std::io::Error| StepError::io(path, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    for item in items {
        serde_json::to_writer(&mut w, &item).map_err(|e| err(e.into()))?;
        w.write_all(b"\n").map_err(err)?;
    }
    w.flush().map_err(err)
}

impl Step for Filter {
    fn kind(&self) -> &'static str {
        "filter"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "drop traces irrelevant to the tool schema and relabel drifted function and argument names"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools, Artifact::Task]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<FilterParams>(params)?;
        let p: FilterParams = serde_json::from_value(v.clone()).expect("canonical");
        for (key, x) in [
            ("threshold", p.threshold),
            ("min_arg_score", p.min_arg_score),
        ] {
            if !(0.0..=1.0).contains(&x) {
                return Err(ParamError {
                    path: key.into(),
                    message: format!("must be between 0 and 1, got {x}"),
                });
            }
        }
        Ok(v)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: FilterParams = typed(ctx.params)?;
        // Corrupted traces may not even parse (messages shuffled so a result precedes every
        // call): such a trace is irrelevant by definition and listed among the dropped.
        let input = read_inputs(ctx, OnBadTrace::Skip)?;
        let cfg = FilterConfig {
            threshold: p.threshold,
            min_arg_score: p.min_arg_score,
        };
        let out = filter(&input.traces, &input.tools, &cfg);
        crate::formats::write_conversations(&ctx.output(Artifact::Traces), &out.kept)
            .map_err(|e| StepError::io(ctx.output(Artifact::Traces), e))?;
        let dropped = out
            .verdicts
            .iter()
            .zip(&input.traces)
            .filter(|(v, _)| !v.kept)
            .map(|(v, c)| json!({"id": v.id, "score": v.score, "reasons": v.reasons, "conversation": c}));
        let unreadable = input.unreadable.iter().map(
            |why| json!({"id": null, "score": 0.0, "reasons": [format!("unreadable: {why}")]}),
        );
        write_jsonl(
            &ctx.out_dir.join("dropped.jsonl"),
            dropped.chain(unreadable),
        )?;
        let remaps_path = ctx.out_dir.join("remaps.json");
        let text = serde_json::to_string_pretty(&out.remaps).expect("serializes");
        std::fs::write(&remaps_path, text).map_err(|e| StepError::io(&remaps_path, e))?;
        let n = out.verdicts.len() + input.unreadable.len();
        let mean = out.verdicts.iter().map(|v| v.score).sum::<f64>() / n.max(1) as f64;
        ctx.stat("traces_in", n);
        ctx.stat("kept", out.kept.len());
        ctx.stat("dropped", n - out.kept.len());
        ctx.stat("unreadable", input.unreadable.len());
        ctx.stat("mean_relevance", (mean * 1000.0).round() / 1000.0);
        ctx.stat("remapped_signatures", out.remaps.len());
        ctx.stat(
            "remapped_calls",
            out.remaps.iter().map(|r| r.calls).sum::<usize>(),
        );
        if out.kept.is_empty() {
            return Err(StepError::Data(format!(
                "no trace reaches relevance {} (see dropped.jsonl): nothing to generate from",
                p.threshold
            )));
        }
        Ok(())
    }
}
