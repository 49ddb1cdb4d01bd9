//! Step `corrupt`: applies one scenario (a `scenarios/*.toml` table plus the cell's seed) to the
//! training pool and writes the scenario's training traces, with statistics of what changed.
//!
//! Parameters: the scenario file's keys (`description`, cosmetic and left out of the canonical
//! form; `operators`, see [`crate::scenario::Operator`]) and `seed`. Consumes the pool (Traces)
//! and the target tools; role pools (`sister`, `foreign`) as the operators need them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ingest::trace_stats;
use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::formats::{self, OnBadTrace};
use crate::scenario::{self, Operator};
use crate::tools::{ToolSet, DEFAULT_RESPOND};

/// Parameters of `corrupt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorruptParams {
    /// What the scenario simulates (cosmetic).
    #[serde(default)]
    pub description: String,
    /// Operators, applied in order.
    #[serde(default)]
    pub operators: Vec<Operator>,
    /// The cell's seed.
    #[serde(default)]
    pub seed: u64,
}

/// Keys of a scenario table that do not change the output.
const COSMETIC: &[&str] = &["description"];

/// The `corrupt` step.
pub struct Corrupt;

/// Checks, when the experiment is loaded, that the scenario's sizes fit the pools (see
/// [`scenario::check_sizes`]): `target` is the most traces the training pool can hold, `roles`
/// the most each role pool can. The error names the operator's parameter.
pub fn check_pools(
    params: &Value,
    target: usize,
    roles: &BTreeMap<String, usize>,
) -> Result<(), ParamError> {
    let p: CorruptParams = serde_json::from_value(params.clone()).map_err(|e| ParamError {
        path: String::new(),
        message: e.to_string(),
    })?;
    scenario::check_sizes(&p.operators, target, &|r| roles.get(r).copied()).map_err(|(i, e)| {
        let pools: String = roles
            .iter()
            .map(|(r, n)| format!(", the {r:?} pool at most {n}"))
            .collect();
        ParamError {
            path: format!("operators[{i}].{}", e.key),
            message: format!(
                "{}: {} (counted when the experiment is loaded: the training pool holds at \
                 most {target} traces{pools})",
                p.operators[i].name(),
                e.message
            ),
        }
    })
}

impl Step for Corrupt {
    fn kind(&self) -> &'static str {
        "corrupt"
    }
    fn version(&self) -> u32 {
        1
    }
    fn about(&self) -> &'static str {
        "apply a corruption scenario to the training pool"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn seeded(&self) -> bool {
        true
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let mut v = canonicalize::<CorruptParams>(params)?;
        let p: CorruptParams = serde_json::from_value(v.clone()).expect("just canonicalized");
        for (i, op) in p.operators.iter().enumerate() {
            op.check().map_err(|e| ParamError {
                path: format!("operators[{i}]"),
                message: e.to_string(),
            })?;
        }
        if let Value::Object(m) = &mut v {
            for k in COSMETIC {
                m.remove(*k);
            }
        }
        Ok(v)
    }
    fn roles(&self, params: &Value) -> Vec<String> {
        typed::<CorruptParams>(params)
            .map(|p| scenario::roles(&p.operators))
            .unwrap_or_default()
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: CorruptParams = typed(ctx.params)?;
        let read = |path: &std::path::Path| {
            formats::read_conversations(path, OnBadTrace::Error)
                .map(|r| r.conversations)
                .map_err(|e| StepError::Data(e.to_string()))
        };
        let pool = read(&ctx.input(Artifact::Traces)?)?;
        let tools_path = ctx.input(Artifact::Tools)?;
        let tools = ToolSet::load(&tools_path, DEFAULT_RESPOND, &[])
            .map_err(|e| StepError::Data(e.to_string()))?;
        let mut roles = BTreeMap::new();
        for r in scenario::roles(&p.operators) {
            let path = ctx.role_input(&r)?;
            roles.insert(r, read(&path)?);
        }
        ctx.check_cancelled()?;
        let pool_in = pool.len();
        let out = scenario::apply(&p.operators, pool, &roles, &tools, p.seed)
            .map_err(|e| StepError::Data(e.to_string()))?;
        if out.traces.is_empty() {
            return Err(StepError::Data("the scenario leaves no traces".into()));
        }
        let path = ctx.output(Artifact::Traces);
        formats::write_conversations(&path, &out.traces).map_err(|e| StepError::io(&path, e))?;

        ctx.stat("pool_in", pool_in as u64);
        let validator = tools.validator();
        for (k, v) in trace_stats(&out.traces, Some(&validator)) {
            ctx.stat(&k, v);
        }
        let mut by_pool: BTreeMap<String, u64> = BTreeMap::new();
        for c in &out.traces {
            let pool = c
                .meta
                .get("pool")
                .and_then(Value::as_str)
                .unwrap_or("target");
            *by_pool.entry(pool.to_string()).or_insert(0) += 1;
        }
        ctx.stat("traces_per_pool", json!(by_pool));
        let target_names: Vec<&str> = tools.functions.iter().map(|f| f.name.as_str()).collect();
        let target_calls = out
            .traces
            .iter()
            .flat_map(|c| c.calls())
            .filter(|c| target_names.contains(&c.name.as_str()))
            .count();
        ctx.stat("calls_with_target_name", target_calls as u64);
        // One line per change in `tracelab inspect`: `changed.<op index>.<op>.<what>`.
        for (k, v) in &out.changes {
            ctx.stat(&format!("changed.{k}"), *v);
        }
        Ok(())
    }
}
