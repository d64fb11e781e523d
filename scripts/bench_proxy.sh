#!/usr/bin/env bash
# Proxy overhead in one run, side by side: the same Sluice worker reached
#   direct         client → worker
#   sluice-http    client → Sluice gateway ([[upstreams]] protocol = "http") → worker's HTTP port
#   sluice-grpc    client → Sluice gateway ([[upstreams]] protocol = "grpc") → worker's gRPC port
#   nginx          client → nginx (Debian package, plain reverse proxy, 1 worker process, upstream keepalive 64) → worker
# on `identity` (the model costs ~2 µs: nearly all is transport) and `wide` (~0.3 ms a row), each at concurrency 1
# (latency: `--client blocking`, the leanest client) and at concurrency CONC (throughput: the default hyper client),
# HTTP with the binary tensor extension. Targets the issue's goal: Sluice's added p50 ≤ nginx's, its throughput ≥ nginx's.
#
# CPU (2 cores): the worker runs alone on core 0; the proxy under test (a Sluice gateway or nginx) and the load generator
# share core 1, for every target alike (direct: the client alone on core 1). Each gateway's tokio runtime gets one
# worker thread (TOKIO_WORKER_THREADS=1, also what its 1-core affinity gives), to match nginx's one worker process; the
# thread counts are printed. All proxies run the whole time (idle ones only health-check the worker every second).
# What bounds what: `wide` at concurrency 1 waits out the worker's dynamic-batching delay (models/wide/model.toml:
# max_queue_delay 5ms) on every request, so its p50 is ~10 ms for all targets and its "added p50" is the difference of two
# noisy ~10 ms figures (use more rounds); `identity` at concurrency CONC saturates core 1 (client + proxy) before the
# worker's core 0, so its req/s compares the proxies' CPU cost per request.
# Runs alternate: each round goes through every model × concurrency × target, the target order rotated every round,
# so drift on this noisy VM hits all targets alike; the table shows medians over rounds, and "added p50" is the median
# of each round's p50(target) − p50(direct) taken side by side.
#
# Usage: bash scripts/bench_proxy.sh [OUT_DIR]      (default target/bench)
#   env: DUR=5s (each measurement), WARMUP=1s, ROUNDS=3, CONC=32, MODELS="identity wide",
#        TARGETS="direct sluice-http sluice-grpc nginx", BUILD=0 (use target/release/sluice as it is, no cargo build)
# Writes OUT_DIR/proxy_<model>_<target>_c<N>_r<round>.json (raw `sluice bench --json`), OUT_DIR/proxy_summary.json, and
# the logs of every server (proxy-*.log, nginx error log); prints the table. Needs nginx (installed with apt-get when
# missing and run as root). Exits non-zero when a run fails or answers anything but 200 (the table is still printed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/bench}
DUR=${DUR:-5s}
WARMUP=${WARMUP:-1s}
ROUNDS=${ROUNDS:-3}
CONC=${CONC:-32}
MODELS=${MODELS:-identity wide}
TARGETS=${TARGETS:-direct sluice-http sluice-grpc nginx}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench_proxy: installing nginx (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
  else
    echo "bench_proxy: nginx is missing (sudo apt-get install nginx)" >&2
    exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

bash scripts/setup.sh
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --quiet --bin sluice
fi
BIN=$PWD/target/release/sluice

TMP=$(mktemp -d)
NGINX_PID=
source scripts/bench_servers.sh
cleanup() {
  if [ -n "$NGINX_PID" ]; then
    kill -TERM "$NGINX_PID" 2>/dev/null || true   # the master stops its worker
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
  fi
  stop_servers
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A model repository with the two models only.
mkdir -p "$TMP/models"
for m in identity wide; do ln -s "$PWD/models/$m" "$TMP/models/$m"; done

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# thread_summary PID: "N threads (name×k, ...)" of one process.
thread_summary() {
  local pid=$1
  cat /proc/"$pid"/task/*/comm 2>/dev/null | sort | uniq -c |
    awk '{n += $1; s = s (s ? ", " : "") $2 ($1 > 1 ? "×" $1 : "")} END {printf "%d threads (%s)", n, s}'
}

# --- the worker, alone on core 0 ---
# config/sluice.toml with the admin listener on loopback (a config file whose admin.listen is public is refused, even
# with --admin 127.0.0.1:0 on the command line).
sed '/^\[admin\]/,/^\[/ s/^listen = .*/listen = "127.0.0.1:0"/' config/sluice.toml >"$OUT/proxy-worker.toml"
grep -A6 '^\[admin\]' "$OUT/proxy-worker.toml" | grep -q '^listen = "127.0.0.1:0"' ||
  { echo "bench_proxy: could not set admin.listen in the worker's configuration" >&2; exit 1; }
start_server proxy-worker "$OUT/proxy-worker.toml" --models "$TMP/models"
WORKER_PID=${PIDS[-1]}
WORKER_HTTP=$ADDR
WORKER_GRPC=$GRPC_ADDR

# --- the Sluice gateways, on core 1 ---
gateway_config() { # PROTOCOL ENDPOINT
  cat <<EOF
# Written by scripts/bench_proxy.sh: a gateway with no local models, forwarding identity and wide to one worker.
[server]
models = "/nonexistent"

[admin]
listen = "127.0.0.1:0"

[[upstreams]]
name = "worker"
protocol = "$1"
endpoints = ["$2"]
models = ["identity", "wide"]
max_concurrency = 64
EOF
}
declare -A URL PID
URL[direct]=http://$WORKER_HTTP
PID[direct]=
for t in $TARGETS; do
  case "$t" in
    direct | nginx) ;;
    sluice-http | sluice-grpc)
      proto=${t#sluice-}
      endpoint=$WORKER_HTTP; [ "$proto" = grpc ] && endpoint=$WORKER_GRPC
      gateway_config "$proto" "$endpoint" >"$OUT/proxy-$t.toml"
      TOKIO_WORKER_THREADS=1 CORE=1 start_server "proxy-$t" "$OUT/proxy-$t.toml"
      URL[$t]=http://$ADDR
      PID[$t]=${PIDS[-1]}
      ;;
    *) echo "bench_proxy: unknown target '$t' (known: direct sluice-http sluice-grpc nginx)" >&2; exit 2 ;;
  esac
done

# --- nginx as a plain reverse proxy, on core 1 ---
if [[ " $TARGETS " == *" nginx "* ]]; then
  NGINX_PORT=$(free_port)
  mkdir -p "$TMP/nginx"
  user_line=; [ "$(id -u)" = 0 ] && user_line="user root;"   # the worker must reach the root-owned temp directory
  cat >"$TMP/nginx/nginx.conf" <<EOF
# Written by scripts/bench_proxy.sh. A plain reverse proxy: one worker process, upstream keep-alive, default buffering.
daemon off;
master_process on;
worker_processes 1;
$user_line
pid $TMP/nginx/nginx.pid;
error_log $OUT/proxy-nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/client_body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  client_max_body_size 64m;
  tcp_nodelay on;
  # Keep client connections open for the whole run (the default closes one every 1,000 requests).
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  upstream worker {
    server $WORKER_HTTP;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  "$NGINX" -t -q -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" -e "$OUT/proxy-nginx-error.log" ||
    { echo "bench_proxy: nginx rejects its configuration" >&2; exit 1; }
  taskset -c 1 "$NGINX" -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx/" -e "$OUT/proxy-nginx-error.log" &
  NGINX_PID=$!
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/v2/health/ready" && break
    kill -0 "$NGINX_PID" 2>/dev/null || { echo "bench_proxy: nginx exited; see $OUT/proxy-nginx-error.log" >&2; exit 1; }
    sleep 0.1
  done
  URL[nginx]=http://127.0.0.1:$NGINX_PORT
  PID[nginx]=$NGINX_PID
fi

# --- smoke check: every target serves each model's metadata ---
for t in $TARGETS; do
  for m in $MODELS; do
    code=$(curl -sS -o "$TMP/smoke.txt" -w '%{http_code}' "${URL[$t]}/v2/models/$m" || true)
    if [ "$code" != 200 ]; then
      echo "bench_proxy: $t (${URL[$t]}) answers GET /v2/models/$m with HTTP '$code': $(head -c 500 "$TMP/smoke.txt")" >&2
      exit 1
    fi
  done
done

{
  echo "worker (core 0): $WORKER_HTTP / grpc $WORKER_GRPC, $(thread_summary "$WORKER_PID")"
  for t in $TARGETS; do
    case "$t" in
      sluice-*) echo "$t (core 1): ${URL[$t]}, $(thread_summary "${PID[$t]}")" ;;
      nginx)
        kids=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
        desc="master: $(thread_summary "$NGINX_PID")"
        for k in $kids; do desc="$desc; worker $k: $(thread_summary "$k")"; done
        echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') (core 1): ${URL[nginx]}, $desc" ;;
    esac
  done
  echo "client (core 1): sluice bench, c1 --client blocking, c$CONC hyper (current-thread runtime); --binary"
} | tee "$OUT/proxy_setup.txt"

