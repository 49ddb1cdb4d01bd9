//! `generate`: writes the synthetic training conversations with a teacher — the offline
//! schema-guided simulator or an OpenAI-compatible LLM — from the filtered traces, spread
//! round-robin over the length buckets. Failures (unusable answers, spent budgets) go to
//! `failures.jsonl`; above `max_failure_rate` the step fails, and a rerun repeats only the failed
//! requests because every accepted answer sits in the response cache.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::filter::{read_inputs, write_jsonl};
use super::{canonicalize, typed, Artifact, ParamError, Resource, Step, StepContext, StepError};
use crate::formats::OnBadTrace;
use crate::llm::{LlmClient, LlmConfig};
use crate::task::MutationTopic;
use crate::teacher::http::HttpTeacher;
use crate::teacher::offline::OfflineTeacher;
use crate::teacher::phrasebook::Phrasebook;
use crate::teacher::{plan_jobs, Context, Teacher, TeacherError};

/// The generate step.
pub struct Generate;

/// Reads a `phrasebook` step's output; an unreadable one names its file.
fn read_phrasebook(path: &std::path::Path) -> Result<Phrasebook, StepError> {
    let text = std::fs::read_to_string(path).map_err(|e| StepError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| StepError::Data(format!("{}: {e}", path.display())))
}

/// Which teacher writes the conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The schema-guided dialogue simulator (no model).
    Offline,
    /// An OpenAI-compatible chat-completions endpoint (`[generate.http]`).
    Http,
}

/// Parameters of `[generate]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateParams {
    /// The cell's seed (set by the engine).
    #[serde(default)]
    pub seed: u64,
    /// Which teacher.
    #[serde(default = "default_teacher")]
    pub teacher: TeacherKind,
    /// Conversations to write (one teacher call each).
    #[serde(default = "default_conversations")]
    pub conversations: usize,
    /// Length buckets; default: the task's mutation topics.
    #[serde(default)]
    pub topics: Option<Vec<MutationTopic>>,
    /// The endpoint for `teacher = "http"` (base_url, model, api_key_env, temperature,
    /// max_tokens, timeout_s, concurrency, retries, budget, backoff_s).
    #[serde(default)]
    pub http: Option<LlmConfig>,
    /// Traces shown in each LLM prompt.
    #[serde(default = "default_context_traces")]
    pub context_traces: usize,
    /// Largest share of failed jobs the step accepts.
    #[serde(default = "default_max_failure_rate")]
    pub max_failure_rate: f64,
    /// The share of the offline teacher's messages worded from the phrasebook (a `phrasebook`
    /// step earlier in the pipeline) where it has a phrasing for them; 0: no phrasebook.
    /// Left out of the canonical form at 0, so files that never set it keep their keys.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phrasebook: f64,
    /// Widen the offline teacher's pools of places, names and counts with the phrasebook's
    /// values of those roles (a `phrasebook` step earlier in the pipeline).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub phrasebook_values: bool,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl GenerateParams {
    /// Whether the teacher reads a `phrasebook` step's output (for its phrasings or values).
    fn uses_phrasebook(&self) -> bool {
        self.phrasebook > 0.0 || self.phrasebook_values
    }
}

fn default_teacher() -> TeacherKind {
    TeacherKind::Offline
}
fn default_conversations() -> usize {
    2000
}
fn default_context_traces() -> usize {
    3
}
fn default_max_failure_rate() -> f64 {
    0.02
}

