#!/usr/bin/env bash
# Fuzzes Sluice's wire decoders with cargo-fuzz (libFuzzer + AddressSanitizer): each target in fuzz/fuzz_targets/ runs
# for SECONDS (default 20; CI runs 10, without AddressSanitizer, through scripts/test.sh). Exits non-zero when any target found a crash, panic,
# sanitizer error, leak, over-allocation or slow input, and prints the input that caused it
# (fuzz/artifacts/<target>/...). 0 seconds skips fuzzing.
#
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]      # all targets, or the ones named
#
# Longer runs by hand, e.g. 10 minutes per target, or one target for an hour on every core:
#   bash scripts/fuzz.sh 600
#   FUZZ_JOBS=$(nproc) bash scripts/fuzz.sh 3600 grpc_request
# New inputs go to fuzz/target/corpus/<target>/ (gitignored, kept between runs); the committed seeds in
# fuzz/corpus/<target>/ are only read. docs/FUZZING.md says how to fold new inputs into the committed corpus and how
# to turn a crash into a regression test.
#
# Works on stable Rust: cargo-fuzz's nightly-only flags (-Zsanitizer, ...) are allowed by RUSTC_BOOTSTRAP=1.
# FUZZ_SANITIZER=none skips AddressSanitizer (faster; panics, aborts, timeouts and OOMs are still caught).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-20}"
shift || true
if [[ "$SECONDS_PER_TARGET" == 0 ]]; then
    # (libFuzzer reads -max_total_time=0 as "no limit")
    echo "== fuzzing skipped (0 seconds a target)" >&2
    exit 0
fi
CARGO_FUZZ_VERSION=0.13.2
SANITIZER="${FUZZ_SANITIZER:-address}"
JOBS="${FUZZ_JOBS:-1}"   # above 1: libFuzzer's -fork mode, that many processes per target
export RUSTC_BOOTSTRAP=1

# cargo-fuzz, pinned: installed once into cargo's bin folder (~/.cargo/bin) and reused while its version matches.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"
if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for every target (they share all their dependencies): into fuzz/target/, gitignored.
echo "== cargo fuzz build (sanitizer: $SANITIZER)" >&2
mkdir -p target
build_start=$(date +%s)
if ! cargo fuzz build --sanitizer "$SANITIZER" >target/fuzz-build.log 2>&1; then
    grep -v '^ *Compiling ' target/fuzz-build.log | tail -40 >&2
    echo "!! fuzz build failed; its log: fuzz/target/fuzz-build.log" >&2
    exit 1
fi
echo "   built in $(( $(date +%s) - build_start )) s" >&2
parallel=()
if [[ "$JOBS" -gt 1 ]]; then
    parallel=(-fork="$JOBS")
fi

status=0
for target in "${targets[@]}"; do
    case "$target" in
        grpc_*) dict=dicts/v2_grpc.dict ;;
        *) dict=dicts/v2_json.dict ;;
    esac
    work="target/corpus/$target"
    mkdir -p "$work" "artifacts/$target"
    echo "== fuzz $target for ${SECONDS_PER_TARGET}s" >&2
    log="target/fuzz-$target.log"
    # -timeout: one input taking over 10 s is a finding; -rss_limit_mb / -malloc_limit_mb: so is a process over 2 GiB
    # or one allocation over 512 MiB (the targets' limits allow tensors of 8 MiB at most).
    if cargo fuzz run --sanitizer "$SANITIZER" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -dict="$dict" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
        -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1; then
        # The last status line: executions, coverage (cov: edges, ft: features), corpus size.
        grep -E '^#[0-9]+' "$log" | tail -1 | sed 's/^/   /' >&2 || true
        grep -E '^stat::number_of_executed_units' "$log" | tail -1 | sed 's/^/   /' >&2 || true
    else
        status=1
        echo "!! fuzz target '$target' FAILED; its log: fuzz/$log" >&2
        grep -E -A12 '^(thread .* panicked|==[0-9]+==ERROR|SUMMARY)' "$log" | head -60 >&2 || tail -40 "$log" >&2
        for artifact in $(grep -oE 'Test unit written to [^ ]+' "$log" | awk '{print $5}'); do
            echo "   crashing input: $artifact" >&2
            echo "   replay:   (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target $artifact)" >&2
            echo "   minimize: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin $target $artifact)" >&2
        done
    fi
done
exit $status
