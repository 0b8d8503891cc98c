#!/usr/bin/env bash
# Builds the runtime with its unit tests, e2e tests and the fuzz-input
# replays under AddressSanitizer + UBSan (clang-22, -fno-sanitize-recover=all:
# the first finding fails the test) into build-asan/ (or
# $G3MOE_ASAN_BUILD_DIR) and runs them under ctest. The compiler is not built
# again: the e2e steps come from the main build's g3moe-compile
# ($G3MOE_BUILD_DIR/bin, default build/; or $G3MOE_STEP_COMPILER), so build
# that first (scripts/build.sh). Extra arguments go to ctest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${G3MOE_ASAN_BUILD_DIR:-$root/build-asan}
compile=${G3MOE_STEP_COMPILER:-${G3MOE_BUILD_DIR:-$root/build}/bin/g3moe-compile}
[[ -x $compile ]] ||
  { echo "sanitize: $compile not found: build the compiler first (scripts/build.sh)" >&2; exit 1; }

"$root/scripts/setup.sh"
G3MOE_BUILD_DIR=$build G3MOE_BUILD_TYPE=RelWithDebInfo "$root/scripts/build.sh" \
  -DCMAKE_C_COMPILER=clang-22 -DCMAKE_CXX_COMPILER=clang++-22 \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DG3MOE_BUILD_COMPILER=OFF -DG3MOE_ENABLE_CUDA=OFF \
  -DG3MOE_SANITIZE=address,undefined -DG3MOE_STEP_COMPILER="$compile"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
ctest --test-dir "$build" --output-on-failure -j 2 "$@"
