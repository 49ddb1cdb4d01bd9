//! The `qwen3` model family of the worker: LoRA fine-tuning of a Hugging Face Qwen3 checkpoint on
//! the cell's conversations, and schema-constrained prediction with the result.
//!
//! Training renders every conversation through the checkpoint's own chat template (tools in the
//! system prompt, calls as `<tool_call>{"name": …, "arguments": …}</tool_call>`), puts loss on
//! the assistant tokens only, and trains adapters on the frozen base (AdamW, warm-up and cosine
//! decay, gradient clipping and accumulation as the tiny family does; bf16 on CUDA, fp32 on the
//! CPU). The model directory it writes is either a merged Hugging Face checkpoint or a PEFT
//! adapter with the tokenizer files, plus [`SIDECAR`], which tells `predict` the family, how it
//! was saved and, for an adapter, where the base is.
//!
//! Prediction renders each question with the generation prompt, appends the template's call
//! prefix ([`CallLayout`]) and decodes greedily with a KV cache, batched with left padding,
//! under [`crate::json_call`]'s constraints, so every output is a call the tool schemas accept.

use crate::predict::PairLog;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};
use tracelab_core::conversation::{Conversation, EvalPair, Message, ToolCall};
use tracelab_core::job::PredictParams;
use tracelab_core::job::{SaveMode, TrainParams};
use tracelab_core::tools::ToolSet;

use crate::chat_template::{ChatTemplate, TemplateError};
use crate::hf::{self, HfModelDir};
use crate::json_call::{CallLayout, JsonCallState, JsonLimits, JsonSchema, TokenBytes};
use crate::lora::LoraConfig;
use crate::qwen3::{causal_lm_loss, KvCache, Qwen3, IGNORE_INDEX};
use crate::sampling::Sampler;
use crate::train::{device, lr_at, LossLog, Schedule};
use crate::{Progress, WorkerError};

/// The file in a saved `model/` that says it is a `qwen3` student and how it was saved.
pub const SIDECAR: &str = "tracelab_student.json";

/// What [`SIDECAR`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// `qwen3`.
    pub family: String,
    /// `merged` (the directory is a checkpoint) or `adapter` (a PEFT adapter over `base_model`).
    pub save: SaveMode,
    /// The base checkpoint directory (absolute), for an adapter.
    pub base_model: Option<PathBuf>,
    /// The context length training used: prompts are cut to fit it.
    pub context: usize,
}

fn invalid(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Invalid(e.to_string())
}

/// Reads `model/`'s sidecar, if it has one (tiny students do not).
pub fn read_sidecar(model_dir: &Path) -> Result<Option<Sidecar>, WorkerError> {
    let path = model_dir.join(SIDECAR);
    if !path.is_file() {
        return Ok(None);
    }
    hf::read_json(&path).map(Some).map_err(invalid)
}

/// One training sequence: token ids and labels (`-100` outside assistant turns).
struct Example {
    ids: Vec<i64>,
    labels: Vec<i64>,
}

/// Right-pads `examples` into `[b, t]` ids and labels.
fn batch(examples: &[&Example], pad: i64, dev: Device) -> (Tensor, Tensor, usize) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let mut ids = Vec::with_capacity(examples.len() * t);
    let mut labels = Vec::with_capacity(examples.len() * t);
    let mut real = 0;
    for e in examples {
        ids.extend_from_slice(&e.ids);
        ids.extend(std::iter::repeat_n(pad, t - e.ids.len()));
        labels.extend_from_slice(&e.labels);
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, t - e.ids.len()));
        real += e.ids.len();
    }
    let shape = [examples.len() as i64, t as i64];
    (
        Tensor::from_slice(&ids).reshape(shape).to_device(dev),
        Tensor::from_slice(&labels).reshape(shape).to_device(dev),
        real,
    )
}

/// The id padding uses: the tokenizer's pad token, else `<|endoftext|>`, else 0. Padded
/// positions carry no loss and no real token attends to them, so the choice only has to exist.
fn pad_id(tok: &tokenizers::Tokenizer) -> i64 {
    tok.get_padding()
        .map(|p| p.pad_id)
        .or_else(|| tok.token_to_id("<|endoftext|>"))
        .unwrap_or(0) as i64
}

