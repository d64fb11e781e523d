#!/usr/bin/env bash
# Sluice against its peers on the same loads (issue 16, item 5): Triton (the `nvidia-pytriton` wheel: tritonserver with
# its Python backend calling ONNX Runtime, the only Triton the package registries offer) and MLServer 1.7.1 (a custom
# runtime calling ONNX Runtime), each installed into a scratch venv by this script. Every server is pinned to core 0
# (ONNX Runtime with one intra-op thread) and wrk to core 1; the same V2 JSON request bodies (one row) go to each.
# Loads: `wide` and `fraud_mlp` at concurrency 1 and 64; plus each server's idle memory (RSS of its processes).
# Usage: bash scripts/bench_peers.sh [OUT_DIR]   (DUR=10s per load by default; needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench_peers}
DUR=${DUR:-10s}
DELAY_US=${DELAY_US:-2000}   # the peers' fixed batching delay (Sluice keeps its shipped model.toml settings)
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "bench_peers.sh: wrk is needed (apt-get install wrk)" >&2; exit 1; }
bash scripts/setup.sh
cargo build --release --quiet --bin sluice
BIN=target/release/sluice
PEERS=${PEERS_VENV:-target/peers-venv}
if [ ! -x "$PEERS/bin/mlserver" ] || [ ! -d "$PEERS/lib/python3.11/site-packages/pytriton" ]; then
  echo "== installing the peers into $PEERS (PyPI: mlserver 1.7.1, nvidia-pytriton 0.7.0, onnxruntime)"
  # Debian's Python 3.11 (3.11.2): tritonserver's Python stub breaks on a newer 3.11 stdlib (its multiprocessing calls
  # RLock._recursion_count, which the stub's interpreter lacks; every model then fails to load).
  PY=/usr/bin/python3.11
  [ -x "$PY" ] || { echo "bench_peers.sh: Debian's python3.11 is needed for PyTriton (apt-get install python3.11-venv)" >&2; exit 1; }
  "$PY" -m venv "$PEERS"
  "$PEERS/bin/pip" install -q "mlserver==1.7.1" "nvidia-pytriton==0.7.0" onnxruntime numpy
fi

source scripts/bench_servers.sh
wrk_bodies "$OUT"

PGIDS=()
stop_all() { for g in "${PGIDS[@]}"; do kill -- "-$g" 2>/dev/null || true; done; sleep 1; for g in "${PGIDS[@]}"; do kill -9 -- "-$g" 2>/dev/null || true; done; PGIDS=(); }
trap stop_all EXIT

# wait_ready URL SECONDS
wait_ready() {
  for _ in $(seq 1 $(( $2 * 10 ))); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/v2/health/ready")" = 200 ] && return 0
    sleep 0.1
  done
  echo "bench_peers.sh: $1 not ready after $2 s" >&2
  return 1
}

# rss_kib PGID: resident memory of every process in the group
rss_kib() { ps -o rss= -g "$1" | awk '{s+=$1} END {print s+0}'; }

# measure NAME URL
measure() {
  local name=$1 url=$2
  sleep 2
  echo "$(rss_kib "${PGIDS[-1]}")" >"$OUT/${name}_idle_rss_kib.txt"
  for model in wide fraud_mlp; do
    # A short warm-up so every server has its sessions and connections ready.
    taskset -c 1 wrk -t1 -c8 -d2s -s "$OUT/post_$model.lua" "$url/v2/models/$model/infer" >/dev/null 2>&1 || true
    for c in 1 64; do
      taskset -c 1 wrk -t1 -c$c -d"$DUR" --latency -s "$OUT/post_$model.lua" "$url/v2/models/$model/infer" \
        >"$OUT/${name}_${model}_c$c.txt" 2>&1 || true
    done
  done
}

echo "== Sluice (shipped settings)"
setsid taskset -c 0 "$BIN" serve --config config/sluice.toml --http 127.0.0.1:18100 --grpc 127.0.0.1:18101 \
  --admin 127.0.0.1:18102 --scaler 127.0.0.1:18103 >"$OUT/sluice.log" 2>&1 &
