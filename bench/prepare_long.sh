#!/usr/bin/env bash
# Compiles the long-context steps bench/run_long.sh times into devcarry/long.tar.gz
# (after bench/prepare_gpu.sh, which builds the binaries): G3MoE-4B with
# LoRA r16 on gate/up/down (dropout 0.05), batch 1, at the given lengths,
# each under a 76 GiB budget or the one it names (131072@60), and the seed's
# 120K preset unchanged. Each compile prints its memory report line and time.
#   bash bench/prepare_long.sh 65536 131072 131072@60 262144@74
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${G3MOE_BUILD_DIR:-$root/build}
runs=("${@:-65536 131072}")
rm -rf "$root/devcarry/long" && mkdir -p "$root/devcarry/long"
for run in ${runs[*]}; do
  T=${run%@*}
  budget=76
  [[ $run == *@* ]] && budget=${run#*@}
  cat > "$root/devcarry/long/bench-$T-$budget.json" <<JSON
{"model_name_or_path": "$root/examples/g3moe-4b", "max_seq_length": $T,
 "per_device_train_batch_size": 1, "memory_budget_gb": $budget, "lora_r": 16, "lora_alpha": 32,
 "lora_dropout": 0.05, "lora_target_modules": ["gate_proj", "up_proj", "down_proj"]}
JSON
  /usr/bin/time -f "compile %e s" "$build/bin/g3moe-compile" "$root/devcarry/long/bench-$T-$budget.json" \
    --set model.max_position_embeddings=262144 -o "$root/devcarry/long/g3moe-4b-$T-$budget.step" 2>&1 |
    grep -v warning | grep -E "device memory|compile "
done
/usr/bin/time -f "compile %e s" "$build/bin/g3moe-compile" \
  "$root/examples/presets/g3moe_120k_deepspeed_config.json" --set memory_budget_gb=76 \
  -o "$root/devcarry/long/preset-120k.step" 2>&1 | grep -v warning | grep -E "device memory|compile "
# Compressed (a fifth of the size): what travels to the GPU machine is limited
# to 64 MiB; bench/run_long.sh unpacks them.
tar -C "$root/devcarry/long" -czf "$root/devcarry/long.tar.gz" $(cd "$root/devcarry/long" && ls)
rm -rf "$root/devcarry/long"
