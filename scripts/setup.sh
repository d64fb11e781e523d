#!/usr/bin/env bash
# Idempotent set-up for a fresh clone. Fetches only from package registries (Debian, PyPI):
#   0. Debian packages that are missing (python3-venv; with --test libb64-0d, prometheus and redis-server);
#   1. a Python venv (.venv) with the model-building helper (onnx, numpy) and, with --test, the test clients;
#   2. ONNX Runtime 1.31.1's C library, taken from the PyPI wheel and checked against a pinned sha256,
#      into .onnxruntime/ (which .cargo/config.toml points ORT_DYLIB_PATH at);
#   3. the demo models: the small ones are committed, `wide` (~55 MB) is generated here.
# Running it twice does nothing the second time.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
ORT_WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
ORT_WHEEL_SHA256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ORT_DIR=.onnxruntime
ORT_LIB=$ORT_DIR/libonnxruntime.so.$ORT_VERSION
VENV=.venv
PYTHON=${PYTHON:-python3}

want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (known: --test)" >&2; exit 2 ;;
  esac
done

log() { echo "setup: $*" >&2; }

# 0. Debian packages: python3-venv always; with --test, what the tests run against (Triton's perf_analyzer links
#    libb64; a real Prometheus scrapes the server; a real Redis backs the shared cache tier). Installed with apt-get
#    when running as root (CI), else named.
need=()
"$PYTHON" -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
if [ "$want_test" = 1 ]; then
  ldconfig -p 2>/dev/null | grep -q libb64.so.0d || need+=(libb64-0d)
  { command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${need[*]}"
    # The tests start their own servers on free ports of 127.0.0.1, whether or not the packages' services run.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# 1. Python venv for the model script (and test clients).
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp_models=$VENV/.models-deps
if [ ! -f "$stamp_models" ]; then
  log "installing the model-building helper (onnx, numpy) into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-models.txt
  touch "$stamp_models"
fi
if [ "$want_test" = 1 ]; then
  stamp_test=$VENV/.test-deps
  if [ ! -f "$stamp_test" ] || [ scripts/requirements-test.txt -nt "$stamp_test" ]; then
    log "installing the test clients (tritonclient, pytest) into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
    touch "$stamp_test"
  fi
fi

# 2. ONNX Runtime's shared library from the PyPI wheel.
if [ ! -f "$ORT_LIB" ]; then
  log "fetching ONNX Runtime $ORT_VERSION from PyPI"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-cache-dir --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
    "onnxruntime==$ORT_VERSION" -d "$tmp"
  got=$(sha256sum "$tmp/$ORT_WHEEL" | cut -d' ' -f1)
  if [ "$got" != "$ORT_WHEEL_SHA256" ]; then
    echo "setup: sha256 mismatch for $ORT_WHEEL: got $got, want $ORT_WHEEL_SHA256" >&2
    exit 1
  fi
  mkdir -p "$ORT_DIR"
  "$PYTHON" - "$tmp/$ORT_WHEEL" "$ORT_LIB" <<'PY'
import shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
member = "onnxruntime/capi/" + dest.rsplit("/", 1)[1]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out)
import os
os.replace(dest + ".part", dest)
PY
  log "ONNX Runtime library at $ORT_LIB"
fi

# 3. Demo models (the script skips what already exists and matches).
"$VENV/bin/python" models/make_models.py --quiet
