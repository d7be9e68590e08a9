#!/usr/bin/env bash
# The whole test suite: installs what is missing, builds qkv in Release and runs every test,
# then builds again under AddressSanitizer + UndefinedBehaviorSanitizer and runs every test
# there too. Any failure or sanitizer report fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=$(nproc)
bash scripts/setup.sh

echo "== Release build and tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build -j"$jobs" --output-on-failure

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
# halt_on_error and abort make any report fail its test; leaks count as reports.
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1
# -O1, the level the sanitizers' authors recommend, compiles faster than Release's -O3
# (the whole .ci/run, both passes, took 13m44s from a fresh clone on 2 cores with it).
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -DNDEBUG" \
  -DQKV_SANITIZE=ON >/dev/null
cmake --build build-sanitize -j"$jobs"
ctest --test-dir build-sanitize -j"$jobs" --output-on-failure
