//! Corruption scenarios: a scenario is a list of operators applied in order to a working set of
//! traces that starts as the target training pool; the result is one scenario's training traces.
//!
//! Operators are written by *role*, never for one domain: the target tools (with their kinds
//! search / transaction / respond) say which calls are service calls and what the reply function
//! is; other trace pools arrive by role (`sister`: the same kind of service from another provider,
//! `foreign`: another domain). Function kinds of role traces come from their metadata (SGD ingest
//! records `meta.function_kinds`), or from `meta.tools` `x-kind`, or from the target tools when
//! names coincide, or from the name's verb (see [`function_kinds`]).
//!
//! Everything is deterministic per seed: operator `i` draws from its own ChaCha8 stream `i`, and
//! counts are exact (apportioned, then shuffled), not Bernoulli draws.
//!
//! Scenario file (`scenarios/*.toml`): `description = "…"` and `[[operators]]` tables with an
//! `op` key; see [`Operator`] for each operator's parameters.

mod names;
mod noise;
mod ops;

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conversation::Conversation;
use crate::tools::{FunctionKind, ToolSet};

pub use names::{function_alternatives, parameter_alternatives};

/// A scenario file: a description for people and the operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// What the scenario simulates (cosmetic: not part of any cache key).
    #[serde(default)]
    pub description: String,
    /// Operators, applied in order.
    #[serde(default)]
    pub operators: Vec<Operator>,
}

impl ScenarioFile {
    /// Reads and checks a scenario TOML file.
    pub fn load(path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Invalid {
            message: format!("{}: {e}", path.display()),
        })?;
        let s: ScenarioFile = toml::from_str(&text).map_err(|e| ScenarioError::Invalid {
            message: format!("{}: {e}", path.display()),
        })?;
        for op in &s.operators {
            op.check()?;
        }
        Ok(s)
    }
}

/// Relative weights of the corruptions applied to service calls (search and transaction kinds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMix {
    /// Call another service function instead (arguments carried over where names match).
    #[serde(default = "one")]
    pub swap_tool: f64,
    /// Wrong or permuted argument values.
    #[serde(default = "one")]
    pub swap_params: f64,
    /// A reply instead of the call (the reply that followed it; its results disappear).
    #[serde(default = "one")]
    pub replace_with_respond: f64,
}

/// Relative weights of the corruptions applied to reply calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondMix {
    /// A service call at the wrong time, with arguments seen elsewhere.
    #[serde(default = "one")]
    pub replace_with_service_call: f64,
    /// A reply taken from a trace of the foreign pool.
    #[serde(default = "one")]
    pub replace_with_foreign_message: f64,
}

