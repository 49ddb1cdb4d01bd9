//! Parity of the Qwen3 student with transformers and PEFT, on the CPU in fp32.
//!
//! `qwen3_reference.py setup` builds a tiny random Qwen3 checkpoint, tokenizer, chat template and
//! PEFT adapter with transformers (nothing downloaded) and records reference outputs; this test
//! checks tracelab's logits, LoRA loss before and after one SGD step, and chat rendering against
//! them, then saves a merged checkpoint and an adapter and has `qwen3_reference.py verify` load
//! them in transformers / PEFT. Skips with a message when python with transformers, peft,
//! safetensors and tokenizers is not available (`TRACELAB_PYTHON` names the interpreter; default
//! the project's `.venv`, then `python3`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tracelab_core::conversation::{Message, ToolCall};
use tracelab_core::tools::ToolSet;
use tracelab_student::chat_template::ChatTemplate;
use tracelab_student::hf::{self, HfError, HfModelDir};
use tracelab_student::lora::LoraConfig;
use tracelab_student::qwen3::{causal_lm_loss, Config, KvCache, Qwen3};

use crate::common::python::{python, reference as run_reference};
use crate::common::repo_root;

const TOL: f64 = 1e-4;

/// tch's random generator is global: tests that seed it and draw from it take this lock, so that
/// parallel tests do not draw from each other's streams.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(path: &Path) -> BTreeMap<String, Tensor> {
    hf::read_safetensors(path).unwrap().into_iter().collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn scalar(t: &Tensor) -> f64 {
    t.reshape([-1]).double_value(&[0])
}

/// The conversation rendered through the chat template: system prompt, a search call, its result,
/// a reply, a second user turn and a reply.
fn conversation() -> (Vec<Message>, ToolSet) {
    let tools = json!([
        {"type": "function", "function": {
            "name": "FindRestaurants",
            "description": "Find restaurants by city and cuisine",
            "parameters": {"type": "object",
                "properties": {"city": {"type": "string", "description": "City name"},
                               "cuisine": {"type": "string", "enum": ["Italian", "Mexican"]}},
                "required": ["city"]}}},
        {"type": "function", "function": {
            "name": "respond_to_user",
            "description": "Send a message to the user.",
            "parameters": {"type": "object",
                "properties": {"message": {"type": "string"}}, "required": ["message"]}}}
    ]);
    let tools = ToolSet::from_openai(&tools, "respond_to_user", &[], "test").unwrap();
    let args = |v: Value| v.as_object().unwrap().clone();
    let mut find = ToolCall::new(
        "FindRestaurants",
        args(json!({"city": "San Jose", "cuisine": "Italian"})),
    );
    find.id = "call_0".into();
    let messages = vec![
        Message::System {
            content: "You help people find restaurants.".into(),
        },
        Message::User {
            content: "I'd like Italian food in San Jose.".into(),
        },
        Message::call(find),
        Message::Tool {
            tool_call_id: "call_0".into(),
            content: r#"[{"name": "Il Fornaio", "city": "San Jose"}]"#.into(),
        },
        Message::call(ToolCall::new(
            "respond_to_user",
            args(json!({"message": "How about Il Fornaio? A café in Zürich style."})),
        )),
        Message::User {
            content: "Great, thanks!".into(),
        },
        Message::call(ToolCall::new(
            "respond_to_user",
            args(json!({"message": "You're welcome."})),
        )),
    ];
    (messages, tools)
}

