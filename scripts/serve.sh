#!/usr/bin/env bash
# README command 1: set up what is missing (ONNX Runtime from PyPI, the demo models) and serve models/ on
# in-process ONNX Runtime over KServe V2 HTTP on :8000. Extra arguments go to `sluice serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release --quiet -- serve --config config/sluice.toml "$@"