fn one() -> f64 {
    1.0
}
fn default_rate() -> f64 {
    0.5
}
fn default_keep_clean() -> f64 {
    0.1
}
fn default_alternatives() -> usize {
    6
}
fn default_foreign() -> String {
    "foreign".into()
}
fn default_foreign_share() -> f64 {
    0.8
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for ServiceMix {
    fn default() -> Self {
        ServiceMix {
            swap_tool: 1.0,
            swap_params: 1.0,
            replace_with_respond: 1.0,
        }
    }
}

impl Default for RespondMix {
    fn default() -> Self {
        RespondMix {
            replace_with_service_call: 1.0,
            replace_with_foreign_message: 1.0,
        }
    }
}

/// One corruption operator (`op = "…"` in the scenario file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operator {
    /// Keeps a seeded random subset of the working set, in order. Exactly one of `count`,
    /// `share` (of the working set) and `like_role` (as many traces as that role pool has, or the
    /// whole working set when it has fewer: the smaller of the two sizes).
    Subsample {
        /// Traces to keep.
        #[serde(default)]
        count: Option<usize>,
        /// Share of traces to keep (rounded).
        #[serde(default)]
        share: Option<f64>,
        /// Keep as many traces as this role pool has (all of them when the pool is bigger).
        #[serde(default)]
        like_role: Option<String>,
    },
    /// Label noise: `rate` of all calls in the working set corrupted (exact count, rounded),
    /// chosen among traces outside the `keep_clean` share, which stay untouched. Chosen service
    /// calls and reply calls are split over the corruptions by the weights of `service` and
    /// `respond`.
    NoisyCalls {
        /// Share of all calls to corrupt.
        #[serde(default = "default_rate")]
        rate: f64,
        /// Share of traces kept fully clean.
        #[serde(default = "default_keep_clean")]
        keep_clean: f64,
        /// Weights for service calls.
        #[serde(default)]
        service: ServiceMix,
        /// Weights for reply calls.
        #[serde(default)]
        respond: RespondMix,
        /// Role pool foreign replies come from.
        #[serde(default = "default_foreign")]
        foreign_role: String,
    },
    /// Schema drift within the target: per trace, every target function and every parameter
    /// name is renamed to one of `alternatives` names (generated by kind and word shape, or
    /// given in `functions` / `parameters`; a given list must have exactly `alternatives`).
    /// A seeded `keep_clean` share of the traces (exact count, rounded) keeps the target names.
    Rename {
        /// Alternatives per name.
        #[serde(default = "default_alternatives")]
        alternatives: usize,
        /// Share of traces left with the correct names (0 when absent; left out of the
        /// canonical form then, so scenarios written before it keep their cache keys).
        #[serde(default, skip_serializing_if = "is_zero")]
        keep_clean: f64,
        /// Given alternatives for function names (others are generated).
        #[serde(default)]
        functions: BTreeMap<String, Vec<String>>,
        /// Given alternatives for parameter names (others are generated).
        #[serde(default)]
        parameters: BTreeMap<String, Vec<String>>,
    },
    /// Adds a role pool's traces (all, a seeded `count` of them, or with `like_working_set` as
    /// many as the working set holds). Their functions whose names are target function names
    /// are renamed, once for the whole pool, to a non-target name of the same kind that no trace
    /// of the working set uses yet (generated, or given in `names`).
    AddRole {
        /// Role pool to add (e.g. `sister`).
        role: String,
        /// How many traces to take (all when absent).
        #[serde(default)]
        count: Option<usize>,
        /// Take as many traces as the working set holds (all of the pool when it has fewer), so
        /// that the working set and the added traces are equal halves.
        #[serde(default, skip_serializing_if = "is_false")]
        like_working_set: bool,
        /// Given new names for colliding function names.
        #[serde(default)]
        names: BTreeMap<String, String>,
    },
    /// Trace mixing: all traces of the role pool, their functions renamed to the target's by
    /// kind and (with `shuffle_messages`) their messages shuffled within each conversation, plus
    /// a seeded subset of the working set so that the role traces are `foreign_share` of the
    /// result. The result is shuffled.
    Mix {
        /// Role pool mixed in.
        #[serde(default = "default_foreign")]
        role: String,
        /// Share of role traces in the result.
        #[serde(default = "default_foreign_share")]
        foreign_share: f64,
        /// Shuffle each role trace's messages (system messages stay first).
        #[serde(default = "yes")]
        shuffle_messages: bool,
    },
}

