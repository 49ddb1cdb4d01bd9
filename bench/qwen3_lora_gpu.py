"""Training throughput and MFU of the same LoRA step as crates/student/examples/qwen3_lora_bench.rs,
in PyTorch + transformers + PEFT: a Qwen3-1.7B-shaped model (random weights unless --model-dir),
bf16, LoRA rank 64 (alpha 128, dropout 0.05) on q/k/v/o/gate/up/down, AdamW lr 5e-5, SDPA attention.
Prints one JSON line with the same fields as the Rust bench.
"""

import argparse
import json
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def flops_per_token(c, seq, lora_params):
    """Same formula as flops_per_token in the Rust bench."""
    h, i, d = c.hidden_size, c.intermediate_size, c.head_dim
    nq, nkv, l = c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers
    per_layer = h * nq * d + 2 * h * nkv * d + nq * d * h + 3 * h * i
    matmul_params = l * per_layer + c.vocab_size * h
    attn_fwd = l * 2 * seq * nq * d
    return 4 * matmul_params + 6 * lora_params + 3 * attn_fwd, 6 * matmul_params + 3 * attn_fwd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    a = p.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.time()
    if a.model_dir:
        model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype, attn_implementation="sdpa").to(dev)
    else:
        config = Qwen3Config(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
            tie_word_embeddings=True,
        )
        config._attn_implementation = "sdpa"
        with dev:
            model = Qwen3ForCausalLM(config).to(dtype)
    load_s = time.time() - t0
    model.config.use_cache = False
    lcfg = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.05, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    lora_params = sum(q.numel() for q in params)
    opt = torch.optim.AdamW(params, lr=5e-5)
    fwd = torch.compile(model) if a.compile else model
    c = model.base_model.model.config
    flops_lora, flops_full = flops_per_token(c, a.seq, lora_params)

    losses, timed = [], 0.0
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, c.vocab_size, (a.batch, a.seq), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.time()
        loss = fwd(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss = loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= a.warmup:
            timed += time.time() - start
        losses.append(loss)
    tps = a.steps * a.batch * a.seq / timed
    peak = a.peak_tflops * 1e12
    out = {
        "impl": "pytorch+peft" + (" (compiled)" if a.compile else ""),
        "device": str(dev), "dtype": str(dtype), "seq": a.seq, "batch": a.batch, "steps": a.steps,
        "rank": a.rank, "params": sum(q.numel() for q in model.parameters()) - lora_params,
        "lora_params": lora_params, "load_s": load_s, "step_s": timed / a.steps, "tokens_per_s": tps,
        "mfu_lora": tps * flops_lora / peak, "mfu_6n": tps * flops_full / peak,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    if dev.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(out))


if __name__ == "__main__":
    main()
