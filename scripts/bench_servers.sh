# Sourced by the benchmark scripts: start `sluice serve` processes pinned to core 0 (CORE=N to pick another) and stop
# them all.
# Needs BIN (the sluice binary) and OUT (where each server's stdout and log go).
PIDS=()

# start_server NAME CONFIG [ARGS...]: starts a server on free ports of 127.0.0.1 and sets ADDR and GRPC_ADDR to its
# HTTP and gRPC addresses; `CORE=1 start_server ...` pins it to core 1 instead.
# (Not meant for $(...): the server's PID must reach PIDS in this shell, or stop_servers could not stop it.)
start_server() {
  local name=$1 config=$2
  shift 2
  # Created here, not only by the background job's redirection: the loop below may read it before that job runs.
  : >"$OUT/$name.out"
  taskset -c "${CORE:-0}" "$BIN" serve --config "$config" --http 127.0.0.1:0 --grpc 127.0.0.1:0 --admin 127.0.0.1:0 \
    --scaler 127.0.0.1:0 --log-format json "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  PIDS+=($!)
  ADDR=
  for _ in $(seq 1 300); do
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
      echo "server $name exited at start; the end of $OUT/$name.log:" >&2
      tail -n 5 "$OUT/$name.log" >&2
      exit 1
    fi
    ADDR=$(sed -n 's/^sluice listening http=\([^ ]*\).*/\1/p' "$OUT/$name.out")
    GRPC_ADDR=$(sed -n 's/^sluice listening .*grpc=\([^ ]*\).*/\1/p' "$OUT/$name.out")
    ADMIN_ADDR=$(sed -n 's/^sluice listening .*admin=\([^ ]*\).*/\1/p' "$OUT/$name.out")
    [ -n "$ADDR" ] && return 0
    sleep 0.1
  done
  echo "server $name did not start (see $OUT/$name.log)" >&2
  exit 1
}

stop_servers() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# wrk_bodies DIR: one-row V2 JSON request bodies for `wide` and `fraud_mlp` (DIR/MODEL_request.json, the same values
# every run) and the wrk scripts that post them (DIR/post_MODEL.lua).
wrk_bodies() {
  local dir=$1 spec model width
  for spec in wide:512 fraud_mlp:64; do
    model=${spec%:*} width=${spec#*:}
    python3 -c "
import json, random
random.seed(1)
print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, $width], 'datatype': 'FP32', 'data': [round(random.uniform(-1, 1), 6) for _ in range($width)]}]}))" >"$dir/${model}_request.json"
    cat >"$dir/post_$model.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$dir/${model}_request.json", "r"); wrk.body = f:read("*a"); f:close()
LUA
  done
}