impl Operator {
    /// The `op` name.
    pub fn name(&self) -> &'static str {
        match self {
            Operator::Subsample { .. } => "subsample",
            Operator::NoisyCalls { .. } => "noisy_calls",
            Operator::Rename { .. } => "rename",
            Operator::AddRole { .. } => "add_role",
            Operator::Mix { .. } => "mix",
        }
    }

    /// Role pools this operator reads.
    pub fn roles(&self) -> Vec<String> {
        match self {
            Operator::NoisyCalls {
                respond,
                foreign_role,
                ..
            } if respond.replace_with_foreign_message > 0.0 => vec![foreign_role.clone()],
            Operator::AddRole { role, .. } | Operator::Mix { role, .. } => vec![role.clone()],
            Operator::Subsample {
                like_role: Some(role),
                ..
            } => vec![role.clone()],
            _ => Vec::new(),
        }
    }

    /// Checks parameter values that the types cannot.
    pub fn check(&self) -> Result<(), ScenarioError> {
        let bad = |m: String| {
            Err(ScenarioError::Invalid {
                message: format!("{}: {m}", self.name()),
            })
        };
        let share = |v: f64| (0.0..=1.0).contains(&v);
        match self {
            Operator::Subsample {
                count,
                share: s,
                like_role,
            } => match (count, s, like_role) {
                (Some(_), None, None) | (None, None, Some(_)) => Ok(()),
                (None, Some(v), None) if share(*v) => Ok(()),
                (None, Some(v), None) => bad(format!("share {v} is not within 0..1")),
                _ => bad("give exactly one of count, share and like_role".into()),
            },
            Operator::NoisyCalls {
                rate,
                keep_clean,
                service,
                respond,
                ..
            } => {
                if !share(*rate) || !share(*keep_clean) {
                    return bad("rate and keep_clean must be within 0..1".into());
                }
                let w = [
                    service.swap_tool,
                    service.swap_params,
                    service.replace_with_respond,
                    respond.replace_with_service_call,
                    respond.replace_with_foreign_message,
                ];
                if w.iter().any(|x| *x < 0.0 || !x.is_finite()) {
                    return bad("weights must be non-negative".into());
                }
                if w[..3].iter().sum::<f64>() <= 0.0 || w[3..].iter().sum::<f64>() <= 0.0 {
                    return bad("service and respond weights must not all be 0".into());
                }
                Ok(())
            }
            Operator::Rename {
                alternatives,
                keep_clean,
                functions,
                parameters,
            } => {
                if !share(*keep_clean) {
                    return bad(format!("keep_clean {keep_clean} is not within 0..1"));
                }
                if *alternatives == 0 {
                    return bad("alternatives must be at least 1".into());
                }
                for (k, v) in functions.iter().chain(parameters) {
                    if v.len() != *alternatives {
                        return bad(format!(
                            "{k}: {} alternatives given, {alternatives} expected",
                            v.len()
                        ));
                    }
                }
                Ok(())
            }
            Operator::AddRole {
                count: Some(_),
                like_working_set: true,
                ..
            } => bad("give count or like_working_set, not both".into()),
            Operator::AddRole { .. } => Ok(()),
            Operator::Mix { foreign_share, .. } => {
                if *foreign_share > 0.0 && *foreign_share < 1.0 {
                    Ok(())
                } else {
                    bad("foreign_share must be strictly between 0 and 1".into())
                }
            }
        }
    }
}

/// How an operator changes the size of the working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Traces of the working set it keeps.
    pub keep: usize,
    /// Traces of its role pool it adds.
    pub add: usize,
}

/// A size an operator cannot reach with the traces it is given.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeError {
    /// The operator's parameter that asks for it (`count`, `foreign_share`, `role`).
    pub key: &'static str,
    /// What was asked for and what there is.
    pub message: String,
}

impl Operator {
    /// The role pool whose size decides how many traces this operator keeps or adds.
    pub fn pool_role(&self) -> Option<&str> {
        match self {
            Operator::Subsample {
                like_role: Some(r), ..
            }
            | Operator::AddRole { role: r, .. }
            | Operator::Mix { role: r, .. } => Some(r),
            _ => None,
        }
    }

