#!/usr/bin/env bash
# The Slurm executor's overhead, as ratios measured in one run on one cluster:
#   bench/slurm.sh [EXPERIMENT]      (default experiments/smoke.toml; needs ../shared/sgd)
# 1. a cold run of the experiment with `--executor slurm`, every step a job (`client_steps = []`);
# 2. the floor: the same jobs as bare `sbatch --wrap 'sleep T'`, T each step's own duration
#    from its manifest, chained with the same dependencies (`afterok`), submitted at once;
# 3. a cold run with the local executor.
# Prints the wall times, slurm/floor (target: at most 1.2) and slurm/local, and the number of
# jobs and of status queries. Uses the cluster SLURM_CONF names, or starts one
# (scripts/slurm-cluster.sh, as root) for the length of the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${1:-experiments/smoke.toml}
SGD=${TRACELAB_SGD:-$(realpath -m ../shared/sgd)}
BIN=$PWD/target/release/tracelab
[ -x "$BIN" ] || { echo "build first: scripts/tracelab.sh --version" >&2; exit 1; }
work=$(mktemp -d /tmp/tracelab-bench-slurm.XXXXXX)
cleanup() {
  [ -n "${own_cluster:-}" ] && scripts/slurm-cluster.sh stop "$work/cluster"
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${SLURM_CONF:-}" ]; then
  scripts/slurm-cluster.sh install
  eval "$(scripts/slurm-cluster.sh start "$work/cluster")"
  own_cluster=1
fi
mkdir -p "$work/root"
cp -r scenarios tasks experiments "$work/root/"
printf '[slurm]\nclient_steps = []\n' >"$work/root/tracelab.toml"
cd "$work/root"

now() { date +%s.%N; }
t0=$(now)
"$BIN" --cache cache-slurm run "$EXP" --quiet --set "data.path=$SGD" --executor slurm \
  >/dev/null 2>slurm.log || { cat slurm.log >&2; exit 1; }
t_slurm=$(echo "$(now) - $t0" | bc)
summary=$(grep '^slurm: ' slurm.log)

# The floor: every step of the run, as `sleep` jobs with the run's dependencies.
t_floor=$(python3 - cache-slurm <<'PY'
import json, os, subprocess, sys, time
cache = sys.argv[1]
steps = {}
for key in os.listdir(cache):
    try:
        m = json.load(open(os.path.join(cache, key, "manifest.json")))
    except (OSError, ValueError):
        continue
    steps[m["label"]] = (m["duration_s"], [i[1] for i in m["parts"]["inputs"]])
ids, order = {}, []
def visit(label):
    if label in ids or label not in steps:
        return
    for dep in steps[label][1]:
        visit(dep)
    ids[label] = None
    order.append(label)
for label in steps:
    visit(label)
ids = {}
name = f"tracelab-floor-{os.getpid()}"
start = time.time()
for label in order:
    seconds, deps = steps[label]
    deps = [ids[d] for d in deps if d in ids]
    args = ["sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null",
            "--kill-on-invalid-dep=yes", f"--wrap=sleep {seconds:.3f}"]
    if deps:
        args.append("--dependency=afterok:" + ":".join(deps))
    ids[label] = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().split(";")[0]
while True:
    out = subprocess.run(["squeue", "-h", "--name", name, "-o", "%i"], capture_output=True, text=True).stdout
    if not out.strip():
        break
    time.sleep(0.1)
print(f"{time.time() - start:.2f}")
PY
)

t0=$(now)
"$BIN" --cache cache-local run "$EXP" --quiet --set "data.path=$SGD" >/dev/null 2>local.log \
  || { cat local.log >&2; exit 1; }
t_local=$(echo "$(now) - $t0" | bc)

echo "experiment: $EXP"
echo "$summary"
printf 'slurm executor (cold): %6.1f s\n' "$t_slurm"
printf 'floor (sleep jobs):    %6.1f s\n' "$t_floor"
printf 'local executor (cold): %6.1f s\n' "$t_local"
printf 'slurm / floor: %.2f (target <= 1.2)\n' "$(echo "$t_slurm / $t_floor" | bc -l)"
printf 'slurm / local: %.2f\n' "$(echo "$t_slurm / $t_local" | bc -l)"
