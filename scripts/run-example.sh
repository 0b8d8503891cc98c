#!/usr/bin/env bash
# The main job: set up, build, compile the tiny G3MoE example with LoRA on
# every projection (examples/tiny-g3moe/train.json) into a step.bin, and train
# it on the bundled memorisation set with g3moe-run on the CPU backend. (The
# CUDA backend does not exist yet, so a GPU machine also trains on the CPU.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}
"$build/bin/g3moe-compile" "$root/examples/tiny-g3moe/train.json" -o "$build/tiny-g3moe.step"
"$build/bin/g3moe-run" "$build/tiny-g3moe.step" --output-dir "$build/tiny-g3moe-run"
