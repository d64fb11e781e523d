#!/usr/bin/env bash
# Reproduces the figures in docs/BENCHMARKS.md. On a 2-core machine the server is pinned to core 0 (ONNX Runtime with one
# intra-op thread) and the load generator to core 1; the raw ONNX Runtime baseline runs on core 0 too.
# Usage: bash scripts/bench.sh [OUT_DIR]   (writes one JSON file per scenario, prints a summary)
# Optional: perf_analyzer figures when .venv-bench exists (see ../shared/TOOLS.md and docs/BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench}
DUR=${DUR:-20s}
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release --quiet --bin sluice
BIN=target/release/sluice
SERVER=(taskset -c 0 "$BIN")
CLIENT=(taskset -c 1 "$BIN")

source scripts/bench_servers.sh
trap stop_servers EXIT

echo "== raw ONNX Runtime baselines (core 0, 1 thread)"
"${SERVER[@]}" bench --baseline -m wide --threads 1 -d 10s --json >"$OUT/baseline_wide.json"
"${SERVER[@]}" bench --baseline -m identity --threads 1 -d 3s --batch-sizes 1 --json >"$OUT/baseline_identity.json"

start_server server config/sluice.toml
URL="http://$ADDR"
echo "== wide, concurrency 64 ($DUR)"
"${CLIENT[@]}" bench --url "$URL" -m wide -c 64 -d "$DUR" --warmup 2s --json >"$OUT/wide_c64_json.json"
"${CLIENT[@]}" bench --url "$URL" -m wide -c 64 -d "$DUR" --warmup 2s --binary --json >"$OUT/wide_c64_binary.json"
"${CLIENT[@]}" bench --url "http://$GRPC_ADDR" --protocol grpc -m wide -c 64 -d "$DUR" --warmup 2s --json >"$OUT/wide_c64_grpc.json"
echo "== identity, concurrency 1"
"${CLIENT[@]}" bench --url "$URL" -m identity -c 1 -d 10s --client blocking --binary --json >"$OUT/identity_c1_blocking_binary.json"
"${CLIENT[@]}" bench --url "$URL" -m identity -c 1 -d 10s --client blocking --json >"$OUT/identity_c1_blocking_json.json"
"${CLIENT[@]}" bench --url "$URL" -m identity -c 1 -d 10s --binary --json >"$OUT/identity_c1_hyper_binary.json"
"${CLIENT[@]}" bench --url "http://$GRPC_ADDR" --protocol grpc -m identity -c 1 -d 10s --json >"$OUT/identity_c1_grpc.json"
echo "== wide, 3x overload (open loop at 3x the binary closed-loop throughput)"
RATE=$(python3 -c "import json;print(round(3*json.load(open('$OUT/wide_c64_binary.json'))['throughput_rps']))")
"${CLIENT[@]}" bench --url "$URL" -m wide --rate "$RATE" -d "$DUR" --warmup 0s --binary --json >"$OUT/wide_overload_3x.json"
echo "== wide, closed-loop overload: 512 clients that send again as soon as they are answered (429s included)"
"${CLIENT[@]}" bench --url "$URL" -m wide -c 512 -d "$DUR" --warmup 2s --json >"$OUT/wide_overload_c512.json"
if command -v wrk >/dev/null; then
  # wrk: a lean C client; one JSON row per request, the same body every time.
  wrk_bodies "$OUT"
  for c in 64 512; do
    taskset -c 1 wrk -t1 -c$c -d"$DUR" --latency -s "$OUT/post_wide.lua" "$URL/v2/models/wide/infer" >"$OUT/wrk_wide_c$c.txt" 2>&1 || true
  done
  taskset -c 1 wrk -t1 -c64 -d"$DUR" --latency -s "$OUT/post_fraud_mlp.lua" "$URL/v2/models/fraud_mlp/infer" >"$OUT/wrk_fraud_mlp_c64.txt" 2>&1 || true
fi
echo "== one client at a time (concurrency 1), shipped settings: a lone request's latency and queue wait"
for m in fraud_mlp wide; do
  curl -s "http://$ADMIN_ADDR/metrics" >"$OUT/metrics_before_c1_$m.txt"
  "${CLIENT[@]}" bench --url "$URL" -m "$m" -c 1 -d 10s --warmup 1s --json >"$OUT/${m}_c1_json.json"
  curl -s "http://$ADMIN_ADDR/metrics" >"$OUT/metrics_after_c1_$m.txt"
done
if [ -x .venv-bench/bin/perf_analyzer ]; then
  echo "== perf_analyzer (tritonclient 2.40.0), wide, concurrency 64"
  python3 -c "
import json, random
random.seed(1)
json.dump({'data': [{'input': [random.uniform(-1, 1) for _ in range(512)]} for _ in range(16)]}, open('$OUT/wide_data.json', 'w'))"
  LD_LIBRARY_PATH=$PWD/.venv-bench/lib/python3.11/site-packages/nvidia/cuda_runtime/lib \
    taskset -c 1 .venv-bench/bin/perf_analyzer -m wide -u "$ADDR" -i http --concurrency-range 64 \
    --measurement-interval 10000 --input-data "$OUT/wide_data.json" >"$OUT/perf_analyzer_wide_c64.txt" 2>&1 || true
  echo "== perf_analyzer, wide, concurrency 64, gRPC"
  LD_LIBRARY_PATH=$PWD/.venv-bench/lib/python3.11/site-packages/nvidia/cuda_runtime/lib \
    taskset -c 1 .venv-bench/bin/perf_analyzer -m wide -u "$GRPC_ADDR" -i grpc --concurrency-range 64 \
    --measurement-interval 10000 --input-data "$OUT/wide_data.json" >"$OUT/perf_analyzer_wide_c64_grpc.txt" 2>&1 || true
  echo "== perf_analyzer, identity, concurrency 1, HTTP and gRPC"
  for proto in http grpc; do
    addr=$ADDR; [ "$proto" = grpc ] && addr=$GRPC_ADDR
    LD_LIBRARY_PATH=$PWD/.venv-bench/lib/python3.11/site-packages/nvidia/cuda_runtime/lib \
      taskset -c 1 .venv-bench/bin/perf_analyzer -m identity -u "$addr" -i "$proto" --concurrency-range 1 \
      --measurement-interval 5000 --input-data zero >"$OUT/perf_analyzer_identity_c1_$proto.txt" 2>&1 || true
  done
fi
stop_servers
trap - EXIT
python3 scripts/bench_summary.py "$OUT"