/// Checks that the tokenizer step produced the checkpoint's own tokenizer: a qwen3 student must
/// see exactly the ids its embeddings were trained with.
fn check_tokenizer(tokenizer: &Path, base: &Path) -> Result<(), WorkerError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| WorkerError::io(p, e));
    if read(tokenizer)? != read(&base.join("tokenizer.json"))? {
        return Err(WorkerError::Invalid(format!(
            "the tokenizer step's tokenizer.json is not {}'s: a qwen3 student needs its \
             checkpoint's tokenizer (set [tokenizer] model_dir to the same directory as [train] \
             model_dir)",
            base.display()
        )));
    }
    Ok(())
}

/// Trains LoRA adapters on the checkpoint in `base` and writes `out/`. Returns statistics.
pub fn train(
    p: &TrainParams,
    base: &Path,
    tokenizer_path: &Path,
    tools: &ToolSet,
    conversations: &[Conversation],
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value, WorkerError> {
    check_tokenizer(tokenizer_path, base)?;
    let tok = hf::load_tokenizer(base).map_err(invalid)?;
    let tpl = ChatTemplate::from_model_dir(base).map_err(invalid)?;
    let context = p.context.max(16) as usize;

    let mut examples = Vec::new();
    let (mut too_long, mut cut_messages) = (0usize, 0usize);
    for c in conversations {
        if !c
            .messages
            .iter()
            .any(|m| matches!(m, Message::Assistant { .. }))
        {
            continue;
        }
        match tpl.encode_within(&tok, &c.messages, Some(tools), context) {
            Ok(fitted) => {
                cut_messages += fitted.dropped;
                let labels = fitted.encoded.labels();
                if labels.iter().any(|&l| l != IGNORE_INDEX) {
                    examples.push(Example {
                        ids: fitted.encoded.ids,
                        labels,
                    });
                }
            }
            Err(TemplateError::TooLong { .. }) => too_long += 1,
            Err(e) => return Err(WorkerError::Invalid(format!("conversation {}: {e}", c.id))),
        }
    }
    if examples.is_empty() {
        return Err(WorkerError::Invalid(format!(
            "no conversation with an assistant turn fits context = {context} tokens \
             ({too_long} too long)"
        )));
    }

    let dev = device(p.device)?;
    let kind = hf::default_kind(dev);
    tch::manual_seed(p.seed as i64);
    let mut model = HfModelDir::open(base)
        .and_then(|d| d.load(dev, kind))
        .map_err(invalid)?;
    let lora_cfg = LoraConfig {
        rank: p.lora.rank,
        alpha: p.lora.alpha,
        dropout: p.lora.dropout,
        target_modules: p.lora.target_modules.clone(),
    };
    let lora = model.attach_lora(&lora_cfg).map_err(invalid)?;
    let mut opt = nn::AdamW {
        wd: p.weight_decay,
        ..Default::default()
    }
    .build(&lora.vs, p.lr)
    .map_err(|e| WorkerError::Torch(e.to_string()))?;
    let pad = pad_id(&tok);

    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let mut schedule = Schedule::new(lens, p);
    let total_steps = schedule.total_steps;
    let mut log = LossLog::new(total_steps);
    for step in 0..total_steps {
        opt.set_lr(lr_at(p, step, total_steps));
        let group = schedule.next_step();
        let mut step_loss = 0f64;
        for ids in &group {
            let exs: Vec<&Example> = ids.iter().map(|&i| &examples[i]).collect();
            let (input, labels, real) = batch(&exs, pad, dev);
            let loss = if p.gradient_checkpointing {
                model.backward_checkpointed(&input, &labels, true)
            } else {
                let loss = causal_lm_loss(&model.forward_t(&input, true), &labels);
                loss.backward();
                loss
            };
            step_loss += loss.double_value(&[]) / group.len() as f64;
            log.tokens_seen += real;
        }
        // Micro-batches count equally: average their gradients (checkpointed backward has no
        // loss to scale, so the gradients are scaled instead).
        if group.len() > 1 {
            tch::no_grad(|| {
                for v in lora.vs.trainable_variables() {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(1.0 / group.len() as f64);
                    }
                }
            });
        }
        opt.clip_grad_norm(p.grad_clip);
        opt.step();
        opt.zero_grad();
        log.step(step, step_loss, progress);
    }

    let base_abs = std::fs::canonicalize(base).map_err(|e| WorkerError::io(base, e))?;
    match p.save {
        SaveMode::Merged => model.save_merged(out).map_err(invalid)?,
        SaveMode::Adapter => {
            model
                .save_adapter(&lora, out, &base_abs.display().to_string())
                .map_err(invalid)?;
            // The tokenizer and chat template travel with the adapter, so `model/` alone says
            // how to render and tokenize for it.
            for name in hf::COMPANION_FILES {
                let from = base.join(name);
                if from.is_file() {
                    std::fs::copy(&from, out.join(name)).map_err(|e| WorkerError::io(&from, e))?;
                }
            }
        }
    }
    let sidecar = Sidecar {
        family: "qwen3".into(),
        save: p.save,
        base_model: (p.save == SaveMode::Adapter).then_some(base_abs),
        context,
    };
    hf::write_json(
        &out.join(SIDECAR),
        &serde_json::to_value(&sidecar).expect("sidecar serializes"),
    )
    .map_err(invalid)?;
    let mut stats = log.stats();
    for (k, v) in [
        ("family", json!("qwen3")),
        ("base_parameters", json!(model.config.parameter_count())),
        ("trainable_parameters", json!(lora.parameter_count())),
        ("conversations", json!(examples.len())),
        ("too_long", json!(too_long)),
        ("messages_cut", json!(cut_messages)),
        ("device", json!(format!("{dev:?}"))),
        ("dtype", json!(format!("{kind:?}"))),
        ("save", json!(sidecar.save)),
    ] {
        stats.insert(k.into(), v);
    }
    Ok(Value::Object(stats))
}

