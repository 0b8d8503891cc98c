#!/usr/bin/env bash
# Sets up, builds, and runs every test (GoogleTest and lit, all under ctest).
# The GPU suite (ctest label `gpu`) runs only where a GPU is visible; pass
# ctest arguments through, e.g. `scripts/test.sh -L gpu` on a GPU machine.
#
# Without arguments three more stages run first: the format check
# (scripts/format.sh --check) and, each ending with its own ctest summary,
# the runtime's unit and e2e tests under ASan + UBSan
# (scripts/sanitize.sh, build-asan/; G3MOE_SANITIZE_TESTS=0 skips it) and
# each fuzz target for G3MOE_FUZZ_SECONDS (default 60; 0 skips it;
# scripts/fuzz.sh, build-fuzz/). A failed stage fails the script after the
# main tests have run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/setup-python.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}

failed=()
if (($# == 0)); then
  "$root/scripts/format.sh" --check || failed+=("formatting (scripts/format.sh)")
  if [[ ${G3MOE_SANITIZE_TESTS:-1} != 0 ]]; then
    echo "test: unit and e2e tests under ASan + UBSan (scripts/sanitize.sh)"
    "$root/scripts/sanitize.sh" || failed+=("sanitizers (scripts/sanitize.sh)")
  fi
  if [[ ${G3MOE_FUZZ_SECONDS:-60} != 0 ]]; then
    echo "test: fuzzing each target for ${G3MOE_FUZZ_SECONDS:-60} s (scripts/fuzz.sh)"
    "$root/scripts/fuzz.sh" "${G3MOE_FUZZ_SECONDS:-60}" || failed+=("fuzzing (scripts/fuzz.sh)")
  fi
  ((${#failed[@]} == 0)) || echo "test: failed: ${failed[*]}; the main tests follow"
fi

select=()
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "test: no GPU visible, leaving out the gpu suite"
  select=(-LE gpu)
fi
ctest --test-dir "$build" --output-on-failure -j 2 "${select[@]}" "$@"
if ((${#failed[@]})); then
  echo "test: failed: ${failed[*]}"
  exit 1
fi