    /// The sizes this operator gives a working set of `work` traces when its role pool (see
    /// [`Operator::pool_role`]) holds `pool`. The run and the load-time check
    /// ([`check_sizes`]) both count with this, so what `plan` accepts is what runs.
    pub fn sizes(&self, work: usize, pool: usize) -> Result<Sizes, SizeError> {
        let keep_all = Sizes { keep: work, add: 0 };
        // A role pool with no trace (a sister service with no dialogue in the splits given)
        // would leave a scenario with nothing of that role: an error, not a quiet empty half.
        if let (Some(role), 0) = (self.pool_role(), pool) {
            return Err(SizeError {
                key: "role",
                message: format!("the {role:?} pool is empty"),
            });
        }
        match self {
            Operator::Subsample {
                count,
                share,
                like_role,
            } => {
                let keep = match (count, share, like_role) {
                    (Some(n), _, _) if *n > work => {
                        return Err(SizeError {
                            key: "count",
                            message: format!("{n} traces asked for, the working set has {work}"),
                        })
                    }
                    (Some(n), _, _) => *n,
                    (None, Some(s), _) => (s * work as f64).round() as usize,
                    // Equal halves with the role pool: the smaller size of the two.
                    (None, None, Some(_)) => pool.min(work),
                    _ => work,
                };
                Ok(Sizes { keep, add: 0 })
            }
            Operator::NoisyCalls { .. } | Operator::Rename { .. } => Ok(keep_all),
            Operator::AddRole {
                role,
                count,
                like_working_set,
                ..
            } => {
                let add = match count {
                    Some(n) if *n > pool => {
                        return Err(SizeError {
                            key: "count",
                            message: format!(
                                "{n} traces of {role:?} asked for, the pool has {pool}"
                            ),
                        })
                    }
                    Some(n) => *n,
                    None if *like_working_set => pool.min(work),
                    None => pool,
                };
                Ok(Sizes { keep: work, add })
            }
            Operator::Mix {
                role,
                foreign_share,
                ..
            } => mix_sizes(role, *foreign_share, work, pool),
        }
    }
}

/// Trace mixing's counts: all role traces, and as many working-set traces as the share asks;
/// if the working set is too small for that, all of it and fewer role traces. A share that
/// leaves no trace on one side cannot be met.
fn mix_sizes(role: &str, share: f64, work: usize, pool: usize) -> Result<Sizes, SizeError> {
    if pool == 0 {
        return Err(SizeError {
            key: "role",
            message: format!("the {role:?} pool is empty"),
        });
    }
    let ratio = (1.0 - share) / share;
    let mut add = pool;
    // The epsilon rounds exact halves up despite float error (142 foreign at 80% → 36 target).
    let mut keep = (add as f64 * ratio + 1e-9).round() as usize;
    if keep > work {
        keep = work;
        add = ((keep as f64) / ratio + 1e-9).round() as usize;
    }
    if keep == 0 || add == 0 {
        return Err(SizeError {
            key: "foreign_share",
            message: format!(
                "a {role} share of {share} cannot be met with {pool} {role} traces and a \
                 working set of {work}: it leaves {add} {role} and {keep} working-set traces"
            ),
        });
    }
    Ok(Sizes { keep, add })
}

/// Checks, before any trace is read, that every operator's sizes can be met: `target` is the
/// most traces the training pool can hold and `pool(role)` the most a role pool can (`None`:
/// not known, which ends the check). Since both are upper bounds and sizes only grow with
/// them, an error here is certain to happen in the run. Gives the index of the first operator
/// that cannot be met, with its error.
pub fn check_sizes(
    ops: &[Operator],
    target: usize,
    pool: &dyn Fn(&str) -> Option<usize>,
) -> Result<(), (usize, SizeError)> {
    let mut work = target;
    for (i, op) in ops.iter().enumerate() {
        let p = match op.pool_role() {
            Some(r) => match pool(r) {
                Some(n) => n,
                None => return Ok(()),
            },
            None => 0,
        };
        let s = op.sizes(work, p).map_err(|e| (i, e))?;
        work = s.keep + s.add;
    }
    Ok(())
}

/// Errors applying a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The scenario is invalid or cannot apply to these pools.
    #[error("scenario: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

pub(crate) fn invalid<T>(message: impl Into<String>) -> Result<T, ScenarioError> {
    Err(ScenarioError::Invalid {
        message: message.into(),
    })
}

/// Role pools every operator of `ops` reads, sorted and unique.
pub fn roles(ops: &[Operator]) -> Vec<String> {
    let mut r: Vec<String> = ops.iter().flat_map(Operator::roles).collect();
    r.sort();
    r.dedup();
    r
}

