//! Step `split`: holds test conversations out of the target pool before any corruption and
//! expands them into evaluation pairs.
//!
//! Parameters: `test_conversations = 34`, `seed = 0` (the split's own seed: every cell of an
//! experiment evaluates on the same pairs), `test_file` (optional OpenAI chat JSONL, relative to
//! the project root; replaces the seeded choice, and its conversations are removed from the pool
//! where they also occur there), `dev_conversations` (evaluate on that many conversations drawn
//! from the training pool; the test conversations then stay out of training and evaluation).
//! Outputs: `traces.jsonl` (the training pool), `pairs.jsonl`, and `test.jsonl` (the evaluated
//! conversations: the held-out test ones, or the dev ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ingest::SOURCE_LINE;
use super::{canonicalize, typed, Artifact, ParamError, Step, StepContext, StepError};
use crate::conversation::Conversation;
use crate::formats::{self, OnBadTrace};
use crate::split::{expand, hold_out, with_test_set};
use crate::tools::{ToolSet, DEFAULT_RESPOND};

/// File name of the held-out conversations inside the split's output directory.
pub const TEST_FILE: &str = "test.jsonl";

/// Parameters of `split`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    /// How many conversations to hold out (ignored with `test_file`).
    #[serde(default = "default_n")]
    pub test_conversations: usize,
    /// Seed of the held-out choice.
    #[serde(default)]
    pub seed: u64,
    /// A given test set instead of the seeded choice.
    #[serde(default)]
    pub test_file: Option<String>,
    /// Evaluate on this many conversations drawn from the training pool instead of on the test
    /// conversations, which then stay out of everything (0: evaluate on test). Where rules,
    /// thresholds and sizes are chosen, so that no choice is made on the test split. Left out
    /// of the canonical form when 0, so experiments without it keep their keys.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_conversations: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn default_n() -> usize {
    34
}

/// The `split` step.
pub struct Split;

/// Every call in `pool` to a function `tools` does not define, with its conversation, in order.
/// The generic reply function is always known: readers turn assistant text into it, and tasks
/// with another reply name rename it downstream.
fn unknown_calls<'a>(pool: &'a [Conversation], tools: &ToolSet) -> Vec<(&'a Conversation, String)> {
    let mut out = Vec::new();
    for c in pool {
        for call in c.calls() {
            if call.name != DEFAULT_RESPOND && tools.get(&call.name).is_none() {
                out.push((c, call.name.clone()));
            }
        }
    }
    out
}

/// Checks, when the experiment is loaded, that the seeded choice leaves something to train on:
/// `pool` is the most conversations the target pool can hold (see
/// [`super::ingest::pool_bound`]), `source` what it is read from.
pub fn check_pool(params: &Value, pool: usize, source: &str) -> Result<(), ParamError> {
    let p: SplitParams = serde_json::from_value(params.clone()).map_err(|e| ParamError {
        path: String::new(),
        message: e.to_string(),
    })?;
    if p.test_file.is_none() && p.test_conversations >= pool {
        return Err(ParamError {
            path: "test_conversations".into(),
            message: format!(
                "holding out {} conversations leaves none to train on: {source} has at most \
                 {pool}",
                p.test_conversations
            ),
        });
    }
    let held = if p.test_file.is_none() {
        p.test_conversations
    } else {
        0
    };
    if p.dev_conversations > 0 && held + p.dev_conversations >= pool {
        return Err(ParamError {
            path: "dev_conversations".into(),
            message: format!(
                "holding out {held} test and {} dev conversations leaves none to train on: \
                 {source} has at most {pool}",
                p.dev_conversations
            ),
        });
    }
    Ok(())
}

/// The most traces the training pool can hold after the split, given a bound `pool` on the
/// target pool (a given `test_file` removes its conversations only where the pool has them).
pub fn train_bound(params: &Value, pool: usize) -> usize {
    match serde_json::from_value::<SplitParams>(params.clone()) {
        Ok(p) if p.test_file.is_none() => {
            pool.saturating_sub(p.test_conversations + p.dev_conversations)
        }
        Ok(p) => pool.saturating_sub(p.dev_conversations),
        _ => pool,
    }
}

