//! The `serve` task: a long-lived worker that holds one student in memory (either family, behind
//! [`Answerer`]) and answers batches of conversation prefixes, one [`ServeBatch`] line on stdin
//! to one [`ServeAnswers`] line on stdout, until stdin closes. `tracelab serve` batches the HTTP
//! requests that arrive together into one line, so they are decoded as one batch.

use std::cell::RefCell;
use std::io::BufRead;

use serde_json::Value;
use tch::Device;
use tracelab_core::formats::openai::parse_messages;
use tracelab_core::job::{
    PredictParams, Sampling, ServeAnswer, ServeAnswers, ServeBatch, ServeQuery,
};

use crate::grammar::{Limits, SpanSetup};
use crate::model::{Cache, StepOutput, Tiny};
use crate::predict::{decode_from, prefill_batch};
use crate::prefix::PrefixCache;
use crate::qwen3_student::Qwen3Served;
use crate::sampling::Sampler;
use crate::template::{ChatTemplate, Prompt};
use crate::train::ValueRules;
use crate::WorkerError;

/// A loaded student that answers served queries.
pub trait Answerer {
    /// The functions it was trained on.
    fn functions(&self) -> Vec<String>;
    /// Its reply function.
    fn respond_name(&self) -> String;
    /// One answer per query (in any order): its call, or why it has none.
    fn answer(&self, batch: &[ServeQuery]) -> Vec<ServeAnswer>;
}

/// An answer that is an error.
fn refused(id: u64, error: String) -> ServeAnswer {
    ServeAnswer {
        id,
        call: None,
        error: Some(error),
        prompt_tokens: 0,
        cached_tokens: 0,
        completion_tokens: 0,
    }
}

/// A query's messages, checked against the functions the model knows.
fn read_query(
    q: &ServeQuery,
    known: &[String],
) -> Result<Vec<tracelab_core::conversation::Message>, String> {
    let messages = parse_messages(&q.messages)?;
    if let Some(unknown) = q.functions.iter().find(|f| !known.contains(f)) {
        return Err(format!("the model has no function {unknown:?}"));
    }
    if q.functions.is_empty() {
        return Err("no function may be called".into());
    }
    Ok(messages)
}

/// A loaded tiny student and how it decodes.
pub struct Served {
    /// The model.
    pub model: Tiny,
    /// Its template (tools, tokenizer).
    pub tpl: ChatTemplate,
    /// The value rules it decodes with (learned from the training conversations).
    pub rules: ValueRules,
    /// Its span rules with the decoding bonuses.
    pub spans: SpanSetup,
    /// Decoding settings.
    pub params: PredictParams,
    /// Where it runs.
    pub dev: Device,
    /// Which tokens are digits (`grammar::digit_tokens`), computed once.
    pub digits: Vec<bool>,
    /// The caches of recent prompts, reused by a request decoded alone.
    pub prefixes: RefCell<PrefixCache>,
}

impl Answerer for Served {
    fn functions(&self) -> Vec<String> {
        self.tpl.functions.iter().map(|f| f.name.clone()).collect()
    }

    fn respond_name(&self) -> String {
        self.tpl.respond_name().to_string()
    }

    fn answer(&self, batch: &[ServeQuery]) -> Vec<ServeAnswer> {
        let lim = Limits {
            max_value_tokens: self.params.max_value_tokens.max(1),
            max_new_tokens: self.params.max_new_tokens.max(8),
            forced_runs: self.params.forced_runs,
        };
        let context = self.model.cfg.context as usize;
        let mut answers = Vec::with_capacity(batch.len());
        let mut ready: Vec<(u64, Prompt, Vec<bool>, Option<Sampling>)> = Vec::new();
        for q in batch {
            match self.prepare(q, context, &lim) {
                Ok((prompt, callable)) => ready.push((q.id, prompt, callable, q.sampling.clone())),
                Err(error) => answers.push(refused(q.id, error)),
            }
        }
        for chunk in ready.chunks(self.params.batch_size.max(1)) {
            let prompts: Vec<&Prompt> = chunk.iter().map(|(_, p, _, _)| p).collect();
            let callable: Vec<Vec<bool>> = chunk.iter().map(|(_, _, c, _)| c.clone()).collect();
            let mut samplers: Vec<Option<Sampler>> = chunk
                .iter()
                .map(|(_, _, _, s)| s.as_ref().map(Sampler::new))
                .collect();
            let (states, cached) = tch::no_grad(|| {
                let (started, cached) = self.prefill(&prompts, lim.room());
                let states = decode_from(
                    &self.model,
                    &self.tpl,
                    &prompts,
                    started,
                    Some(&callable),
                    &mut samplers,
                    &lim,
                    &self.digits,
                    Some(&self.spans),
                    self.dev,
                );
                (states, cached)
            });
            for ((id, prompt, _, _), st) in chunk.iter().zip(states) {
                answers.push(ServeAnswer {
                    id: *id,
                    call: Some(st.call(&self.tpl).to_plain_json()),
                    error: None,
                    prompt_tokens: prompt.tokens.len(),
                    cached_tokens: cached,
                    completion_tokens: st.generated(),
                });
            }
        }
        answers
    }
}