/// The result of applying a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The scenario's training traces.
    pub traces: Vec<Conversation>,
    /// What each operator changed: `"<index>.<op>.<what>"` → count.
    pub changes: BTreeMap<String, u64>,
}

/// Applies `ops` in order to the target pool. Every trace's `meta.pool` says where it came from
/// (`target` or the role name); corrupted traces list their changes in `meta.corruptions`.
pub fn apply(
    ops: &[Operator],
    target: Vec<Conversation>,
    roles: &BTreeMap<String, Vec<Conversation>>,
    tools: &ToolSet,
    seed: u64,
) -> Result<Outcome, ScenarioError> {
    let mut work = target;
    for c in &mut work {
        c.meta
            .entry("pool")
            .or_insert_with(|| Value::String("target".into()));
    }
    let mut changes = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        op.check()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(i as u64);
        let mut ch = Changes {
            prefix: format!("{i}.{}", op.name()),
            map: &mut changes,
        };
        let role = |r: &str| {
            roles.get(r).ok_or_else(|| ScenarioError::Invalid {
                message: format!("{}: no trace pool for role {r:?}", op.name()),
            })
        };
        // The pool this operator's sizes depend on, and the sizes themselves.
        let pool = op.pool_role().map(role).transpose()?;
        let sizes = op
            .sizes(work.len(), pool.map_or(0, Vec::len))
            .map_err(|e| ScenarioError::Invalid {
                message: format!("{}: {}", op.name(), e.message),
            })?;
        let pool = pool.map_or(&[][..], Vec::as_slice);
        work = match op {
            Operator::Subsample { .. } => ops::subsample(work, sizes.keep, &mut rng, &mut ch),
            Operator::NoisyCalls {
                rate,
                keep_clean,
                service,
                respond,
                foreign_role,
            } => {
                let foreign = if respond.replace_with_foreign_message > 0.0 {
                    Some(role(foreign_role)?.as_slice())
                } else {
                    None
                };
                let p = noise::Params {
                    rate: *rate,
                    keep_clean: *keep_clean,
                    service,
                    respond,
                };
                noise::noisy_calls(work, &p, tools, foreign, &mut rng, &mut ch)?
            }
            Operator::Rename {
                alternatives,
                keep_clean,
                functions,
                parameters,
            } => {
                let names = ops::Names {
                    alternatives: *alternatives,
                    functions,
                    parameters,
                };
                ops::rename(work, tools, &names, *keep_clean, &mut rng, &mut ch)?
            }
            Operator::AddRole { role: r, names, .. } => {
                ops::add_role(work, r, pool, sizes.add, names, tools, &mut rng, &mut ch)?
            }
            Operator::Mix {
                role: r,
                shuffle_messages,
                ..
            } => ops::mix(
                work,
                r,
                pool,
                sizes,
                *shuffle_messages,
                tools,
                &mut rng,
                &mut ch,
            ),
        };
    }
    Ok(Outcome {
        traces: work,
        changes,
    })
}

/// Counts changes under an operator's prefix.
pub(crate) struct Changes<'a> {
    prefix: String,
    map: &'a mut BTreeMap<String, u64>,
}

impl Changes<'_> {
    pub(crate) fn add(&mut self, what: &str, n: u64) {
        *self
            .map
            .entry(format!("{}.{what}", self.prefix))
            .or_insert(0) += n;
    }
}