impl Step for Split {
    fn kind(&self) -> &'static str {
        "split"
    }
    fn version(&self) -> u32 {
        // 2: reads the tools and warns about calls to functions they do not define.
        2
    }
    fn about(&self) -> &'static str {
        "hold test conversations out of the pool and expand them into evaluation pairs"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools, Artifact::Task]
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Pairs]
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<SplitParams>(params)?;
        let p: SplitParams = serde_json::from_value(v.clone()).expect("just canonicalized");
        if p.test_file.is_none() && p.test_conversations == 0 {
            return Err(ParamError {
                path: "test_conversations".into(),
                message: "hold out at least one conversation (or give test_file)".into(),
            });
        }
        Ok(v)
    }
    fn external_files(&self, params: &Value, _root: &Path) -> Result<Vec<PathBuf>, StepError> {
        let p: SplitParams = typed(params)?;
        Ok(p.test_file.into_iter().map(PathBuf::from).collect())
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: SplitParams = typed(ctx.params)?;
        let input = super::filter::read_inputs(ctx, OnBadTrace::Error)?;
        let pool = input.traces;
        // The target pool is the user's data before any scenario touches it: a call to a function
        // the tools do not define here is a problem of the data (later steps would quietly
        // remap or drop it), so it is said now.
        let unknown = unknown_calls(&pool, &input.tools);
        for (c, name) in &unknown {
            let at = c.meta.get(SOURCE_LINE).and_then(Value::as_str);
            ctx.warn(format!(
                "{}trace {:?} calls {name}, which the tools do not define",
                at.map_or(String::new(), |a| format!("{a}: ")),
                c.id
            ));
        }
        let mut per_unknown: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, name) in &unknown {
            *per_unknown.entry(name.as_str()).or_insert(0) += 1;
        }
        ctx.stat("unknown_function_calls", unknown.len() as u64);
        if !per_unknown.is_empty() {
            ctx.stat("unknown_functions", json!(per_unknown));
        }
        let pool_in = pool.len();
        let split = match &p.test_file {
            Some(f) => {
                let path = ctx.resolve(f);
                let test = formats::read_conversations(&path, OnBadTrace::Error)
                    .map_err(|e| StepError::Data(e.to_string()))?
                    .conversations;
                if test.is_empty() {
                    return Err(StepError::Data(format!(
                        "{}: the test file has no conversations",
                        path.display()
                    )));
                }
                with_test_set(pool, test)
            }
            None => hold_out(pool, p.test_conversations, p.seed).map_err(|e| StepError::Param {
                key: "test_conversations".into(),
                message: e.to_string(),
            })?,
        };
        // A dev split: the test conversations leave for good, and the evaluated ones are drawn
        // from what remains (with a seed of their own), so nothing is chosen on test.
        let held_out_test = split.test.len();
        let split = if p.dev_conversations > 0 {
            hold_out(split.pool, p.dev_conversations, p.seed.wrapping_add(1)).map_err(|e| {
                StepError::Param {
                    key: "dev_conversations".into(),
                    message: e.to_string(),
                }
            })?
        } else {
            split
        };
        let pairs: Vec<_> = split.test.iter().flat_map(expand).collect();
        if pairs.is_empty() {
            return Err(StepError::Data(
                "the test conversations contain no assistant calls to evaluate".into(),
            ));
        }
        let out = ctx.output(Artifact::Traces);
        formats::write_conversations(&out, &split.pool).map_err(|e| StepError::io(&out, e))?;
        let out = ctx.output(Artifact::Pairs);
        formats::write_pairs(&out, &pairs).map_err(|e| StepError::io(&out, e))?;
        let out = ctx.out_dir.join(TEST_FILE);
        formats::write_conversations(&out, &split.test).map_err(|e| StepError::io(&out, e))?;

        let mut per_fn: BTreeMap<&str, u64> = BTreeMap::new();
        for pr in &pairs {
            *per_fn.entry(pr.answer.name.as_str()).or_insert(0) += 1;
        }
        ctx.stat("pool_in", pool_in as u64);
        ctx.stat("test_conversations", held_out_test as u64);
        ctx.stat(
            "evaluates",
            if p.dev_conversations > 0 {
                "dev"
            } else {
                "test"
            },
        );
        ctx.stat("evaluated_conversations", split.test.len() as u64);
        ctx.stat("pool", split.pool.len() as u64);
        ctx.stat("removed_duplicates", split.removed_duplicates as u64);
        ctx.stat("pairs", pairs.len() as u64);
        ctx.stat("pairs_per_function", json!(per_fn));
        Ok(())
    }
}
