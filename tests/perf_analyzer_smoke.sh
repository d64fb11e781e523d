#!/usr/bin/env bash
# Conformance with Triton's own load generator: perf_analyzer (the binary inside the tritonclient 2.40.0 wheel) drives a
# real Sluice over HTTP, gRPC and gRPC streaming. It reads model metadata, the model configuration and statistics
# before sending requests, so this checks those endpoints the way Triton's tools use them. Bounded: at most
# 10,000 requests per mode, 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
if [ ! -x "$VENV/bin/perf_analyzer" ]; then
  echo "perf_analyzer: creating $VENV (tritonclient 2.40.0 carries the binary)" >&2
  python3 -m venv "$VENV"
  # A separate venv: tritonclient's [all] extra pins protobuf<4, which the test venv's onnx cannot use.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "tritonclient[all]==2.40.0" "nvidia-cuda-runtime-cu12==12.9.79"
fi
if ! ldconfig -p | grep -q libb64.so.0d; then
  echo "perf_analyzer needs Debian's libb64-0d: apt-get install -y libb64-0d (.ci/run installs it)" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$PWD/$VENV/lib/python3.11/site-packages/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=${SLUICE_BIN:-target/debug/sluice}
OUT=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$OUT"' EXIT
"$BIN" serve --models models --http 127.0.0.1:0 --grpc 127.0.0.1:0 --admin 127.0.0.1:0 --scaler 127.0.0.1:0 >"$OUT/stdout" 2>"$OUT/stderr" &
PID=$!
for _ in $(seq 1 300); do
  grep -q '^sluice listening' "$OUT/stdout" && break
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/stderr" >&2; exit 1; }
  sleep 0.1
done
HTTP=$(sed -n 's/^sluice listening http=\([^ ]*\).*/\1/p' "$OUT/stdout")
GRPC=$(sed -n 's/^sluice listening .*grpc=\([^ ]*\).*/\1/p' "$OUT/stdout")
[ -n "$HTTP" ] && [ -n "$GRPC" ] || { echo "sluice did not start" >&2; cat "$OUT/stderr" >&2; exit 1; }
# This checks conformance, not speed: perf_analyzer fails on any request error, but it also fails when three windows in
# a row do not agree on latency within --stability-percentage (default 10%). On a shared 2-core CI machine, windows of
# 200 requests (~0.1 s) missed that once (CI, 2026-11-29, gRPC; 10 windows, none stable). So: windows of 500 requests, a 50% band,
# and up to 20 windows — still bounded, at most 10,000 requests per mode.
run() {
  local name=$1; shift
  if ! timeout 120 "$VENV/bin/perf_analyzer" -m fraud_mlp --concurrency-range 4 --input-data zero \
      --measurement-mode count_windows --measurement-request-count 500 \
      --stability-percentage 50 --max-trials 20 "$@" >"$OUT/$name.txt" 2>&1; then
    echo "perf_analyzer ($name) failed:" >&2; cat "$OUT/$name.txt" >&2; exit 1
  fi
  grep -q "Throughput:" "$OUT/$name.txt" || { echo "perf_analyzer ($name) printed no throughput" >&2; cat "$OUT/$name.txt" >&2; exit 1; }
  echo "perf_analyzer $name: $(grep -m1 'Throughput:' "$OUT/$name.txt" | xargs)" >&2
}
run http -u "$HTTP" -i http
run grpc -u "$GRPC" -i grpc
run grpc-streaming -u "$GRPC" -i grpc --streaming
