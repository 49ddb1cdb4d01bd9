//! Prediction: batched greedy decoding with a KV cache, constrained by the tool schemas through
//! [`crate::grammar`], with the copy head mixed in at argument-value positions.

use std::time::Instant;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tracelab_core::conversation::{EvalPair, ToolCall};
use tracelab_core::job::PredictParams;

use crate::grammar::{digit_tokens, pick, pick_sampled, Allowed, CallState, Limits, SpanSetup};
use crate::model::{Cache, StepOutput, Tiny};
use crate::sampling::Sampler;
use crate::template::{ChatTemplate, Prompt};
use crate::Progress;

/// Predicts one call per pair. Pairs are decoded in batches of similar prompt length; the
/// span arguments of `spans` are decoded as spans of the conversation.
pub fn predict(
    model: &Tiny,
    tpl: &ChatTemplate,
    pairs: &[EvalPair],
    p: &PredictParams,
    spans: &SpanSetup,
    dev: Device,
    progress: &mut dyn FnMut(Progress),
) -> (Vec<ToolCall>, Value) {
    let lim = Limits {
        max_value_tokens: p.max_value_tokens.max(1),
        max_new_tokens: p.max_new_tokens.max(8),
        forced_runs: p.forced_runs,
    };
    let context = model.cfg.context as usize;
    let prompts: Vec<Prompt> = pairs
        .iter()
        .map(|pair| tpl.prompt(&pair.question, context, lim.room()))
        .collect();
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| prompts[i].tokens.len());
    let digits = digit_tokens(tpl);
    let mut out: Vec<Option<ToolCall>> = vec![None; pairs.len()];
    let mut log = PairLog::new(pairs.len());
    for chunk in order.chunks(p.batch_size.max(1)) {
        let batch: Vec<&Prompt> = chunk.iter().map(|&i| &prompts[i]).collect();
        let calls =
            tch::no_grad(|| decode_batch(model, tpl, &batch, &lim, &digits, Some(spans), dev));
        for (&i, c) in chunk.iter().zip(calls) {
            out[i] = Some(c);
        }
        log.batch(chunk.len(), progress);
    }
    let stats = Value::Object(log.stats());
    (
        out.into_iter().map(|c| c.expect("decoded")).collect(),
        stats,
    )
}

/// Progress lines (pairs/s) and timing statistics of a prediction run, shared by both families.
pub struct PairLog {
    started: Instant,
    total: usize,
    done: usize,
}

impl PairLog {
    /// Starts the clock for `total` pairs.
    pub fn new(total: usize) -> PairLog {
        PairLog {
            started: Instant::now(),
            total,
            done: 0,
        }
    }

    /// Records `n` more decoded pairs and reports progress.
    pub fn batch(&mut self, n: usize, progress: &mut dyn FnMut(Progress)) {
        self.done += n;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        progress(Progress {
            done: self.done as u64,
            total: Some(self.total as u64),
            message: format!("{:.1} pairs/s", self.done as f64 / secs),
        });
    }

    /// `pairs`, `predict_seconds`, `pairs_per_second`.
    pub fn stats(&self) -> serde_json::Map<String, Value> {
        let secs = self.started.elapsed().as_secs_f64();
        let mut m = serde_json::Map::new();
        m.insert("pairs".into(), json!(self.total));
        m.insert(
            "predict_seconds".into(),
            json!((secs * 100.0).round() / 100.0),
        );
        m.insert(
            "pairs_per_second".into(),
            json!(((self.total as f64 / secs.max(1e-9)) * 100.0).round() / 100.0),
        );
        m
    }
}

/// Decodes one batch of prompts (each ends with `<|call|>`) into calls; with `spans`, span
/// parameters are copied from each prompt.
pub fn decode_batch(
    model: &Tiny,
    tpl: &ChatTemplate,
    prompts: &[&Prompt],
    lim: &Limits,
    digits: &[bool],
    spans: Option<&SpanSetup>,
    dev: Device,
) -> Vec<ToolCall> {
    let states = decode_states(model, tpl, prompts, None, &mut [], lim, digits, spans, dev);
    states.iter().map(|s| s.call(tpl)).collect()
}

/// [`decode_batch`]'s decoding, returning each prompt's final state; `callable` restricts each
/// prompt's call to the template functions it marks (a served request's tools), and a prompt
/// with a sampler in `samplers` draws its tokens instead of picking the best (greedy for all
/// when `samplers` is empty).
#[allow(clippy::too_many_arguments)]
pub fn decode_states(
    model: &Tiny,
    tpl: &ChatTemplate,
    prompts: &[&Prompt],
    callable: Option<&[Vec<bool>]>,
    samplers: &mut [Option<Sampler>],
    lim: &Limits,
    digits: &[bool],
    spans: Option<&SpanSetup>,
    dev: Device,
) -> Vec<CallState> {
    let started = prefill_batch(model, tpl, prompts, lim.room(), dev);
    decode_from(
        model, tpl, prompts, started, callable, samplers, lim, digits, spans, dev,
    )
}