#[test]
fn qwen3_matches_transformers_and_peft() {
    let Some(py) = python(&repo_root()) else {
        eprintln!(
            "SKIPPED qwen3 parity: no python with transformers, peft, safetensors and tokenizers \
             (set TRACELAB_PYTHON or install them into .venv)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (messages, tools) = conversation();
    std::fs::write(
        dir.join("chat_input.json"),
        serde_json::to_string(&json!({"messages": messages, "tools": tools.to_openai(false)}))
            .unwrap(),
    )
    .unwrap();
    run_reference(&repo_root(), &py, "setup", dir);
    let reference = read(&dir.join("reference.safetensors"));
    let ids = &reference["input_ids"];
    let labels = &reference["labels"];

    // 1. Logits of the base model equal transformers' (single file and sharded).
    let mut model = Qwen3::load(&dir.join("model"), Device::Cpu, Kind::Float).unwrap();
    assert!(
        model.config.tie_word_embeddings,
        "the fixture tests tied embeddings"
    );
    let logits = tch::no_grad(|| model.forward(ids));
    let d = max_abs_diff(&logits, &reference["logits"]);
    println!("base logits: max |tracelab - transformers| = {d:.2e}");
    assert!(d < TOL, "base logits differ by {d}");
    let sharded = HfModelDir::open(&dir.join("model_sharded")).unwrap();
    assert!(sharded.weight_files.len() > 1, "the fixture is sharded");
    let d = max_abs_diff(
        &tch::no_grad(|| sharded.load(Device::Cpu, Kind::Float).unwrap().forward(ids)),
        &logits,
    );
    assert!(d < 1e-6, "sharded checkpoint gives other logits ({d})");

    // 2. With PEFT's adapter: same logits, same loss, and the same loss after one SGD step.
    let lora = model.load_adapter(&dir.join("adapter")).unwrap();
    assert_eq!(lora.config.rank, 4);
    let mut opt = nn::Sgd::default().build(&lora.vs, 0.5).unwrap();
    let logits = model.forward_t(ids, true);
    let d = max_abs_diff(&logits.detach(), &reference["logits_lora"]);
    println!("LoRA logits: max |tracelab - peft| = {d:.2e}");
    assert!(d < TOL, "LoRA logits differ by {d}");
    let loss0 = causal_lm_loss(&logits, labels);
    let (ours, theirs) = (scalar(&loss0), scalar(&reference["loss0"]));
    println!("LoRA loss before the step: tracelab {ours:.6}, peft {theirs:.6}");
    assert!(
        (ours - theirs).abs() < TOL,
        "loss before the step: {ours} vs {theirs}"
    );
    opt.zero_grad();
    loss0.backward();
    opt.step();
    let loss1 = tch::no_grad(|| causal_lm_loss(&model.forward_t(ids, true), labels));
    let (ours, theirs) = (scalar(&loss1), scalar(&reference["loss1"]));
    println!("LoRA loss after one SGD step: tracelab {ours:.6}, peft {theirs:.6}");
    assert!(
        (ours - theirs).abs() < TOL,
        "loss after one step: {ours} vs {theirs}"
    );
    assert!(ours < scalar(&loss0) - 0.1, "the step lowered the loss");

    // 3. The trained adapter, merged and saved, loads in transformers with tracelab's logits; the
    //    adapter saved alone loads in PEFT with the same logits.
    let adapted = tch::no_grad(|| model.forward(ids));
    model.save_merged(&dir.join("merged")).unwrap();
    model
        .save_adapter(&lora, &dir.join("rust_adapter"), "model")
        .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "config.json",
    ] {
        assert!(
            dir.join("merged").join(f).is_file(),
            "merged checkpoint lacks {f}"
        );
    }
    run_reference(&repo_root(), &py, "verify", dir);
    let verify = read(&dir.join("verify.safetensors"));
    let d = max_abs_diff(&verify["merged_logits"], &adapted);
    println!("merged checkpoint in transformers: max |diff| = {d:.2e}");
    assert!(d < TOL, "merged checkpoint logits differ by {d}");
    let d = max_abs_diff(&verify["adapter_logits"], &adapted);
    println!("saved adapter in peft: max |diff| = {d:.2e}");
    assert!(d < TOL, "saved adapter logits differ by {d}");
    // Merging in place gives the same model too.
    model.merge_lora();
    assert!(!model.has_lora());
    let d = max_abs_diff(&tch::no_grad(|| model.forward(ids)), &adapted);
    assert!(d < TOL, "merge_lora changed the logits by {d}");

    // 4. The chat template renders the same text and tokens as apply_chat_template with tools.
    let chat: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("chat_reference.json")).unwrap())
            .unwrap();
    let template = ChatTemplate::from_model_dir(&dir.join("model")).unwrap();
    let tokenizer = hf::load_tokenizer(&dir.join("model")).unwrap();
    let rendered = template.render(&messages, Some(&tools)).unwrap();
    assert_eq!(
        rendered.text,
        chat["text"].as_str().unwrap(),
        "rendered text differs"
    );
    let encoded = template
        .encode(&tokenizer, &messages, Some(&tools))
        .unwrap();
    let expected_ids: Vec<i64> = chat["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(
        encoded.ids, expected_ids,
        "token ids differ from apply_chat_template"
    );
    println!(
        "chat template: {} tokens identical to transformers",
        encoded.ids.len()
    );
    // Loss only on the assistant turns: the masked tokens decode to exactly the three calls.
    assert_eq!(rendered.assistant_spans.len(), 3);
    let masked: Vec<u32> = encoded
        .ids
        .iter()
        .zip(&encoded.loss_mask)
        .filter(|(_, &m)| m)
        .map(|(&id, _)| id as u32)
        .collect();
    let decoded = tokenizer.decode(&masked, false).unwrap();
    let expected = concat!(
        "<tool_call>\n{\"name\": \"FindRestaurants\", \"arguments\": {\"city\": \"San Jose\", \"cuisine\": \"Italian\"}}\n</tool_call><|im_end|>",
        "<tool_call>\n{\"name\": \"respond_to_user\", \"arguments\": {\"message\": \"How about Il Fornaio? A café in Zürich style.\"}}\n</tool_call><|im_end|>",
        "<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"respond_to_user\", \"arguments\": {\"message\": \"You're welcome.\"}}\n</tool_call><|im_end|>",
    );
    assert_eq!(decoded, expected);

    // 5. Too long for the context: whole exchanges are cut from the left, the tool header stays.
    let full = encoded.ids.len();
    let fitted = template
        .encode_within(&tokenizer, &messages, Some(&tools), full - 1)
        .unwrap();
    assert_eq!(fitted.dropped, 4, "cut at the second user message");
    let kept = [&messages[..1], &messages[5..]].concat();
    assert_eq!(
        fitted.encoded,
        template.encode(&tokenizer, &kept, Some(&tools)).unwrap()
    );
    assert!(template
        .encode_within(&tokenizer, &messages, Some(&tools), 10)
        .is_err());
}

