#!/usr/bin/env bash
# README command 2: the whole test suite. Sets up what is missing (ONNX Runtime, demo models, the Python test clients),
# runs the Rust unit and integration tests, then the conformance tests with real third-party clients (tests/python/,
# and Triton's perf_analyzer, which needs Debian's libb64-0d: .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.onnxruntime/libonnxruntime.so.1.31.1}"
echo "== cargo test" >&2
cargo test --all-targets --quiet
echo "== python conformance tests (tritonclient)" >&2
# The binary `cargo test` built for the integration tests (CARGO_BIN_EXE_sluice). Not `cargo build --bin sluice`: without
# the dev-dependencies, Cargo resolves some crates' features differently and would compile the crate again (~3 min here).
test -x target/debug/sluice || { echo "test.sh: cargo test did not build target/debug/sluice" >&2; exit 1; }
SLUICE_BIN="$PWD/target/debug/sluice" .venv/bin/python -m pytest -q tests/python
echo "== Triton's perf_analyzer against sluice (HTTP, gRPC, gRPC streaming)" >&2
SLUICE_BIN="$PWD/target/debug/sluice" bash tests/perf_analyzer_smoke.sh
echo "== fuzzing the wire decoders (scripts/fuzz.sh, docs/FUZZING.md)" >&2
# Without AddressSanitizer in CI: it doubles the fuzz build (10.5 vs 6.9 min here) and cuts inputs per second ~7× (docs/FUZZING.md).
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" bash scripts/fuzz.sh "${SLUICE_FUZZ_SECONDS:-10}"
