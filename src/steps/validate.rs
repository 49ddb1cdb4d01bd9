//! `validate`: runs the validation layer ([`crate::validate`]) over generated conversations.
//! Accepted ones are the step's traces; rejected ones go to `rejected.jsonl` with the rule and
//! detail; the manifest records reject counts per rule.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::filter::{read_inputs, write_jsonl};
use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::formats::OnBadTrace;
use crate::validate::{validate, ValidateConfig};

/// The validate step.
pub struct Validate;

/// Parameters of `[validate]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateParams {
    /// Most characters of text in one conversation (the study: 20,000).
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
    /// Shingle Jaccard at or above which a conversation is a near duplicate.
    #[serde(default = "default_near")]
    pub near_duplicate: f64,
    /// Words per shingle.
    #[serde(default = "default_shingle")]
    pub shingle: usize,
    /// Length outliers lie further than this many robust deviations from the median.
    #[serde(default = "default_length_k")]
    pub length_k: f64,
}

fn default_max_chars() -> usize {
    20_000
}
fn default_near() -> f64 {
    0.9
}
fn default_shingle() -> usize {
    5
}
fn default_length_k() -> f64 {
    6.0
}

impl Step for Validate {
    fn kind(&self) -> &'static str {
        "validate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "check generated conversations: schema, roles, results, duplicates, outliers, length"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools, Artifact::Task]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<ValidateParams>(params)?;
        let p: ValidateParams = serde_json::from_value(v.clone()).expect("canonical");
        if !(0.0..=1.0).contains(&p.near_duplicate) {
            return Err(ParamError {
                path: "near_duplicate".into(),
                message: "must be between 0 and 1".into(),
            });
        }
        if p.shingle == 0 {
            return Err(ParamError {
                path: "shingle".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(v)
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: ValidateParams = typed(ctx.params)?;
        let input = read_inputs(ctx, OnBadTrace::Error)?;
        let n = input.traces.len();
        let cfg = ValidateConfig {
            max_chars: p.max_chars,
            near_duplicate: p.near_duplicate,
            shingle: p.shingle,
            length_k: p.length_k,
        };
        let out = validate(
            input.traces,
            &input.tools,
            &input.task.settings.mutation_topics,
            &cfg,
        );
        crate::formats::write_conversations(&ctx.output(Artifact::Traces), &out.accepted)
            .map_err(|e| StepError::io(ctx.output(Artifact::Traces), e))?;
        write_jsonl(
            &ctx.out_dir.join("rejected.jsonl"),
            out.rejected
                .iter()
                .map(|r| json!({"rule": r.rule.name(), "detail": r.detail, "conversation": r.conversation})),
        )?;
        ctx.stat("input", n);
        ctx.stat("accepted", out.accepted.len());
        ctx.stat("rejected", out.rejected.len());
        for (rule, count) in out.counts() {
            ctx.stat(&format!("rejected_{}", rule.name()), count);
        }
        let mut buckets = serde_json::Map::new();
        for c in &out.accepted {
            let t = c
                .meta
                .get("topic")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_string();
            let e = buckets.entry(t).or_insert(Value::from(0));
            *e = Value::from(e.as_u64().unwrap_or(0) + 1);
        }
        ctx.stat("accepted_per_topic", Value::Object(buckets));
        if out.accepted.is_empty() {
            return Err(StepError::Data(
                "validation rejected every conversation (see rejected.jsonl)".into(),
            ));
        }
        Ok(())
    }
}
