#!/usr/bin/env bash
# Sets up, builds, and runs every test (GoogleTest and lit, all under ctest).
# The GPU suite (ctest label `gpu`) runs only where a GPU is visible; pass
# ctest arguments through, e.g. `scripts/test.sh -L gpu` on a GPU machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/setup-python.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}
select=()
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "test: no GPU visible, leaving out the gpu suite"
  select=(-LE gpu)
fi
ctest --test-dir "$build" --output-on-failure -j 2 "${select[@]}" "$@"
