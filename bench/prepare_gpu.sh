#!/usr/bin/env bash
# Builds what bench/run_gpu.sh needs into devcarry/ (ignored by git): the GPU
# test binaries, g3moe-bench, the tiny test steps, the G3MoE-4B steps at the
# given lengths, and the two PyTorch baselines (the strong stack with its
# wheels).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${G3MOE_BUILD_DIR:-$root/build}
seqs=("${@:-4096 8192}")
cmake --build "$build" --target G3RtGpuTests G3MoECudaStepTests G3MoECudaTrainTests \
  G3MoECudaAttentionTests G3MoECudaChecksTests G3MoEDeviceBudgetGpuTests g3moe-bench \
  attention-bench g3moe-run g3moe-compile \
  g3moe-test-steps tiny-tokenizer -j 2
rm -rf "$root/devcarry" && mkdir -p "$root/devcarry/steps"
cp "$build/test/gpu/G3RtGpuTests" "$build/test/gpu/G3MoECudaStepTests" "$build/test/gpu/G3MoECudaTrainTests" \
  "$build/test/gpu/G3MoECudaAttentionTests" "$build/test/gpu/G3MoECudaChecksTests" \
  "$build/test/gpu/G3MoEDeviceBudgetGpuTests" "$build/bin/g3moe-compile" "$build/bin/g3moe-bench" "$build/bin/attention-bench" \
  "$build/bin/g3moe-run" "$root/bench/attention_reference.py" "$root/devcarry/"
# The main job's step and tokenizer, to train the tiny G3MoE on the GPU.
"$build/bin/g3moe-compile" "$root/examples/tiny-g3moe/train.json" --quiet -o "$root/devcarry/tiny-g3moe.step"
cp "$build/tiny-tokenizer/tokenizer.model" "$root/devcarry/"
cp "$build"/test/e2e/steps/*.step "$root/devcarry/steps/"
# The mid-size transformers comparison (test/gpu/hf_midsize.py): its config,
# data and bf16 and fp32 LoRA steps; the checkpoint itself is written on the GPU machine.
bash "$root/scripts/setup-python.sh" > /dev/null
"${G3MOE_VENV:-$HOME/.cache/g3moe/venv}/bin/python" "$root/test/gpu/hf_midsize.py" prepare \
  "$root/devcarry/midsize" 2> /dev/null
"$build/bin/g3moe-compile" "$root/devcarry/midsize/config.json" --quiet --seq-len 1024 \
  --micro-batch 2 --set test_size=0 --set lora_r=16 --set lora_alpha=32 --set lora_dropout=0 \
  --set lora_target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  -o "$root/devcarry/midsize/midsize.step"
"$build/bin/g3moe-compile" "$root/devcarry/midsize/config.json" --quiet --fp32 --seq-len 1024 \
  --micro-batch 2 --set test_size=0 --set lora_r=16 --set lora_alpha=32 --set lora_dropout=0 \
  --set lora_target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  -o "$root/devcarry/midsize/midsize-fp32.step"
"$build/bin/g3moe-compile" "$root/devcarry/midsize/config.json" --quiet --seq-len 1024 \
  --micro-batch 2 --set test_size=0 --set lora_r=16 --set lora_alpha=32 --set lora_dropout=0 \
  --set lora_target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj \
  --set fp8_base=true -o "$root/devcarry/midsize/midsize-fp8.step"
cp "$root/../shared/bench/pytorch_stack.py" "$root/../shared/bench/strong_stack.py" "$root/devcarry/"
cp -r "$root/../shared/bench/wheels" "$root/devcarry/"
# G3MoE-4B at each length with the recipe's LoRA dropout (0.05,
# g3moe-4b-T.step, inside the products as by default; separate
# keyed_dropout ops, g3moe-4b-T-sep.step) and without (g3moe-4b-T-d0.step).
for T in ${seqs[*]}; do
  for dropout in 0.05 0.0; do
    name=g3moe-4b-$T
    [[ $dropout == 0.0 ]] && name=$name-d0
    cat > "$root/devcarry/$name.json" <<JSON
{"model_name_or_path": "$root/examples/g3moe-4b", "max_seq_length": $T,
 "per_device_train_batch_size": 1, "memory_budget_gb": 76, "lora_r": 16, "lora_alpha": 32,
 "lora_dropout": $dropout, "lora_target_modules": ["gate_proj", "up_proj", "down_proj"]}
JSON
    /usr/bin/time -f "compile %e s" "$build/bin/g3moe-compile" "$root/devcarry/$name.json" --quiet \
      -o "$root/devcarry/$name.step"
  done
  # The LoRA dropouts as separate ops (g3moe-4b-T-sep.step), and the frozen
  # products in e4m3 (g3moe-4b-T-fp8.step).
  "$build/bin/g3moe-compile" "$root/devcarry/g3moe-4b-$T.json" --quiet \
    --dropout-in-products=false -o "$root/devcarry/g3moe-4b-$T-sep.step"
  "$build/bin/g3moe-compile" "$root/devcarry/g3moe-4b-$T.json" --quiet --set fp8_base=true \
    -o "$root/devcarry/g3moe-4b-$T-fp8.step"
done
# Dense Gemma-3 4B steps (LoRA on every projection) at short lengths, where
# launching kernels one by one costs most: run_gpu.sh times them with and
# without CUDA graphs.
for T in 1024 4096; do
  cat > "$root/devcarry/dense-$T.json" <<JSON
{"model_name_or_path": "$root/examples/gemma-3-4b-it", "max_seq_length": $T,
 "per_device_train_batch_size": 1, "memory_budget_gb": 76, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
 "lora_target_modules": "all-linear"}
JSON
  "$build/bin/g3moe-compile" "$root/devcarry/dense-$T.json" --quiet -o "$root/devcarry/gemma3-4b-$T.step"
done
# Compressed: the binaries each hold the CUDA kernels, and what travels to the
# GPU machine is limited to 64 MiB (bench/run_gpu.sh unpacks them).
bins=(G3RtGpuTests G3MoECudaStepTests G3MoECudaTrainTests G3MoECudaAttentionTests G3MoECudaChecksTests
  G3MoEDeviceBudgetGpuTests g3moe-compile g3moe-bench attention-bench g3moe-run)
tar -C "$root/devcarry" -czf "$root/devcarry/bin.tar.gz" "${bins[@]}"
(cd "$root/devcarry" && rm "${bins[@]}")
du -sh "$root/devcarry"