/// Loads a saved qwen3 student for prediction: the merged checkpoint, or the base with the
/// adapter folded in (folding once makes decoding as fast as with a merged model).
pub fn load(model_dir: &Path, sidecar: &Sidecar, dev: Device) -> Result<Qwen3, WorkerError> {
    let kind = hf::default_kind(dev);
    match sidecar.save {
        SaveMode::Merged => Qwen3::load(model_dir, dev, kind).map_err(invalid),
        SaveMode::Adapter => {
            let base = sidecar
                .base_model
                .as_deref()
                .ok_or_else(|| invalid(format!("{}: an adapter without base_model", SIDECAR)))?;
            let mut model = Qwen3::load(base, dev, kind).map_err(invalid)?;
            model.load_adapter(model_dir).map_err(invalid)?;
            model.merge_lora();
            Ok(model)
        }
    }
}

/// The prompt of one pair: the question rendered with the generation prompt, then the call
/// prefix; when too long, whole exchanges are cut from the left (the leading system messages
/// stay), as training cut conversations.
fn prompt_ids(
    tpl: &ChatTemplate,
    tok: &tokenizers::Tokenizer,
    tools: &ToolSet,
    layout: &CallLayout,
    question: &[Message],
    max_tokens: usize,
) -> Result<Vec<i64>, WorkerError> {
    let head = question
        .iter()
        .take_while(|m| matches!(m, Message::System { .. }))
        .count();
    let cuts = std::iter::once(head)
        .chain((head + 1..question.len()).filter(|&i| matches!(question[i], Message::User { .. })));
    let mut last = Vec::new();
    for cut in cuts {
        let kept: Vec<Message> = question[..head]
            .iter()
            .chain(&question[cut..])
            .cloned()
            .collect();
        let text = tpl.render_text(&kept, Some(tools), true).map_err(invalid)? + &layout.prefix;
        let enc = tok.encode(text.as_str(), false).map_err(invalid)?;
        last = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        if last.len() <= max_tokens {
            return Ok(last);
        }
    }
    // Even the last exchange is too long: keep its end, which holds the latest turns.
    let from = last.len().saturating_sub(max_tokens);
    Ok(last.split_off(from))
}

