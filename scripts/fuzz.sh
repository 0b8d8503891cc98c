#!/usr/bin/env bash
# Builds the libFuzzer targets (test/fuzz: config, data, safetensors, step)
# with clang-22, AddressSanitizer and UBSan into build-fuzz/ (or
# $G3MOE_FUZZ_BUILD_DIR) and runs each for SECONDS (default 60) under ctest,
# two at a time. A crash fails its test and its input lands in
# test/fuzz/regressions/<target>/ (commit it with the fix). Extra arguments
# go to ctest: `scripts/fuzz.sh 600 -R data` fuzzes the data reader for ten
# minutes.
#
# The step seeds are compiled with the main build's g3moe-compile
# ($G3MOE_BUILD_DIR/bin, default build/) or $G3MOE_STEP_COMPILER where one
# exists; without one the step target starts from its kept inputs only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=60
if (($#)) && [[ $1 =~ ^[0-9]+$ ]]; then
  seconds=$1
  shift
fi
build=${G3MOE_FUZZ_BUILD_DIR:-$root/build-fuzz}
compile=${G3MOE_STEP_COMPILER:-${G3MOE_BUILD_DIR:-$root/build}/bin/g3moe-compile}
[[ -x $compile ]] || compile=

"$root/scripts/setup.sh"
G3MOE_BUILD_DIR=$build G3MOE_BUILD_TYPE=RelWithDebInfo "$root/scripts/build.sh" \
  -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DG3MOE_BUILD_COMPILER=OFF -DG3MOE_BUILD_TESTS=OFF -DG3MOE_ENABLE_CUDA=OFF \
  -DG3MOE_FUZZ=ON -DG3MOE_SANITIZE=address,undefined -DG3MOE_STEP_COMPILER="$compile"

export G3MOE_FUZZ_SECONDS=$seconds
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
ctest --test-dir "$build" -L '^fuzz$' -j 2 --output-on-failure --timeout $((seconds + 600)) "$@"
