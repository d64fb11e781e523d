#!/usr/bin/env bash
# Reproduces the response-cache figures in docs/BENCHMARKS.md ("Response cache"):
#   1. `wide` with the cache on, concurrency 64, HTTP binary: all hits (64 distinct requests, cached after the first
#      round) vs all misses (`--unique`: every request new), alternating ROUNDS times;
#   2. bursts of 64 identical requests at once (a new input each burst) against two servers, cache.coalesce on and
#      off: model executions, rows computed and latency of each burst.
# Servers are pinned to core 0, the load generator to core 1, as in scripts/bench.sh.
#   3. the latency of a hit at concurrency 1 over loopback (blocking client).
# Usage: bash scripts/bench_cache.sh [OUT_DIR]    (ROUNDS=3 DUR=10s BURSTS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench}
DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-3}
BURSTS=${BURSTS:-5}
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release --quiet --bin sluice
BIN=target/release/sluice

# A repository with `wide` (the demo model file) under the name wide_cached, its settings plus [cache] enabled.
REPO=$(mktemp -d)
mkdir -p "$REPO/wide_cached/1"
ln -s "$PWD/models/wide/1/model.onnx" "$REPO/wide_cached/1/model.onnx"
{ cat models/wide/model.toml; printf '\n[cache]\nenabled = true\n'; } >"$REPO/wide_cached/model.toml"
sed '/^\[cache\]/,/^\[/ s/^coalesce = true/coalesce = false/' config/sluice.toml >"$OUT/sluice-no-coalesce.toml"
grep -A12 '^\[cache\]' "$OUT/sluice-no-coalesce.toml" | grep -q '^coalesce = false' || { echo "could not turn coalescing off" >&2; exit 1; }

source scripts/bench_servers.sh
cleanup() { stop_servers; rm -rf "$REPO"; }
trap cleanup EXIT

start_server coalesce-on config/sluice.toml --models "$REPO"
ON=$ADDR
start_server coalesce-off "$OUT/sluice-no-coalesce.toml" --models "$REPO"
OFF=$ADDR
stats() { curl -sf "http://$1/v2/models/wide_cached/stats"; }

echo "== wide_cached, concurrency 64, HTTP binary: all hits vs all misses, $ROUNDS rounds of $DUR"
for round in $(seq 1 "$ROUNDS"); do
  taskset -c 1 "$BIN" bench --url "http://$ON" -m wide_cached -c 64 -d "$DUR" --warmup 2s --binary --distinct 64 --json \
    >"$OUT/cache_hits_$round.json"
  taskset -c 1 "$BIN" bench --url "http://$ON" -m wide_cached -c 64 -d "$DUR" --warmup 2s --binary --unique --json \
    >"$OUT/cache_misses_$round.json"
done

echo "== hit latency at concurrency 1 (blocking client, one cached request)"
taskset -c 1 "$BIN" bench --url "http://$ON" -m wide_cached -c 1 -d 5s --warmup 1s --client blocking --binary --distinct 1 --json \
  >"$OUT/cache_hit_c1.json"

echo "== bursts of 64 identical requests, coalescing on and off ($BURSTS each)"
for burst in $(seq 1 "$BURSTS"); do
  for which in on off; do
    addr=$ON; [ "$which" = off ] && addr=$OFF
    stats "$addr" >"$OUT/burst_${which}_${burst}_before.json"
    # A new seed per burst: a new input, so the burst starts cold.
    taskset -c 1 "$BIN" bench --url "http://$addr" -m wide_cached -c 64 --requests 64 --distinct 1 --seed "$((1000 + burst))" \
      --warmup 0s --binary --json >"$OUT/burst_${which}_${burst}.json"
    stats "$addr" >"$OUT/burst_${which}_${burst}_after.json"
  done
done
cleanup
trap - EXIT

python3 - "$OUT" "$ROUNDS" "$BURSTS" <<'PY'
import json, statistics, sys
out, rounds, bursts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
load = lambda name: json.load(open(f"{out}/{name}.json"))
print("| round | hits (req/s) | misses (req/s) | hits / misses | hit p50 µs | hit p99 µs | miss p50 µs | miss p99 µs |")
print("|---|---|---|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    h, m = load(f"cache_hits_{r}"), load(f"cache_misses_{r}")
    assert set(h["status"]) == {"200"} and set(m["status"]) == {"200"}, (h["status"], m["status"])
    ratio = h["throughput_rps"] / m["throughput_rps"]
    ratios.append(ratio)
    print(f"| {r} | {h['throughput_rps']:,.0f} | {m['throughput_rps']:,.0f} | {ratio:.1f} | {h['latency_ok']['p50_us']} | "
          f"{h['latency_ok']['p99_us']} | {m['latency_ok']['p50_us']} | {m['latency_ok']['p99_us']} |")
print(f"median hits/misses {statistics.median(ratios):.1f}x")
c1 = load("cache_hit_c1")
print(f"hit at concurrency 1 (blocking client): {c1['throughput_rps']:,.0f} req/s, p50 {c1['latency_ok']['p50_us']} µs, "
      f"p90 {c1['latency_ok']['p90_us']} µs, p99 {c1['latency_ok']['p99_us']} µs")

def model_stats(name):
    s = load(name)["model_stats"][0]
    return s["execution_count"], s["inference_count"]

print("\n| coalescing | burst | executions | rows computed | p50 µs | p99 µs | max µs |")
print("|---|---|---|---|---|---|---|")
summary = {}
for which in ("on", "off"):
    for b in range(1, bursts + 1):
        e0, i0 = model_stats(f"burst_{which}_{b}_before")
        e1, i1 = model_stats(f"burst_{which}_{b}_after")
        run = load(f"burst_{which}_{b}")
        assert run["status"] == {"200": 64}, run["status"]
        lat = run["latency_ok"]
        summary.setdefault(which, []).append((e1 - e0, i1 - i0, lat["p99_us"]))
        print(f"| {which} | {b} | {e1 - e0} | {i1 - i0} | {lat['p50_us']} | {lat['p99_us']} | {lat['max_us']} |")
for which, rows in summary.items():
    print(f"coalescing {which}: median executions {statistics.median(r[0] for r in rows)}, "
          f"median rows {statistics.median(r[1] for r in rows)}, median p99 {statistics.median(r[2] for r in rows)} µs")
PY
