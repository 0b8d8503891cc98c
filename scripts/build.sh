#!/usr/bin/env bash
# Configures and builds g3moe in build/ (or $G3MOE_BUILD_DIR). Extra arguments go
# to the CMake configure step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${G3MOE_BUILD_DIR:-$root/build}

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
linker=()
command -v ld.lld-22 >/dev/null && linker=(-DLLVM_USE_LINKER=lld)

cmake -G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="${G3MOE_BUILD_TYPE:-Release}" \
  -DLLVM_ENABLE_ASSERTIONS=ON "${launcher[@]}" "${linker[@]}" "$@" >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log"; exit 1; }
# Two cores and about 1 GB per MLIR translation unit: keep the job count modest.
cmake --build "$build" -j "${G3MOE_JOBS:-2}"