fn tiny_config() -> Config {
    serde_json::from_value(json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": 50, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 64, "rope_theta": 1000000.0, "tie_word_embeddings": false
    }))
    .unwrap()
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let _rng = rng_lock();
    tch::manual_seed(3);
    let model = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::randint(50, [2, 9], (Kind::Int64, Device::Cpu));
    let full = tch::no_grad(|| model.forward(&ids));
    let mut cache = KvCache::new();
    // A prompt of 5, a chunk of 3, then one token: each against the full causal forward.
    let chunks = tch::no_grad(|| {
        [(0, 5), (5, 3), (8, 1)]
            .iter()
            .map(|&(s, n)| model.forward_cached(&ids.narrow(1, s, n), &mut cache))
            .collect::<Vec<_>>()
    });
    assert_eq!(cache.len(), 9);
    let d = max_abs_diff(&Tensor::cat(&chunks, 1), &full);
    assert!(d < 1e-5, "cached decoding differs by {d}");
}

#[test]
fn lora_starts_at_the_base_model_and_trains_only_adapters() {
    let _rng = rng_lock();
    tch::manual_seed(4);
    let mut model = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::randint(50, [1, 7], (Kind::Int64, Device::Cpu));
    let base = tch::no_grad(|| model.forward(&ids));
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q".into(), "down_proj".into()],
    };
    let lora = model.attach_lora(&cfg).unwrap();
    // 2 layers x (q_proj: 4x32 + 64x4, down_proj: 4x48 + 32x4)
    assert_eq!(
        lora.parameter_count(),
        2 * (4 * 32 + 64 * 4 + 4 * 48 + 32 * 4)
    );
    assert!(max_abs_diff(&tch::no_grad(|| model.forward(&ids)), &base) == 0.0);
    assert!(
        model
            .named_weights()
            .iter()
            .all(|(_, t)| !t.requires_grad()),
        "base is frozen"
    );
    assert!(matches!(
        model.attach_lora(&cfg),
        Err(tracelab_student::lora::LoraError::AlreadyAttached)
    ));
    let bad = LoraConfig {
        target_modules: vec!["qkv".into()],
        ..LoraConfig::default()
    };
    let mut other = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    assert!(other
        .attach_lora(&bad)
        .unwrap_err()
        .to_string()
        .contains("qkv"));
}