/// The kind of every function a conversation calls. Sources, first match wins:
/// `meta.function_kinds` (`{"name": "search"|"transaction"|"respond"}`), `meta.tools` with `x-kind`,
/// the target tools (same name), the target's reply function name, and finally the name's
/// leading verb: reserve/book/buy/make/transfer/pay/add/schedule/rent/order/create/set/send-
/// money… mean a transaction, anything else a search.
pub fn function_kinds(c: &Conversation, tools: &ToolSet) -> BTreeMap<String, FunctionKind> {
    let mut out = BTreeMap::new();
    let from_meta: BTreeMap<String, FunctionKind> = c
        .meta
        .get("function_kinds")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    // Only tools that state their kind count; a tools list without `x-kind` says nothing.
    let from_tools: BTreeMap<String, FunctionKind> = c
        .meta
        .get("tools")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|t| {
                    let f = t.get("function").unwrap_or(t);
                    let name = f.get("name")?.as_str()?.to_string();
                    let kind = serde_json::from_value(f.get("x-kind")?.clone()).ok()?;
                    Some((name, kind))
                })
                .collect()
        })
        .unwrap_or_default();
    let respond = tools
        .respond()
        .map(|f| f.name.as_str())
        .unwrap_or(crate::tools::DEFAULT_RESPOND);
    for call in c.calls() {
        if out.contains_key(&call.name) {
            continue;
        }
        let kind = from_meta
            .get(&call.name)
            .or_else(|| from_tools.get(&call.name))
            .copied()
            .or_else(|| tools.get(&call.name).map(|f| f.kind))
            .unwrap_or_else(|| {
                if call.name == respond || call.name == crate::tools::DEFAULT_RESPOND {
                    FunctionKind::Respond
                } else {
                    names::kind_from_verb(&call.name)
                }
            });
        out.insert(call.name.clone(), kind);
    }
    out
}

/// Exact apportionment of `n` items over weights (largest remainder; ties to the earlier weight).
pub(crate) fn apportion(n: usize, weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - counts.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.partial_cmp(&ra).expect("finite").then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        if weights[i] > 0.0 {
            counts[i] += 1;
            left -= 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apportion_is_exact() {
        assert_eq!(apportion(10, &[1.0, 1.0, 1.0]), [4, 3, 3]);
        assert_eq!(apportion(7, &[1.0, 1.0]), [4, 3]);
        assert_eq!(apportion(5, &[0.0, 1.0]), [0, 5]);
    }

    #[test]
    fn function_kinds_by_source() {
        use crate::conversation::{Message, ToolCall};
        let tools = ToolSet::from_openai(
            &serde_json::json!([{"name": "FindX", "x-kind": "search"}]),
            "respond_to_user",
            &[],
            "t",
        )
        .unwrap();
        let mut c = Conversation::default();
        for n in [
            "FindX",
            "BuyY",
            "ListZ",
            "Mystery",
            "respond_to_user",
            "Declared",
        ] {
            c.messages
                .push(Message::call(ToolCall::new(n, Default::default())));
        }
        c.meta.insert(
            "function_kinds".into(),
            serde_json::json!({"Mystery": "transaction"}),
        );
        c.meta.insert(
            "tools".into(),
            serde_json::json!([{"type": "function", "function": {"name": "Declared", "x-kind": "transaction"}},
                               {"type": "function", "function": {"name": "ListZ"}}]),
        );
        let k = function_kinds(&c, &tools);
        assert_eq!(k["FindX"], FunctionKind::Search);
        assert_eq!(k["BuyY"], FunctionKind::Transaction);
        assert_eq!(k["ListZ"], FunctionKind::Search);
        assert_eq!(k["Mystery"], FunctionKind::Transaction);
        assert_eq!(k["Declared"], FunctionKind::Transaction);
        assert_eq!(k["respond_to_user"], FunctionKind::Respond);
    }

    #[test]
    fn operators_parse_with_defaults_and_reject_unknown_keys() {
        let s: ScenarioFile = toml::from_str(
            "description = \"d\"\n[[operators]]\nop = \"noisy_calls\"\n[[operators]]\nop = \"subsample\"\ncount = 5\n",
        )
        .unwrap();
        assert_eq!(s.operators.len(), 2);
        assert!(matches!(&s.operators[0], Operator::NoisyCalls { rate, .. } if *rate == 0.5));
        assert_eq!(roles(&s.operators), ["foreign"]);
        let e = toml::from_str::<ScenarioFile>("[[operators]]\nop = \"subsample\"\ncout = 5\n");
        assert!(e.is_err());
        let e = toml::from_str::<ScenarioFile>("[[operators]]\nop = \"explode\"\n");
        assert!(e.is_err());
    }
}