# --- the measurements ---
read -r -a T <<<"$TARGETS"
FAILED=0
echo "== $ROUNDS rounds × models [$MODELS] × concurrency [1 $CONC] × targets [$TARGETS], $DUR each (+$WARMUP warm-up)"
for round in $(seq 1 "$ROUNDS"); do
  for m in $MODELS; do
    for c in 1 "$CONC"; do
      client=(); [ "$c" = 1 ] && client=(--client blocking)
      for i in "${!T[@]}"; do
        t=${T[$(((i + round - 1) % ${#T[@]}))]}
        f="$OUT/proxy_${m}_${t}_c${c}_r$round.json"
        rm -f "$f"
        if ! taskset -c 1 "$BIN" bench --url "${URL[$t]}" -m "$m" -c "$c" -d "$DUR" --warmup "$WARMUP" --binary \
          "${client[@]}" --json >"$f.part" 2>"$TMP/bench.err"; then
          echo "bench_proxy: round $round, $m c$c → $t failed: $(head -c 1000 "$TMP/bench.err")" >&2
          FAILED=1
          continue
        fi
        mv "$f.part" "$f"
        printf '  round %s  %-8s c%-3s %-12s %s\n' "$round" "$m" "$c" "$t" "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latency_ok"]
print("%9.0f req/s  p50 %6d µs  p99 %6d µs  statuses %s" % (d["throughput_rps"], lat["p50_us"], lat["p99_us"], d["status"]))' "$f")"
      done
    done
  done
done

# Thread counts again: what the gateways grew to under load.
for t in $TARGETS; do
  case "$t" in sluice-*) echo "$t after the runs: $(thread_summary "${PID[$t]}")" | tee -a "$OUT/proxy_setup.txt" ;; esac
done
cleanup
trap - EXIT

python3 - "$OUT" "$ROUNDS" "$CONC" "$DUR" "$MODELS" "$TARGETS" <<'PY' || FAILED=1
import json, os, statistics, sys
out, rounds, conc, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
models, targets = sys.argv[5].split(), sys.argv[6].split()
med = lambda xs: statistics.median(xs) if xs else None

def load(m, t, c, r):
    p = f"{out}/proxy_{m}_{t}_c{c}_r{r}.json"
    return json.load(open(p)) if os.path.exists(p) else None

bad = []
summary = {"duration": dur, "rounds": rounds, "concurrency": conc, "setup": open(f"{out}/proxy_setup.txt").read().splitlines(),
           "models": {}}
for m in models:
    runs = {(t, c): [load(m, t, c, r) for r in range(1, rounds + 1)] for t in targets for c in (1, conc)}
    for (t, c), rs in runs.items():
        for r, d in enumerate(rs, 1):
            if d is None:
                bad.append(f"{m} {t} c{c} round {r}: no result")
            elif set(d["status"]) != {"200"}:
                bad.append(f"{m} {t} c{c} round {r}: statuses {d['status']}")
    ok = lambda d: d is not None and set(d["status"]) == {"200"}
    rows = {}
    for t in targets:
        c1, cn = runs[(t, 1)], runs[(t, conc)]
        row = {
            "c1_p50_us": med([d["latency_ok"]["p50_us"] for d in c1 if ok(d)]),
            "c1_p99_us": med([d["latency_ok"]["p99_us"] for d in c1 if ok(d)]),
            "cN_rps": med([d["throughput_rps"] for d in cn if ok(d)]),
            "cN_p50_us": med([d["latency_ok"]["p50_us"] for d in cn if ok(d)]),
            "cN_p99_us": med([d["latency_ok"]["p99_us"] for d in cn if ok(d)]),
            "rounds": {"c1_p50_us": [d and d["latency_ok"]["p50_us"] for d in c1], "cN_rps": [d and d["throughput_rps"] for d in cn]},
        }
        if "direct" in targets:
            d1, dn = runs[("direct", 1)], runs[("direct", conc)]
            added = [a["latency_ok"]["p50_us"] - b["latency_ok"]["p50_us"] for a, b in zip(c1, d1) if ok(a) and ok(b)]
            ratio = [a["throughput_rps"] / b["throughput_rps"] for a, b in zip(cn, dn) if ok(a) and ok(b)]
            row["added_p50_us"] = med(added)
            row["cN_vs_direct"] = med(ratio)
            row["rounds"]["added_p50_us"] = added
        rows[t] = row
    summary["models"][m] = rows

fmt = lambda v, f="{:,.0f}": "–" if v is None else f.format(v)
print(f"\n| model | target | c1 p50 µs | c1 p99 µs | added p50 µs (vs direct) | c{conc} req/s | c{conc} / direct | c{conc} p50 µs | c{conc} p99 µs |")
print("|---|---|---|---|---|---|---|---|---|")
for m in models:
    for t in targets:
        r = summary["models"][m][t]
        print(f"| {m} | {t} | {fmt(r['c1_p50_us'])} | {fmt(r['c1_p99_us'])} | {fmt(r.get('added_p50_us'))} | {fmt(r['cN_rps'])} | "
              f"{fmt(r.get('cN_vs_direct'), '{:.3f}')} | {fmt(r['cN_p50_us'])} | {fmt(r['cN_p99_us'])} |")
print(f"(medians over {rounds} round(s) of {dur}; added p50 = median over rounds of p50(target) − p50(direct) in the same round)")

verdicts = []
if {"direct", "nginx"} <= set(targets):
    for m in models:
        n = summary["models"][m]["nginx"]
        for t in (t for t in targets if t.startswith("sluice-")):
            s = summary["models"][m][t]
            if None in (s.get("added_p50_us"), n.get("added_p50_us"), s["cN_rps"], n["cN_rps"]):
                verdicts.append({"model": m, "target": t, "latency_met": None, "throughput_met": None})
                print(f"{m}, {t} vs nginx: no verdict (missing or failed runs)")
                continue
            lat, thr = s["added_p50_us"] <= n["added_p50_us"], s["cN_rps"] >= n["cN_rps"]
            verdicts.append({"model": m, "target": t, "latency_met": lat, "throughput_met": thr,
                             "added_p50_us": [s["added_p50_us"], n["added_p50_us"]], "cN_rps": [s["cN_rps"], n["cN_rps"]]})
            print(f"{m}, {t} vs nginx: added p50 {s['added_p50_us']:,.0f} vs {n['added_p50_us']:,.0f} µs "
                  f"({'≤, met' if lat else '>, NOT met'}); c{conc} {s['cN_rps']:,.0f} vs {n['cN_rps']:,.0f} req/s "
                  f"({'≥, met' if thr else '<, NOT met'})")
            # Paired within each round (the VM drifts between rounds): Sluice's c1 p50 minus nginx's, and the ratio of
            # their c{conc} throughputs, with how many rounds went Sluice's way.
            p1 = [a - b for a, b in zip(s["rounds"]["c1_p50_us"], n["rounds"]["c1_p50_us"]) if a is not None and b is not None]
            pn = [a / b for a, b in zip(s["rounds"]["cN_rps"], n["rounds"]["cN_rps"]) if a and b]
            if p1 and pn:
                verdicts[-1]["paired"] = {"c1_p50_diff_us": p1, "cN_rps_ratio": pn}
                print(f"  paired by round: c1 p50 − nginx's median {med(p1):+,.0f} µs (≤ 0 in {sum(x <= 0 for x in p1)} of {len(p1)}); "
                      f"c{conc} req/s ÷ nginx's median {med(pn):.3f} (≥ 1 in {sum(x >= 1 for x in pn)} of {len(pn)})")
summary["verdicts"] = verdicts
summary["errors"] = bad
json.dump(summary, open(f"{out}/proxy_summary.json", "w"), indent=1)
print(f"summary: {out}/proxy_summary.json")
if bad:
    print("runs with errors:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
exit "$FAILED"