impl Served {
    /// Prefills a batch: a prompt alone from the prefix cache, a batch of several in full (their
    /// prefixes would need aligning). Returns the start and, for a prompt alone, how many of its
    /// tokens were reused.
    fn prefill(&self, prompts: &[&Prompt], room: usize) -> ((Cache, StepOutput), usize) {
        match prompts {
            [one] => {
                let mut prefixes = self.prefixes.borrow_mut();
                let (cache, out, reused) =
                    prefixes.prefill(&self.model, &self.tpl, one, room, self.dev);
                ((cache, out), reused)
            }
            _ => (
                prefill_batch(&self.model, &self.tpl, prompts, room, self.dev),
                0,
            ),
        }
    }

    /// A query's prompt and which functions it may call.
    fn prepare(
        &self,
        q: &ServeQuery,
        context: usize,
        lim: &Limits,
    ) -> Result<(Prompt, Vec<bool>), String> {
        let known = self.functions();
        let messages = read_query(q, &known)?;
        let callable: Vec<bool> = known.iter().map(|f| q.functions.contains(f)).collect();
        Ok((self.tpl.prompt(&messages, context, lim.room()), callable))
    }
}

/// Answers every line of `input` until it closes; `emit` writes each answer line. A line that is
/// not a [`ServeBatch`] ends the worker with an error (the server never sends one).
pub fn serve(
    served: &dyn Answerer,
    input: impl BufRead,
    emit: &mut dyn FnMut(&Value),
) -> Result<(), WorkerError> {
    for line in input.lines() {
        let line = line.map_err(|e| WorkerError::Invalid(format!("stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let batch: ServeBatch = serde_json::from_str(&line)
            .map_err(|e| WorkerError::Invalid(format!("stdin: not a serve batch: {e}")))?;
        let answers = ServeAnswers {
            answers: served.answer(&batch.batch),
        };
        emit(&serde_json::to_value(answers).expect("answers serialize"));
    }
    Ok(())
}

impl Answerer for Qwen3Served {
    fn functions(&self) -> Vec<String> {
        Qwen3Served::functions(self)
    }

    fn respond_name(&self) -> String {
        Qwen3Served::respond_name(self)
    }

    /// Queries are decoded in groups that may call the same functions (the prompt lists them).
    fn answer(&self, batch: &[ServeQuery]) -> Vec<ServeAnswer> {
        let known = Answerer::functions(self);
        let mut answers = Vec::with_capacity(batch.len());
        let mut groups: std::collections::BTreeMap<Vec<String>, Vec<(u64, Vec<_>, _)>> =
            Default::default();
        for q in batch {
            match read_query(q, &known) {
                Ok(m) => groups.entry(q.functions.clone()).or_default().push((
                    q.id,
                    m,
                    q.sampling.as_ref().map(Sampler::new),
                )),
                Err(e) => answers.push(refused(q.id, e)),
            }
        }
        for (functions, queries) in groups {
            let ids: Vec<u64> = queries.iter().map(|(id, _, _)| *id).collect();
            let questions: Vec<_> = queries.iter().map(|(_, m, _)| m.clone()).collect();
            let mut samplers: Vec<_> = queries.into_iter().map(|(_, _, s)| s).collect();
            match Qwen3Served::answer(self, &questions, &functions, &mut samplers) {
                Ok(calls) => {
                    for (id, (call, prompt, generated)) in ids.iter().zip(calls) {
                        let Some(call) = call else {
                            answers.push(refused(
                                *id,
                                format!(
                                    "the student did not finish a call within {generated} tokens \
                                 ([predict] max_new_tokens)"
                                ),
                            ));
                            continue;
                        };
                        answers.push(ServeAnswer {
                            id: *id,
                            call: Some(call.to_plain_json()),
                            error: None,
                            prompt_tokens: prompt,
                            cached_tokens: 0,
                            completion_tokens: generated,
                        });
                    }
                }
                Err(e) => answers.extend(ids.iter().map(|id| refused(*id, e.to_string()))),
            }
        }
        answers
    }
}
