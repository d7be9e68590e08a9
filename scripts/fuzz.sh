#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang and runs each for a while.
#
#   scripts/fuzz.sh                 every target, 30 s each (the CI smoke run)
#   scripts/fuzz.sh 600             every target, 10 minutes each
#   scripts/fuzz.sh 600 corpus cli  only those targets
#   FUZZ_JOBS=2 scripts/fuzz.sh 600 runs two targets at a time
#   FUZZ_NO_BUILD=1 ...             runs the targets already built
#   FUZZ_BUILD_DIR=DIR ...          in DIR instead of build-fuzz
#   FUZZ_FLAGS="-O0" ...            compile flags (default "-O1 -g"); scripts/test.sh's smoke
#                                   runs use -O0, which compiles xtensor-heavy code faster
#
# A target fails on a crash, a sanitizer report (ASan + UBSan), a leak, a timeout (10 s per
# input) or an out-of-memory (2 GB); libFuzzer then writes the input to
# build-fuzz/findings/crash-* (or leak-*, timeout-*, oom-*), which reproduces it with
# `build-fuzz/tests/fuzz/fuzz_NAME FILE`. The corpus grown from tests/fuzz/corpus/NAME is
# kept in build-fuzz/corpus/NAME between runs. Prints one line per target:
# `fuzz NAME: N runs in S s, ok` and exits non-zero if any target failed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
shift || true
all_targets=(safetensors vocab corpus model_config checkpoint cli)
if (($# > 0)); then targets=("$@"); else targets=("${all_targets[@]}"); fi
jobs=${FUZZ_JOBS:-1}
build=${FUZZ_BUILD_DIR:-build-fuzz}

# -O1 with debug info: the sanitizers' recommended level, and readable stack traces. The libraries
# as unity builds: a clean build in about two thirds of the CPU time (reports still name each
# source file and line).
if [[ -z "${FUZZ_NO_BUILD:-}" ]]; then
  CXX=clang++ cmake -S . -B "$build" -DQKV_FUZZ=ON -DQKV_BUILD_TESTS=OFF -DQKV_BUILD_EXAMPLES=OFF \
    -DQKV_UNITY_BUILD=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="${FUZZ_FLAGS:--O1 -g}" >/dev/null
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"
fi

mkdir -p "$build/findings"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1

run_target() {
  local name=$1 log=$build/findings/$1.log
  mkdir -p "$build/corpus/$name"
  local status=0
  "$build/tests/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$build/findings/$name-" \
    "$build/corpus/$name" "tests/fuzz/corpus/$name" >"$log" 2>&1 || status=$?
  local runs
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if ((status == 0)); then
    echo "fuzz $name: ${runs:-?} runs in $seconds s, ok"
  else
    echo "fuzz $name: FAILED after ${runs:-?} runs (exit $status); the report:"
    grep -E -A12 "ERROR:|runtime error|SUMMARY|Test unit written" "$log" | head -40
    return 1
  fi
}

failed=0
pids=()
for name in "${targets[@]}"; do
  run_target "$name" &
  pids+=($!)
  if ((${#pids[@]} >= jobs)); then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit $failed
