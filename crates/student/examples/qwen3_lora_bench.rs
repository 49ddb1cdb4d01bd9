//! Training throughput and model-FLOPs utilization of a LoRA step of a Qwen3-1.7B-shaped model
//! (bf16, LoRA rank 64 on all seven linear modules, AdamW) in tracelab's tch implementation.
//! `bench/qwen3_lora_gpu.sh` runs it next to the same step in PyTorch + PEFT
//! (`bench/qwen3_lora_gpu.py`); both print one JSON line with the same fields.
//!
//! Usage: `qwen3_lora_bench [--model-dir DIR] [--seq 2048] [--batch 4] [--steps 20] [--warmup 3]
//! [--rank 64] [--peak-tflops 989] [--device cuda|cpu] [--checkpoint]` (`--checkpoint`: activation
//! checkpointing per layer). Without `--model-dir` the weights are
//! random (normal, std 0.02), which does not change the arithmetic.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};
use tracelab_student::hf;
use tracelab_student::lora::LoraConfig;
use tracelab_student::qwen3::{causal_lm_loss, Config, Qwen3};

/// Command-line settings.
struct Args {
    model_dir: Option<PathBuf>,
    seq: i64,
    batch: i64,
    steps: usize,
    warmup: usize,
    rank: i64,
    peak_tflops: f64,
    device: Device,
    checkpoint: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        model_dir: None,
        seq: 2048,
        batch: 4,
        steps: 20,
        warmup: 3,
        rank: 64,
        // H100 SXM dense bf16 peak.
        peak_tflops: 989.0,
        device: Device::cuda_if_available(),
        checkpoint: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        };
        match flag.as_str() {
            "--checkpoint" => a.checkpoint = true,
            "--model-dir" => a.model_dir = Some(PathBuf::from(value())),
            "--seq" => a.seq = value().parse().expect("--seq: integer"),
            "--batch" => a.batch = value().parse().expect("--batch: integer"),
            "--steps" => a.steps = value().parse().expect("--steps: integer"),
            "--warmup" => a.warmup = value().parse().expect("--warmup: integer"),
            "--rank" => a.rank = value().parse().expect("--rank: integer"),
            "--peak-tflops" => a.peak_tflops = value().parse().expect("--peak-tflops: number"),
            "--device" => {
                a.device = match value().as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => panic!("--device: cpu or cuda, not {other}"),
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The shape of Qwen3-1.7B (its config.json).
fn qwen3_1_7b() -> Config {
    serde_json::from_value(json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": true
    }))
    .expect("valid config")
}

/// FLOPs of one training token of a LoRA step, and of a full fine-tuning step (the "6N"
/// convention), both with causal attention. Same formula as bench/qwen3_lora_gpu.py.
fn flops_per_token(c: &Config, seq: i64, lora_params: i64) -> (f64, f64) {
    let (h, i, d) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.head_dim() as f64,
    );
    let (nq, nkv, l) = (
        c.num_attention_heads as f64,
        c.kv_heads() as f64,
        c.num_hidden_layers as f64,
    );
    // Weights that take part in matmuls: attention and MLP projections, and lm_head.
    let per_layer = h * nq * d + 2.0 * h * nkv * d + nq * d * h + 3.0 * h * i;
    let matmul_params = l * per_layer + c.vocab_size as f64 * h;
    // QK^T and PV: 2 matmuls x 2 FLOPs x seq x (heads x head_dim) per token, halved for causal.
    let attn_fwd = l * 2.0 * seq as f64 * nq * d;
    // Frozen base: forward 2N, backward only to the activations 2N; adapters: 6 per parameter.
    let lora = 4.0 * matmul_params + 6.0 * lora_params as f64 + 3.0 * attn_fwd;
    let full = 6.0 * matmul_params + 3.0 * attn_fwd;
    (lora, full)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() {
    let args = parse_args();
    tch::manual_seed(0);
    let kind = hf::default_kind(args.device);
    let t0 = Instant::now();
    let mut model = match &args.model_dir {
        Some(dir) => Qwen3::load(dir, args.device, kind).expect("load checkpoint"),
        None => Qwen3::random(qwen3_1_7b(), args.device, kind).expect("random model"),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let lora_cfg = LoraConfig {
        rank: args.rank,
        alpha: 2.0 * args.rank as f64,
        ..LoraConfig::default()
    };
    let lora = model.attach_lora(&lora_cfg).expect("attach LoRA");
    let mut opt = nn::AdamW::default()
        .build(&lora.vs, 5e-5)
        .expect("optimizer");
    let vocab = model.config.vocab_size;
    let (flops_lora, flops_full) = flops_per_token(&model.config, args.seq, lora.parameter_count());

    let mut losses = Vec::new();
    let mut timed = 0.0;
    for step in 0..args.warmup + args.steps {
        let ids = Tensor::randint(vocab, [args.batch, args.seq], (Kind::Int64, args.device));
        sync(args.device);
        let start = Instant::now();
        opt.zero_grad();
        let loss = if args.checkpoint {
            model.backward_checkpointed(&ids, &ids, true)
        } else {
            let loss = causal_lm_loss(&model.forward_t(&ids, true), &ids);
            loss.backward();
            loss
        };
        opt.step();
        let loss = loss.double_value(&[]);
        sync(args.device);
        if step >= args.warmup {
            timed += start.elapsed().as_secs_f64();
        }
        losses.push(loss);
    }
    let tokens = (args.steps as i64 * args.batch * args.seq) as f64;
    let tokens_per_s = tokens / timed;
    let peak = args.peak_tflops * 1e12;
    println!(
        "{}",
        json!({
            "impl": "tracelab (tch)",
            "device": format!("{:?}", args.device),
            "dtype": format!("{kind:?}"),
            "checkpoint": args.checkpoint,
            "seq": args.seq, "batch": args.batch, "steps": args.steps, "rank": args.rank,
            "params": model.config.parameter_count(),
            "lora_params": lora.parameter_count(),
            "load_s": load_s,
            "step_s": timed / args.steps as f64,
            "tokens_per_s": tokens_per_s,
            "mfu_lora": tokens_per_s * flops_lora / peak,
            "mfu_6n": tokens_per_s * flops_full / peak,
            "loss_first": losses.first(), "loss_last": losses.last(),
        })
    );
}
