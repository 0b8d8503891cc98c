#!/usr/bin/env bash
# The main job: set up, build, and compile the tiny G3MoE example, printing the
# forward + loss graph of one micro-batch. (Training arrives with the runtime.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}
"$build/bin/g3moe-compile" "$root/examples/tiny-g3moe/config.json" --emit=mlir --seq-len 16 --micro-batch 2