/// Predicts one call per pair with the saved student in `model_dir`.
pub fn predict(
    model_dir: &Path,
    tokenizer_path: &Path,
    tools: &ToolSet,
    pairs: &[EvalPair],
    p: &PredictParams,
    sidecar: &Sidecar,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Vec<ToolCall>, Value), WorkerError> {
    let dev = device(p.device)?;
    let Qwen3Served {
        model,
        tok,
        tpl,
        table,
        lim,
        room,
        pad,
        ..
    } = Qwen3Served::load(model_dir, tokenizer_path, tools.clone(), p, sidecar)?;
    let layout = CallLayout::probe(&tpl, tools).map_err(invalid)?;
    let schema = JsonSchema::new(tools).map_err(invalid)?;
    let prompts: Vec<Vec<i64>> = pairs
        .iter()
        .map(|pair| prompt_ids(&tpl, &tok, tools, &layout, &pair.question, room))
        .collect::<Result<_, _>>()?;
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut out: Vec<Option<ToolCall>> = vec![None; pairs.len()];
    let mut unfinished = 0usize;
    let mut log = PairLog::new(pairs.len());
    for chunk in order.chunks(p.batch_size.max(1)) {
        let batch: Vec<&[i64]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
        let states =
            tch::no_grad(|| decode_batch(&model, &table, &schema, &batch, &lim, pad, &mut []));
        for (&i, st) in chunk.iter().zip(states) {
            unfinished += usize::from(!st.done());
            out[i] = Some(st.call(&schema));
        }
        log.batch(chunk.len(), progress);
    }
    let mut stats = log.stats();
    stats.insert("family".into(), json!("qwen3"));
    stats.insert("unfinished_calls".into(), json!(unfinished));
    stats.insert("device".into(), json!(format!("{dev:?}")));
    let stats = Value::Object(stats);
    Ok((
        out.into_iter().map(|c| c.expect("decoded")).collect(),
        stats,
    ))
}

/// Decodes one batch of prompts (each ending with the call prefix), left-padded, under the JSON
/// constraints: greedily, or by drawing for a prompt with a sampler in `samplers` (empty: greedy
/// for all). Returns each sequence's final state.
pub fn decode_batch(
    model: &Qwen3,
    table: &TokenBytes,
    schema: &JsonSchema,
    prompts: &[&[i64]],
    lim: &JsonLimits,
    pad: i64,
    samplers: &mut [Option<Sampler>],
) -> Vec<JsonCallState> {
    let dev = model.device();
    let b = prompts.len();
    let t = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
    let mut ids = vec![pad; b * t];
    let mut mask = vec![0i64; b * t];
    for (i, p) in prompts.iter().enumerate() {
        let off = t - p.len();
        ids[i * t + off..(i + 1) * t].copy_from_slice(p);
        mask[i * t + off..(i + 1) * t].fill(1);
    }
    let shape = [b as i64, t as i64];
    let mut cache = KvCache::new();
    let logits = model.forward_padded(
        &Tensor::from_slice(&ids).reshape(shape).to_device(dev),
        &Tensor::from_slice(&mask).reshape(shape).to_device(dev),
        &mut cache,
    );
    let mut last = logits.select(1, t as i64 - 1);
    let mut states: Vec<JsonCallState> = (0..b).map(|_| JsonCallState::new()).collect();
    let mut stuck = vec![false; b];
    for _ in 0..lim.max_new_tokens {
        let v = last.size()[1] as usize;
        let scores: Vec<f32> =
            Vec::try_from(last.to_kind(Kind::Float).reshape([-1])).expect("float scores");
        let mut next = Vec::with_capacity(b);
        for (i, st) in states.iter_mut().enumerate() {
            let tok = if st.done() || stuck[i] {
                None
            } else {
                let sampler = samplers.get_mut(i).and_then(Option::as_mut);
                st.step(schema, table, &scores[i * v..(i + 1) * v], lim, sampler)
            };
            // A sequence with no allowed token (a vocabulary without single-byte tokens) stops;
            // its call is reported as unfinished.
            stuck[i] |= tok.is_none() && !st.done();
            next.push(tok.map_or(pad, i64::from));
        }
        if states.iter().zip(&stuck).all(|(s, &k)| s.done() || k) {
            break;
        }
        let step = Tensor::from_slice(&next)
            .reshape([b as i64, 1])
            .to_device(dev);
        last = model.forward_cached(&step, &mut cache).select(1, 0);
    }
    states
}

