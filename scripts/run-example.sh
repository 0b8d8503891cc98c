#!/usr/bin/env bash
# The main job: set up, build, compile the tiny G3MoE example with LoRA on
# every projection (examples/tiny-g3moe/train.json) into a step.bin, write the
# tiny model as an HF-format checkpoint with its tokenizer (the build trains the
# tiny SentencePiece model), and train the LoRA adapters from that checkpoint on
# the bundled chat data (examples/data/chat.jsonl) with g3moe-run: evaluation,
# checkpoints, the final PEFT adapter. It trains on the GPU where the build has
# CUDA and a GPU is visible, else on the CPU (g3moe-run's --device auto; its
# first line, "backend: ...", says which). G3MOE_DEVICE=cpu forces the CPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
build=${G3MOE_BUILD_DIR:-$root/build}
ckpt=$build/tiny-g3moe-hf
out=$build/tiny-g3moe-run

"$build/bin/g3moe-compile" "$root/examples/tiny-g3moe/train.json" -o "$build/tiny-g3moe.step"
# A real run points --weights at a downloaded checkpoint; here the tiny model's
# seeded weights stand in for one.
rm -rf "$ckpt" "$out"
"$build/bin/g3moe-run" "$build/tiny-g3moe.step" --save-initial-weights "$ckpt"
cp "$build/tiny-tokenizer/tokenizer.model" "$ckpt/"
"$build/bin/g3moe-run" "$build/tiny-g3moe.step" --weights "$ckpt" --images mask \
  --output-dir "$out" --no-progress-bar
