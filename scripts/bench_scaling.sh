#!/usr/bin/env bash
# Reproduces the issue-5 figures in docs/BENCHMARKS.md ("Metrics and scaling"):
#   1. metrics overhead: `identity` at concurrency 64 (HTTP binary) against two servers side by side, one with
#      [metrics] enabled and one without; runs alternate (on, off, on, off, ...) so drift hits both alike;
#   2. the scaling signal's reaction time to load steps (cargo bench --bench scaling_reaction).
# Servers are pinned to core 0, the load generator to core 1, as in scripts/bench.sh.
# Usage: bash scripts/bench_scaling.sh [OUT_DIR]    (ROUNDS=5 DUR=10s by default; REACTION=0 skips part 2)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench}
DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-5}
mkdir -p "$OUT"
bash scripts/setup.sh
cargo build --release --quiet --bin sluice
BIN=target/release/sluice

# The same configuration with [metrics] enabled = false.
sed '/^\[metrics\]/,/^\[/ s/^enabled = true/enabled = false/' config/sluice.toml >"$OUT/sluice-metrics-off.toml"
grep -A3 '^\[metrics\]' "$OUT/sluice-metrics-off.toml" | grep -q '^enabled = false' || { echo "could not turn metrics off" >&2; exit 1; }

source scripts/bench_servers.sh
trap stop_servers EXIT

start_server metrics-on config/sluice.toml
ON=$ADDR
start_server metrics-off "$OUT/sluice-metrics-off.toml"
OFF=$ADDR
curl -sf "http://${ON%:*}:$(sed -n 's/.*admin=127.0.0.1:\([0-9]*\).*/\1/p' "$OUT/metrics-on.out")/metrics" >/dev/null \
  || { echo "metrics-on server has no /metrics" >&2; exit 1; }

echo "== metrics overhead: identity, concurrency 64, HTTP binary, $ROUNDS rounds of $DUR per server"
for round in $(seq 1 "$ROUNDS"); do
  for which in on off; do
    addr=$ON; [ "$which" = off ] && addr=$OFF
    taskset -c 1 "$BIN" bench --url "http://$addr" -m identity -c 64 -d "$DUR" --warmup 2s --binary --json \
      >"$OUT/metrics_${which}_$round.json"
  done
done
stop_servers
trap - EXIT
python3 - "$OUT" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(which, r):
    return json.load(open(f"{out}/metrics_{which}_{r}.json"))
print("| round | metrics on (req/s) | metrics off (req/s) | on / off | p50 on µs | p50 off µs | p99 on µs | p99 off µs |")
print("|---|---|---|---|---|---|---|---|")
ratios = []
for r in range(1, rounds + 1):
    on, off = load("on", r), load("off", r)
    assert set(on["status"]) == {"200"} and set(off["status"]) == {"200"}, (on["status"], off["status"])
    ratio = on["throughput_rps"] / off["throughput_rps"]
    ratios.append(ratio)
    lat = lambda d, p: d["latency_ok"][f"{p}_us"]
    print(f"| {r} | {on['throughput_rps']:,.0f} | {off['throughput_rps']:,.0f} | {ratio:.3f} | "
          f"{lat(on, 'p50')} | {lat(off, 'p50')} | {lat(on, 'p99')} | {lat(off, 'p99')} |")
print(f"median on/off ratio {statistics.median(ratios):.3f} (loss {100 * (1 - statistics.median(ratios)):.1f}%), "
      f"min {min(ratios):.3f}, max {max(ratios):.3f}")
PY

[ "${REACTION:-1}" = 0 ] && exit 0
echo "== scaling signal reaction time"
cargo bench --quiet --bench scaling_reaction 2>&1 | tee "$OUT/scaling_reaction.txt" | grep -v '^\s*\(Compiling\|Finished\|Running\)'
