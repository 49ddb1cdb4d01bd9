#!/usr/bin/env bash
# LoRA training throughput and MFU of a Qwen3-1.7B-shaped model on one GPU: tracelab (tch) next to
# PyTorch + PEFT, same shapes, same step. Needs a CUDA GPU, cargo, and a Python with torch (CUDA),
# transformers, peft (PYTHON, default .venv/bin/python; tch links that torch's libtorch).
#
#   bench/qwen3_lora_gpu.sh [--seq 2048] [--batch 4] [--steps 20] [--model-dir DIR] [--peak-tflops 989]
#
# Results go to bench/results/qwen3_lora_gpu-<date>.jsonl and a summary with the estimated time of
# one benchmark cell (2,000 conversations x 4 epochs at the measured tokens/s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export LIBTORCH_USE_PYTORCH=1 PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
mkdir -p bench/results
out="bench/results/qwen3_lora_gpu-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
cargo build --release -p tracelab-student --example qwen3_lora_bench
target/release/examples/qwen3_lora_bench "$@" | tee -a "$out"
"$PY" bench/qwen3_lora_gpu.py "$@" | tee -a "$out"
"$PY" - "$out" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n{'impl':<22}{'tokens/s':>12}{'step s':>9}{'MFU (LoRA FLOPs)':>18}{'MFU (6N)':>10}")
for r in rows:
    print(f"{r['impl']:<22}{r['tokens_per_s']:>12.0f}{r['step_s']:>9.3f}{r['mfu_lora']:>18.1%}{r['mfu_6n']:>10.1%}")
for r in rows:
    for mean_tokens in (1024, 2048):
        minutes = 2000 * 4 * mean_tokens / r["tokens_per_s"] / 60
        print(f"{r['impl']}: one cell (2,000 conversations x 4 epochs, {mean_tokens} tokens each) ~ {minutes:.1f} min")
PYEOF
echo "results: $out"