PGIDS+=($!)
wait_ready http://127.0.0.1:18100 120
measure sluice http://127.0.0.1:18100
stop_all

echo "== Triton (PyTriton, Python backend on ONNX Runtime, max_queue_delay ${DELAY_US} us)"
setsid taskset -c 0 "$PEERS/bin/python" scripts/peers/pytriton_server.py --http 18200 --grpc 18201 --metrics 18202 \
  --delay-us "$DELAY_US" >"$OUT/triton.log" 2>&1 &
PGIDS+=($!)
wait_ready http://127.0.0.1:18200 180
# PyTriton's server is ready before its models are bound.
for model in wide fraud_mlp; do
  for _ in $(seq 1 1800); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:18200/v2/models/$model/ready")" = 200 ] && break
    sleep 0.1
  done
done
measure triton http://127.0.0.1:18200
stop_all

echo "== MLServer 1.7.1 (ONNX Runtime runtime, adaptive batching up to 64, max_batch_time ${DELAY_US} us)"
REPO="$OUT/mlserver_repo"
rm -rf "$REPO"
mkdir -p "$REPO/wide" "$REPO/fraud_mlp"
python3 - "$REPO" "$PWD" "$DELAY_US" <<'PY'
import json, sys
repo, root, delay = sys.argv[1], sys.argv[2], int(sys.argv[3])
json.dump({"http_port": 18300, "grpc_port": 18301, "metrics_port": 18302, "parallel_workers": 0, "host": "127.0.0.1"},
          open(f"{repo}/settings.json", "w"))
for name, path in (("wide", "models/wide/1/model.onnx"), ("fraud_mlp", "models/fraud_mlp/2/model.onnx")):
    json.dump({"name": name, "implementation": "mlserver_runtime.OnnxModel", "parameters": {"uri": f"{root}/{path}"},
               "max_batch_size": 64, "max_batch_time": delay / 1e6}, open(f"{repo}/{name}/model-settings.json", "w"))
PY
setsid taskset -c 0 env PYTHONPATH="$PWD/scripts/peers" "$PEERS/bin/mlserver" start "$REPO" >"$OUT/mlserver.log" 2>&1 &
PGIDS+=($!)
wait_ready http://127.0.0.1:18300 180
measure mlserver http://127.0.0.1:18300
stop_all
trap - EXIT

python3 - "$OUT" <<'PY'
import os, re, sys
out = sys.argv[1]

def wrk(path):
    if not os.path.exists(path):
        return None
    text = open(path).read()
    total = re.search(r"(\d+) requests in ([\d.]+)s", text)
    if not total:
        return None
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    n, secs = int(total.group(1)), float(total.group(2))
    good = (n - (int(bad.group(1)) if bad else 0)) / secs
    p50, p99 = re.search(r"50%\s+(\S+)", text), re.search(r"99%\s+(\S+)", text)
    return good, p50.group(1) if p50 else "?", p99.group(1) if p99 else "?", n / secs

print("| server | wide c=1 p50 / p99 | wide c=64 answers 200/s (p99) | fraud_mlp c=1 p50 / p99 | fraud_mlp c=64 answers 200/s (p99) | idle RSS |")
print("|---|---|---|---|---|---|")
for name in ("sluice", "triton", "mlserver"):
    cells = []
    for model in ("wide", "fraud_mlp"):
        one, many = wrk(f"{out}/{name}_{model}_c1.txt"), wrk(f"{out}/{name}_{model}_c64.txt")
        cells.append(f"{one[1]} / {one[2]}" if one else "failed")
        cells.append(f"{many[0]:,.0f} ({many[2]})" if many else "failed")
    rss = open(f"{out}/{name}_idle_rss_kib.txt").read().strip() if os.path.exists(f"{out}/{name}_idle_rss_kib.txt") else "?"
    mib = f"{int(rss) / 1024:.0f} MiB" if rss.isdigit() else rss
    print(f"| {name} | {' | '.join(cells)} | {mib} |")
PY