#[test]
fn unsupported_architecture_and_missing_files_are_named() {
    let _rng = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let err = HfModelDir::open(dir).unwrap_err();
    assert!(
        matches!(err, HfError::MissingFile { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );

    let mut cfg: Map<String, Value> = serde_json::to_value(tiny_config())
        .unwrap()
        .as_object()
        .unwrap()
        .clone();
    std::fs::write(
        dir.join("config.json"),
        Value::Object(cfg.clone()).to_string(),
    )
    .unwrap();
    let err = HfModelDir::open(dir).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    cfg.insert("model_type".into(), json!("llama"));
    cfg.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    std::fs::write(
        dir.join("config.json"),
        Value::Object(cfg.clone()).to_string(),
    )
    .unwrap();
    let err = HfModelDir::open(dir).unwrap_err();
    assert!(
        matches!(err, HfError::Unsupported { .. }) && err.to_string().contains("LlamaForCausalLM"),
        "{err}"
    );

    // A checkpoint whose tensors do not fit the config names the tensor.
    let config = tiny_config();
    cfg = serde_json::to_value(&config)
        .unwrap()
        .as_object()
        .unwrap()
        .clone();
    std::fs::write(dir.join("config.json"), Value::Object(cfg).to_string()).unwrap();
    tch::manual_seed(5);
    let model = Qwen3::random(config, Device::Cpu, Kind::Float).unwrap();
    let mut tensors: Vec<(String, Tensor)> = model
        .named_weights()
        .into_iter()
        .map(|(n, t)| (n, t.shallow_clone()))
        .collect();
    tensors.retain(|(n, _)| n != "model.layers.1.self_attn.k_norm.weight");
    hf::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let err = Qwen3::load(dir, Device::Cpu, Kind::Float).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.layers.1.self_attn.k_norm.weight"),
        "{err}"
    );
}

#[test]
fn checkpointed_backward_gives_the_same_gradients() {
    let _rng = rng_lock();
    tch::manual_seed(6);
    let mut model = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let lora = model.attach_lora(&cfg).unwrap();
    let flat = &lora.vs.trainable_variables()[0];
    // Non-zero B, so that A gets gradients too.
    tch::no_grad(|| {
        let _ = flat.shallow_clone().normal_(0.0, 0.1);
    });
    let ids = Tensor::randint(50, [2, 11], (Kind::Int64, Device::Cpu));
    let labels = ids.shallow_clone();
    let loss = causal_lm_loss(&model.forward_t(&ids, true), &labels);
    loss.backward();
    let plain = flat.grad().copy();
    tch::no_grad(|| {
        let _ = flat.grad().zero_();
    });
    let ckpt_loss = model.backward_checkpointed(&ids, &labels, true);
    assert!((scalar(&loss) - scalar(&ckpt_loss)).abs() < 1e-6);
    let d = max_abs_diff(&flat.grad(), &plain);
    assert!(
        plain.abs().max().double_value(&[]) > 1e-3,
        "gradients are not trivial"
    );
    assert!(d < 1e-6, "checkpointed gradients differ by {d}");

    // With dropout, the recomputation sees the first pass's masks: same seed, same gradients.
    let mut dropped = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    let lora = dropped
        .attach_lora(&LoraConfig {
            dropout: 0.3,
            ..cfg
        })
        .unwrap();
    let flat = &lora.vs.trainable_variables()[0];
    tch::no_grad(|| {
        let _ = flat.shallow_clone().normal_(0.0, 0.1);
    });
    let mut grads = Vec::new();
    for _ in 0..2 {
        tch::manual_seed(7);
        if flat.grad().defined() {
            tch::no_grad(|| {
                let _ = flat.grad().zero_();
            });
        }
        let _loss = dropped.backward_checkpointed(&ids, &labels, true);
        grads.push(flat.grad().copy());
    }
    assert_eq!(max_abs_diff(&grads[0], &grads[1]), 0.0);
}

#[test]
fn bf16_forward_and_lora_step_run_and_track_fp32() {
    let _rng = rng_lock();
    tch::manual_seed(8);
    let config = tiny_config();
    let model32 = Qwen3::random(config.clone(), Device::Cpu, Kind::Float).unwrap();
    let mut weights: BTreeMap<String, Tensor> = model32
        .named_weights()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut model16 =
        Qwen3::from_weights(config, &mut weights, Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(model16.kind(), Kind::BFloat16);
    let ids = Tensor::randint(50, [2, 9], (Kind::Int64, Device::Cpu));
    let l32 = tch::no_grad(|| model32.forward(&ids));
    let l16 = tch::no_grad(|| model16.forward(&ids));
    assert_eq!(l16.kind(), Kind::BFloat16);
    let d = max_abs_diff(&l16.to_kind(Kind::Float), &l32);
    assert!(d < 0.05, "bf16 logits drift by {d}");
    // LoRA in bf16: fp32 master weights receive fp32 gradients; a step changes the loss.
    let lora = model16
        .attach_lora(&LoraConfig {
            rank: 4,
            ..LoraConfig::default()
        })
        .unwrap();
    let mut opt = nn::AdamW::default().build(&lora.vs, 1e-2).unwrap();
    let loss0 = causal_lm_loss(&model16.forward_t(&ids, true), &ids);
    assert_eq!(loss0.kind(), Kind::Float);
    opt.zero_grad();
    loss0.backward();
    let flat = &lora.vs.trainable_variables()[0];
    assert_eq!(flat.grad().kind(), Kind::Float);
    opt.step();
    let loss1 = tch::no_grad(|| causal_lm_loss(&model16.forward_t(&ids, false), &ids));
    assert!(scalar(&loss1) != scalar(&loss0));
    let ckpt = model16.backward_checkpointed(&ids, &ids, true);
    assert!(scalar(&ckpt).is_finite());
}

#[test]
fn left_padded_batch_decodes_like_single_rows() {
    let _rng = rng_lock();
    tch::manual_seed(9);
    let model = Qwen3::random(tiny_config(), Device::Cpu, Kind::Float).unwrap();
    let long = Tensor::randint(50, [1, 9], (Kind::Int64, Device::Cpu));
    let short = Tensor::randint(50, [1, 6], (Kind::Int64, Device::Cpu));
    let next = Tensor::randint(50, [2, 1], (Kind::Int64, Device::Cpu));
    // Row 0: 3 padding tokens then the short prompt; row 1: the long prompt.
    let ids = Tensor::cat(
        &[
            Tensor::cat(
                &[
                    Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)),
                    short.shallow_clone(),
                ],
                1,
            ),
            long.shallow_clone(),
        ],
        0,
    );
    let mask = Tensor::cat(
        &[
            Tensor::cat(
                &[
                    Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)),
                    Tensor::ones([1, 6], (Kind::Int64, Device::Cpu)),
                ],
                1,
            ),
            Tensor::ones([1, 9], (Kind::Int64, Device::Cpu)),
        ],
        0,
    );
    let mut cache = KvCache::new();
    let (prefill, step) = tch::no_grad(|| {
        let prefill = model.forward_padded(&ids, &mask, &mut cache);
        let step = model.forward_padded(
            &next,
            &Tensor::ones([2, 1], (Kind::Int64, Device::Cpu)),
            &mut cache,
        );
        (prefill, step)
    });
    assert!(
        !bool::try_from(prefill.isnan().any()).unwrap(),
        "padding produced NaN"
    );
    for (row, prompt) in [(0i64, &short), (1, &long)] {
        let mut alone = KvCache::new();
        let (a_prefill, a_step) = tch::no_grad(|| {
            let p = model.forward_cached(prompt, &mut alone);
            let s = model.forward_cached(&next.narrow(0, row, 1), &mut alone);
            (p, s)
        });
        let n = prompt.size()[1];
        let d = max_abs_diff(&prefill.narrow(0, row, 1).narrow(1, 9 - n, n), &a_prefill);
        assert!(d < 1e-5, "row {row} prompt logits differ by {d}");
        let d = max_abs_diff(&step.narrow(0, row, 1), &a_step);
        assert!(d < 1e-5, "row {row} next-token logits differ by {d}");
    }
}