/// Prefills `prompts` as one left-padded batch: the cache (with room for `room` generated
/// tokens) and the distributions of each prompt's first generated token.
pub fn prefill_batch(
    model: &Tiny,
    tpl: &ChatTemplate,
    prompts: &[&Prompt],
    room: usize,
    dev: Device,
) -> (Cache, StepOutput) {
    let b = prompts.len();
    let t = prompts.iter().map(|p| p.tokens.len()).max().unwrap_or(1);
    let mut flat = vec![tpl.sp.pad as i64; b * t];
    let mut copyable = vec![false; b * t];
    let mut pad = Vec::with_capacity(b);
    for (i, p) in prompts.iter().enumerate() {
        let off = t - p.tokens.len();
        pad.push(off as i64);
        for (j, &tok) in p.tokens.iter().enumerate() {
            flat[i * t + off + j] = tok as i64;
            copyable[i * t + off + j] = p.copyable[j];
        }
    }
    let copyable = Tensor::from_slice(&copyable)
        .reshape([b as i64, t as i64])
        .to_device(dev);
    let tokens = Tensor::from_slice(&flat)
        .reshape([b as i64, t as i64])
        .to_device(dev);
    // A call starts with its function's name, never inside a value: no copy head yet.
    model.prefill(&tokens, &copyable, &pad, false, room)
}

/// Decodes the calls of `prompts` from their prefilled cache and first distributions (`started`,
/// from [`prefill_batch`] or a [`crate::prefix::PrefixCache`]); the other arguments as in
/// [`decode_states`].
#[allow(clippy::too_many_arguments)]
pub fn decode_from(
    model: &Tiny,
    tpl: &ChatTemplate,
    prompts: &[&Prompt],
    started: (Cache, StepOutput),
    callable: Option<&[Vec<bool>]>,
    samplers: &mut [Option<Sampler>],
    lim: &Limits,
    digits: &[bool],
    spans: Option<&SpanSetup>,
    dev: Device,
) -> Vec<CallState> {
    let b = prompts.len();
    let (mut cache, mut outp) = started;
    let mut states: Vec<CallState> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let st = match spans {
                Some(s) => CallState::with_spans(s.source(&p.tokens, &p.copyable)),
                None => CallState::new(),
            };
            match callable {
                Some(c) => st.only(c[i].clone()),
                None => st,
            }
        })
        .collect();
    let v = tpl.vocab;
    // Without span decoding (the tests' plain decoding) the default bonuses apply.
    let decoding = spans.map(|s| s.decoding().clone()).unwrap_or_default();
    let pad = tpl.sp.pad as i64;
    // The prompt left room for this many tokens after it (`ChatTemplate::prompt`).
    let room = lim.room();
    let mut fed = 0;
    // What each sequence may take next, where the last forced-run check already asked.
    let mut known: Vec<Allowed> = Vec::new();
    while fed < room {
        if states.iter().all(CallState::done) {
            break;
        }
        let vocab: Vec<f32> =
            Vec::try_from(outp.vocab.to_kind(Kind::Float).reshape([-1])).expect("float scores");
        let mixed: Vec<f32> =
            Vec::try_from(outp.mixed.to_kind(Kind::Float).reshape([-1])).expect("float scores");
        let mut runs: Vec<Vec<i64>> = Vec::with_capacity(b);
        let mut known_now = std::mem::take(&mut known).into_iter();
        for (i, st) in states.iter_mut().enumerate() {
            let given = known_now.next();
            if st.done() {
                runs.push(vec![pad]);
                continue;
            }
            let scores = if st.in_value() { &mixed } else { &vocab };
            let allowed = given.unwrap_or_else(|| st.allowed(tpl, lim));
            let row = &scores[i * v..(i + 1) * v];
            let tok = match samplers.get_mut(i).and_then(Option::as_mut) {
                Some(sampler) => pick_sampled(&allowed, row, tpl, digits, &decoding, sampler),
                None => pick(&allowed, row, tpl, digits, &decoding),
            };
            st.push(tpl, tok);
            runs.push(vec![tok as i64]);
        }
        if states.iter().all(CallState::done) {
            break;
        }
        if lim.forced_runs {
            known = extend_forced(&mut states, &mut runs, tpl, lim, pad, room - fed);
        }
        fed += runs[0].len();
        let k = runs[0].len() as i64;
        let next = Tensor::from_slice(&runs.concat()).reshape([b as i64, k]);
        // The copy head only matters where a value is being written.
        let mix = states.iter().any(CallState::in_value);
        outp = model.step(&mut cache, &next.to_device(dev), mix);
    }
    states
}

/// Appends to every sequence's run the tokens its constraints force next, in lock-step: while
/// each unfinished sequence has exactly one allowed token, each takes it (finished ones take
/// padding), so the batch feeds them in the next forward pass; runs stay within `room` tokens.
/// Alone in its batch (a served request), a sequence skips every forced token's pass. Returns
/// what each sequence may take after its run, for the next choice.
fn extend_forced(
    states: &mut [CallState],
    runs: &mut [Vec<i64>],
    tpl: &ChatTemplate,
    lim: &Limits,
    pad: i64,
    room: usize,
) -> Vec<Allowed> {
    loop {
        let allowed: Vec<Allowed> = states.iter().map(|st| st.allowed(tpl, lim)).collect();
        let forced: Option<Vec<Option<u32>>> = states
            .iter()
            .zip(&allowed)
            .map(|(st, a)| match st.done() {
                true => Some(None),
                false => a.forced().map(Some),
            })
            .collect();
        let Some(forced) = forced.filter(|f| runs[0].len() < room && f.iter().any(Option::is_some))
        else {
            return allowed;
        };
        for ((st, run), tok) in states.iter_mut().zip(runs.iter_mut()).zip(forced) {
            match tok {
                Some(t) => {
                    st.push(tpl, t);
                    run.push(t as i64);
                }
                None => run.push(pad),
            }
        }
    }
}
