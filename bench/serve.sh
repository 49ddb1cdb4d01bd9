#!/usr/bin/env bash
# Serving latency and throughput of a trained student (`tracelab serve`), next to batch predict's
# pairs/s measured in the same run on the same pairs.
#   [THREADS=N] [WORKERS=N] [PREFIX_CACHE=N] bench/serve.sh [EXPERIMENT] [CELL] [REQUESTS]
# default: experiments/sgd-restaurants-dev.toml clean/direct/s1 200 (the cell must have been run).
# 1. batch predict of the cell, forced: pairs/s from its manifest;
# 2. `tracelab serve` of the cell; the cell's evaluation pairs sent as requests (the official
#    openai client, one per thread) at concurrency 1, 4 and 16: p50/p99 latency and requests/s;
#    the pairs go in conversation order, as agents send them, so a request's prompt begins with
#    an earlier one's (the share of prompt tokens whose cache was reused is printed);
#    PREFIX_CACHE=0 measures cold prompts (no reuse), ORDER=shuffled the pairs in a random order
#    (a conversation's turns apart: mostly the tool header reused);
# 3. peak memory of the server and of its worker (VmHWM);
# 4. batch predict one pair at a time, forced tokens fed one pass each (`forced_runs = false`)
#    and together (the default): what decoding alone costs per pair, and what the runs save.
# Targets (issue #22): p50 <= 20 ms at concurrency 1; at 16, >= half of batch predict's pairs/s.
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:-experiments/sgd-restaurants-dev.toml}
CELL=${2:-clean/direct/s1}
REQUESTS=${3:-200}
BIN=target/release/tracelab
PY=.venv/bin/python
[ -x "$BIN" ] || { echo "build first: scripts/tracelab.sh --version" >&2; exit 1; }
"$BIN" run "$EXP" --quiet --only "$CELL/predict" --force "$CELL/predict" >/dev/null
info=$("$BIN" inspect "$EXP" --step "$CELL/predict")
batch=$(awk '/pairs_per_second/ {print $2}' <<<"$info")
key=$(sed -n 's/.*key \([0-9a-f]*\)).*/\1/p' <<<"$info" | head -1)
predictions=$(ls "${TRACELAB_CACHE:-cache}"/"$key"*/out/predictions.jsonl | head -1)
# Batch predict at batch size 1, with forced runs off and on (run twice each, alternating: the
# second of each is reported, so both see a warm page cache and the same machine load).
single() {
  local set=(--set predict.batch_size=1 --set "predict.forced_runs=$1")
  "$BIN" run "$EXP" --quiet --only "$CELL/predict" --force "$CELL/predict" "${set[@]}" >/dev/null
  "$BIN" inspect "$EXP" --step "$CELL/predict" "${set[@]}" | awk '/pairs_per_second/ {print $2}'
}
single false >/dev/null; single true >/dev/null
one_by_one=$(single false); runs=$(single true)
PORT=${PORT:-8765}
"$BIN" serve "$EXP" --cell "$CELL" --port "$PORT" --name bench ${THREADS:+--threads $THREADS} ${WORKERS:+--workers $WORKERS} ${PREFIX_CACHE:+--prefix-cache $PREFIX_CACHE} 2>/tmp/tracelab-bench-serve.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "serving" /tmp/tracelab-bench-serve.log && break
  sleep 0.2
done
"$PY" - "$PORT" "$REQUESTS" "$batch" "$SERVER" "$predictions" "$one_by_one" "$runs" <<'PY'
import json, os, random, subprocess, sys, threading, time
from openai import OpenAI

port, n, batch, server, predictions = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
one_by_one, runs = float(sys.argv[6]), float(sys.argv[7])
print(f"batch predict, one pair at a time: {one_by_one:.1f} pairs/s one pass per token, "
      f"{runs:.1f} pairs/s with forced runs ({runs / one_by_one:.2f}x); "
      f"{batch:.1f} pairs/s in batches")
client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
# The cell's evaluation prefixes (from its predictions), as an agent sends them: replies as text,
# with every service function the reference calls name offered (the server checks names only).
rows = [json.loads(l) for l in open(predictions)]
names = sorted({r["answer"]["name"] for r in rows} - {"respond_to_user"})
tools = [{"type": "function", "function": {"name": f, "parameters": {"type": "object"}}} for f in names]

def as_openai(question):
    out = []
    for m in question:
        calls = m.get("tool_calls") or []
        if m["role"] == "assistant" and len(calls) == 1 and calls[0]["function"]["name"] == "respond_to_user":
            out.append({"role": "assistant", "content": json.loads(calls[0]["function"]["arguments"]).get("message", "")})
        else:
            out.append(m)
    return out

prompts = [as_openai(r["question"]) for r in rows]
if os.environ.get("ORDER") == "shuffled":
    random.Random(0).shuffle(prompts)

tokens = {"prompt": 0, "cached": 0}

def one(messages):
    t = time.perf_counter()
    r = client.chat.completions.create(model="bench", messages=messages, tools=tools)
    took = time.perf_counter() - t
    tokens["prompt"] += r.usage.prompt_tokens
    tokens["cached"] += r.usage.prompt_tokens_details.cached_tokens
    return took

one(prompts[0])  # warm-up
for conc in (1, 4, 16):
    tokens.update(prompt=0, cached=0)
    lat, lock = [], threading.Lock()
    todo = iter(range(n))
    def worker():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            d = one(prompts[i % len(prompts)])
            with lock:
                lat.append(d)
    t = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    wall = time.perf_counter() - t
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    rps = n / wall
    print(f"concurrency {conc:2d}: p50 {p50*1000:6.1f} ms  p99 {p99*1000:6.1f} ms  {rps:6.1f} req/s"
          f"  ({rps / batch:.2f}x batch predict's {batch:.1f} pairs/s)"
          f"  {tokens['cached'] / max(1, tokens['prompt']):.0%} of prompt tokens reused")

def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
kids = subprocess.run(["pgrep", "-P", server], capture_output=True, text=True).stdout.split()
print(f"peak memory: server {hwm(server):.0f} MiB, worker " + ", ".join(f"{hwm(k):.0f} MiB" for k in kids))
PY
