#!/usr/bin/env bash
# Fails, naming them, on doctest case names that ctest cannot carry (tests/CMakeLists.txt):
# CMake cuts a name at ";" — ctest then runs no case for it and still reports Passed — and reads
# unbalanced "[" / "]" as list brackets, merging the tests that follow into one.
#
#   tests/support/check_test_names.sh TEST_BINARY
set -euo pipefail
"$1" --list-test-cases --no-version | awk '
  /^\[doctest\]/ || /^=+$/ { next }
  { names++; opened = gsub(/\[/, "["); closed = gsub(/\]/, "]") }
  index($0, ";") || opened != closed { print "ctest cannot run this test name: " $0; bad++ }
  END { if (bad) exit 1; print names " test names, every one safe for ctest" }'
