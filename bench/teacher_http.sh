#!/usr/bin/env bash
# HTTP teacher benchmark (synthetic pipeline issue). Prints figures and ratios to targets.
#   bench/teacher_http.sh [N] [CONCURRENCY]
# 1. throughput: N conversations through the real HTTP teacher (prompt building, request,
#    parsing, response cache) against a local mock server at CONCURRENCY; requests/s and the
#    client's CPU time per request (the client is its own process, measured with wait4);
# 2. resume: a run of 5·N is killed with SIGKILL mid-generation and rerun to completion; the
#    server counts every request by body hash. A repeated request whose answer had reached the
#    cache before the kill would be a paid call made twice: there must be none. Requests that
#    were in flight at the kill (answer never stored) are listed separately.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4000}
C=${2:-64}
BIN=target/release/examples/teacher_http_bench
[ -x "$BIN" ] || { echo "build first: cargo build --release --example teacher_http_bench" >&2; exit 1; }
WORK=$(mktemp -d /tmp/tracelab-teacher-bench.XXXXXX)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
python3 - "$BIN" "$WORK" "$N" "$C" <<'PY'
import json, os, signal, socket, subprocess, sys, time, urllib.request
binary, work, n, c = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start_server():
    port = free_port()
    p = subprocess.Popen([binary, "serve", str(port)], stdout=subprocess.PIPE)
    p.stdout.readline()  # "listening …"
    return p, f"http://127.0.0.1:{port}/v1"

def stats(url):
    return json.load(urllib.request.urlopen(url.replace("/v1", "/stats")))

def client(url, count, cache):
    """Runs the client to completion: its JSON summary and CPU seconds (user + system)."""
    p = subprocess.Popen([binary, "run", url, str(count), str(c), cache], stdout=subprocess.PIPE)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"client failed with status {status}")
    return json.loads(out), ru.ru_utime + ru.ru_stime

# 1. Throughput and client overhead.
server, url = start_server()
res, cpu = client(url, n, os.path.join(work, "cache1"))
server.kill(); server.wait()
rps = res["requests"] / res["wall_s"]
cpu_ms = cpu / res["requests"] * 1e3
print(f"throughput: {res['requests']} requests in {res['wall_s']:.2f} s at concurrency {c}, "
      f"{res['failures']} failures")
print(f"requests/s:                    {rps:8.0f}     target >= 500   ratio {rps / 500:.2f}")
print(f"client CPU per request:        {cpu_ms:8.3f} ms  target < 1 ms  ratio {cpu_ms / 1.0:.2f}")

# 2. Kill -9 mid-generation, then resume.
server, url = start_server()
cache = os.path.join(work, "cache2")
big = 5 * n
p = subprocess.Popen([binary, "run", url, str(big), str(c), cache], stdout=subprocess.DEVNULL)
deadline = time.time() + 60
while stats(url)["total"] < big // 3 and time.time() < deadline:
    time.sleep(0.05)
os.kill(p.pid, signal.SIGKILL); p.wait()
before = stats(url)["total"]
ids = set(subprocess.run([binary, "cached-ids", cache], capture_output=True, text=True, check=True).stdout.split())
res2, _ = client(url, big, cache)
after = stats(url)
server.kill(); server.wait()
repeated = set(after["repeated"])
paid_twice = repeated & ids
print(f"resume: killed after {before} requests ({len(ids)} answers cached), rerun sent "
      f"{res2['requests']} more and took {res2['cache_hits']} from the cache; {res2['failures']} failures")
print(f"server: {after['total']} requests, {after['distinct']} distinct, for {big} conversations")
print(f"cached answers requested again: {len(paid_twice)}   target 0")
print(f"in flight at the kill, asked again (answer never stored): {len(repeated - ids)}   (<= concurrency {c})")
ok = rps >= 500 and cpu_ms < 1.0 and not paid_twice and after["distinct"] == big and res2["failures"] == 0
sys.exit(0 if ok else 1)
PY