impl Step for Generate {
    fn kind(&self) -> &'static str {
        "generate"
    }
    fn version(&self) -> u32 {
        // 2: the offline teacher reads and says times, dates and counts in spoken forms, and
        // lets users confirm a booking and ask a question in one message.
        // 3: users change a value at the confirmation; some bookings fail.
        // 4: repeated searches are asked for in phrasings traces used to search again.
        // 5: yes/no questions about a result's flags; learned requests for another result.
        // 6: no made-up result counts; booking requests that do not name the place; more
        // changes at the confirmation.
        // 7: built-in search and booking requests, answers and confirmations phrased from the
        // arguments' roles (no more "I'm looking for cuisine X and city Y"); larger built-in
        // banks; learned phrasings 85% of the time where there are any.
        // 8: bookings of a place the user names, with no search, and bookings after a search,
        // as often as the traces have them.
        // 9: a short conversation with no room for a booking searches only (v8 failed some).
        // 10: nothing from one domain: widened times span the traces' hours (not 10:00–22:45),
        // the booking lead says the transaction's own act, counts of things are said as such
        // ("3 tickets"), origin and destination places as "from"/"to".
        10
    }
    fn about(&self) -> &'static str {
        "write synthetic conversations with a teacher (offline simulator or an LLM) from filtered traces"
    }
    fn consumes(&self) -> &'static [Artifact] {
        &[Artifact::Traces, Artifact::Tools, Artifact::Task]
    }
    /// With a phrasebook share or its values, also the `phrasebook` step's output.
    fn consumes_with(&self, params: &Value) -> &'static [Artifact] {
        let uses = serde_json::from_value::<GenerateParams>(params.clone())
            .is_ok_and(|p| p.uses_phrasebook());
        if uses {
            &[
                Artifact::Traces,
                Artifact::Tools,
                Artifact::Task,
                Artifact::Phrasebook,
            ]
        } else {
            self.consumes()
        }
    }
    fn produces(&self) -> &'static [Artifact] {
        &[Artifact::Traces]
    }
    fn seeded(&self) -> bool {
        true
    }
    fn canonical_params(&self, params: &Value) -> Result<Value, ParamError> {
        let v = canonicalize::<GenerateParams>(params)?;
        let p: GenerateParams = serde_json::from_value(v.clone()).expect("canonical");
        let bad = |path: &str, message: String| ParamError {
            path: path.into(),
            message,
        };
        if p.conversations == 0 {
            return Err(bad("conversations", "must be at least 1".into()));
        }
        if let Some(t) = &p.topics {
            if t.is_empty() {
                return Err(bad("topics", "needs at least one topic".into()));
            }
            if let Some(x) = t.iter().find(|x| x.min_turns > x.max_turns) {
                return Err(bad(
                    "topics",
                    format!("topic {}: min_turns > max_turns", x.name),
                ));
            }
        }
        match (&p.teacher, &p.http) {
            (TeacherKind::Http, None) => {
                return Err(bad(
                    "http",
                    "teacher = \"http\" needs a [generate.http] table with base_url and model"
                        .into(),
                ))
            }
            (TeacherKind::Http, Some(h)) => {
                h.check()
                    .map_err(|(key, message)| bad(&format!("http.{key}"), message))?;
            }
            _ => {}
        }
        if !(0.0..=1.0).contains(&p.max_failure_rate) {
            return Err(bad("max_failure_rate", "must be between 0 and 1".into()));
        }
        if !(0.0..=1.0).contains(&p.phrasebook) {
            return Err(bad("phrasebook", "a share between 0 and 1".into()));
        }
        if p.uses_phrasebook() && p.teacher != TeacherKind::Offline {
            return Err(bad(
                "phrasebook",
                "the phrasebook words the offline teacher's messages; an LLM teacher has its own"
                    .into(),
            ));
        }
        Ok(v)
    }
    fn resource(&self, params: &Value, _jobs: usize) -> Resource {
        match params.get("teacher").and_then(Value::as_str) {
            Some("http") => Resource::Http,
            _ => Resource::Cpu { slots: 1 },
        }
    }
    fn run(&self, ctx: &mut StepContext<'_>) -> Result<(), StepError> {
        let p: GenerateParams = typed(ctx.params)?;
        let input = read_inputs(ctx, OnBadTrace::Error)?;
        let topics = p
            .topics
            .clone()
            .unwrap_or_else(|| input.task.settings.mutation_topics.clone());
        if topics.is_empty() {
            return Err(StepError::Data(
                "the task defines no mutation topics and [generate] sets none".into(),
            ));
        }
        let tctx = Context {
            task: &input.task,
            tools: &input.tools,
            traces: &input.traces,
        };
        let jobs = plan_jobs(p.conversations, &topics, p.seed);
        let total = jobs.len() as u64;
        let progress = |done: usize| ctx.report(done as u64, Some(total), "conversations");
        let teacher_err = |e: TeacherError| match e {
            TeacherError::Cancelled => StepError::Cancelled,
            other => StepError::Data(other.to_string()),
        };
        let mut borrowed = None;
        let mut borrowed_values = None;
        let (outcomes, llm) = match p.teacher {
            TeacherKind::Offline => {
                let mut t = OfflineTeacher::new(&tctx).map_err(teacher_err)?;
                let book = if p.uses_phrasebook() {
                    Some(read_phrasebook(&ctx.input(Artifact::Phrasebook)?)?)
                } else {
                    None
                };
                if let Some(book) = book.as_ref().filter(|_| p.phrasebook_values) {
                    borrowed_values = Some(t.borrow_values(book));
                }
                if let Some(book) = book.as_ref().filter(|_| p.phrasebook > 0.0) {
                    t = t.with_phrasebook(&tctx, book, p.phrasebook);
                    borrowed = Some(t.borrowed().count());
                }
                // Stay within the threads the executor granted this step.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(ctx.threads.max(1))
                    .build()
                    .map_err(|e| StepError::External(format!("thread pool: {e}")))?;
                let out = pool.install(|| t.generate(&jobs, &progress, ctx.cancel));
                (out.map_err(teacher_err)?, None)
            }
            TeacherKind::Http => {
                let cfg = p.http.clone().expect("checked in canonical_params");
                let client = LlmClient::new(cfg, ctx.responses).map_err(|e| StepError::Param {
                    key: "http".into(),
                    message: e.to_string(),
                })?;
                let t = HttpTeacher::new(&tctx, client, p.context_traces);
                let out = t
                    .generate(&jobs, &progress, ctx.cancel)
                    .map_err(teacher_err)?;
                (out, Some(t.stats()))
            }
        };
        let mut convs = Vec::with_capacity(outcomes.len());
        let mut failures = Vec::new();
        for o in outcomes {
            match o {
                Ok(c) => convs.push(c),
                Err(f) => failures.push(f),
            }
        }
        crate::formats::write_conversations(&ctx.output(Artifact::Traces), &convs)
            .map_err(|e| StepError::io(ctx.output(Artifact::Traces), e))?;
        write_jsonl(
            &ctx.out_dir.join("failures.jsonl"),
            failures
                .iter()
                .map(|f| json!({"index": f.index, "reason": f.reason})),
        )?;
        ctx.stat("generated", convs.len());
        if let Some(n) = borrowed {
            ctx.stat("borrowed_phrasings", n);
        }
        if let Some(n) = borrowed_values {
            ctx.stat("borrowed_values", n);
        }
        ctx.stat("failures", failures.len());
        ctx.stat(
            "turns",
            convs.iter().map(crate::validate::turns).sum::<usize>(),
        );
        if let Some(s) = llm {
            ctx.stat("requests", s.requests);
            ctx.stat("retries", s.retries);
            ctx.stat("cache_hits", s.cache_hits);
            ctx.stat("stored", s.stored);
        }
        let rate = failures.len() as f64 / total.max(1) as f64;
        if rate > p.max_failure_rate {
            let first = failures.first().map(|f| f.to_string()).unwrap_or_default();
            return Err(StepError::External(format!(
                "{} of {total} conversations failed (first: {first}); accepted answers are cached, so a rerun repeats only the failed requests",
                failures.len()
            )));
        }
        Ok(())
    }
}