/// A loaded qwen3 student: the model and what decoding needs (held across requests by `serve`).
pub struct Qwen3Served {
    model: Qwen3,
    tok: tokenizers::Tokenizer,
    tpl: ChatTemplate,
    tools: ToolSet,
    table: TokenBytes,
    lim: JsonLimits,
    room: usize,
    pad: i64,
}

impl Qwen3Served {
    /// Loads the student in `model_dir` with its tokenizer and trained tools.
    pub fn load(
        model_dir: &Path,
        tokenizer_path: &Path,
        tools: ToolSet,
        p: &PredictParams,
        sidecar: &Sidecar,
    ) -> Result<Qwen3Served, WorkerError> {
        let dev = device(p.device)?;
        let tok = tokenizers::Tokenizer::from_file(tokenizer_path)
            .map_err(|e| invalid(format!("{}: {e}", tokenizer_path.display())))?;
        let tpl = ChatTemplate::from_model_dir(model_dir).map_err(invalid)?;
        let model = load(model_dir, sidecar, dev)?;
        let table = TokenBytes::new(&tok, model.config.vocab_size as usize);
        let lim = JsonLimits {
            max_value_tokens: p.max_value_tokens.max(1),
            max_new_tokens: p.max_new_tokens.max(16),
        };
        let room = sidecar.context.saturating_sub(lim.max_new_tokens).max(16);
        let pad = pad_id(&tok);
        Ok(Qwen3Served {
            model,
            tok,
            tpl,
            tools,
            table,
            lim,
            room,
            pad,
        })
    }

    /// The trained functions.
    pub fn functions(&self) -> Vec<String> {
        self.tools
            .functions
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// The reply function's name.
    pub fn respond_name(&self) -> String {
        self.tools
            .respond()
            .map(|f| f.name.clone())
            .unwrap_or_default()
    }

    /// Calls for `questions` (one batch) that may name only `functions`: the prompt lists those
    /// tools, and the JSON constraints allow only them. Returns each call (none when the call
    /// did not finish within the token budget) and its prompt and generated token counts.
    pub fn answer(
        &self,
        questions: &[Vec<Message>],
        functions: &[String],
        samplers: &mut [Option<Sampler>],
    ) -> Result<Vec<(Option<ToolCall>, usize, usize)>, WorkerError> {
        let subset = ToolSet {
            functions: self
                .tools
                .functions
                .iter()
                .filter(|f| functions.contains(&f.name))
                .cloned()
                .collect(),
        };
        let layout = CallLayout::probe(&self.tpl, &subset).map_err(invalid)?;
        let schema = JsonSchema::new(&subset).map_err(invalid)?;
        let prompts: Vec<Vec<i64>> = questions
            .iter()
            .map(|q| prompt_ids(&self.tpl, &self.tok, &subset, &layout, q, self.room))
            .collect::<Result<_, _>>()?;
        let batch: Vec<&[i64]> = prompts.iter().map(Vec::as_slice).collect();
        let states = tch::no_grad(|| {
            decode_batch(
                &self.model,
                &self.table,
                &schema,
                &batch,
                &self.lim,
                self.pad,
                samplers,
            )
        });
        Ok(states
            .iter()
            .zip(&prompts)
            .map(|(st, p)| {
                let call = st.done().then(|| st.call(&schema));
                (call, p.len(), st.generated())
            })
            .collect())
    }
}
