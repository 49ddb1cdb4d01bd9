#!/usr/bin/env bash
# Orchestration overhead benchmark (orchestrator core issue). Prints figures and ratios to targets.
#   bench/noop.sh [EXPERIMENT] [REPEATS]
# 1. cold run with --jobs 1 into a fresh cache: wall time minus the steps' own time (from their
#    manifests) = orchestration overhead per step;
# 2. no-op run of the now fully cached experiment, repeated: median wall time and peak RSS;
# 3. `tracelab plan` on the same, for comparison.
# FSYNC_DELAY_MS=4 bench/noop.sh … runs the cold run under strace with every fdatasync delayed
# by that much (a slow disk), to show how much of fsync's latency reaches the critical path
# (strace itself slows the run too: compare binaries under the same setting, not with runs
# without it).
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:-experiments/smoke.toml}
REPEATS=${2:-30}
BIN=target/release/tracelab
[ -x "$BIN" ] || { echo "build first: cargo build --release --workspace" >&2; exit 1; }
CACHE=$(mktemp -d /tmp/tracelab-bench.XXXXXX)
trap 'rm -rf "$CACHE"' EXIT
python3 - "$BIN" "$EXP" "$CACHE" "$REPEATS" "${FSYNC_DELAY_MS:-}" <<'PY'
import glob, json, os, statistics, subprocess, sys, time
binary, exp, cache, repeats, delay = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
env = dict(os.environ, TRACELAB_CACHE=cache)

def timed(args, wrap=()):
    """Wall seconds and peak RSS (KiB) of one child process."""
    t = time.perf_counter()
    p = subprocess.Popen([*wrap, binary, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        sys.exit(f"{' '.join(args)} failed: {p.stderr.read().decode()}")
    return wall, usage.ru_maxrss

slow = ()
if delay:
    slow = ("strace", "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", "trace=fdatasync",
            "-e", f"inject=fdatasync:delay_exit={int(float(delay) * 1000)}")
cold, _ = timed(["run", exp, "--jobs", "1", "--quiet"], slow)
manifests = glob.glob(os.path.join(cache, "*", "manifest.json"))
own = sum(json.load(open(m))["duration_s"] for m in manifests)
steps = len(manifests)
runs, plans, rss = [], [], 0
for _ in range(repeats):
    w, r = timed(["run", exp, "--quiet"]); runs.append(w); rss = max(rss, r)
    w, _ = timed(["plan", exp]); plans.append(w)
run_ms, plan_ms = statistics.median(runs) * 1e3, statistics.median(plans) * 1e3
over_ms = (cold - own) / steps * 1e3
print(f"experiment: {exp}; {steps} steps; {repeats} repeats")
print(f"cold run --jobs 1:            {cold:.3f} s wall, {own:.3f} s inside steps"
      + (f" (every fdatasync delayed {delay} ms under strace)" if delay else ""))
print(f"overhead per step (cold):     {over_ms:.2f} ms    target <= 1 ms   ratio {over_ms / 1.0:.2f}")
print(f"no-op run, median wall:       {run_ms:.2f} ms    target <= 10 ms  ratio {run_ms / 10.0:.2f}")
print(f"no-op run, peak RSS:          {rss / 1024:.1f} MiB   target <= 20 MiB ratio {rss / 1024 / 20:.2f}")
print(f"plan, median wall:            {plan_ms:.2f} ms    (no-op run / plan = {run_ms / plan_ms:.2f})")
PY
