#!/usr/bin/env bash
# The main job: set up, build, and compile the tiny G3MoE example (LoRA r=4 on
# the MLP and expert projections), printing its training step in IR. (Training
# it arrives with the runtime.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}
"$build/bin/g3moe-compile" "$root/examples/tiny-g3moe/config.json" --emit=train-mlir --seq-len 16 --micro-batch 2 \
  --set lora_r=4 --set lora_alpha=16 --set lora_dropout=0.05
