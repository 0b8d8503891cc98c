#!/usr/bin/env bash
# One device call: the GPU correctness suite, then the G3MoE-4B benchmark of
# g3moe and of the PyTorch stack in the same run. Binaries and compiled steps
# come prebuilt in devcarry/ (bench/prepare_gpu.sh makes it). The device tool
# brings back at most 8 files, so the logs go to $OUT/logs.tar.gz, and the
# summary tables also to $OUT/summary.md.
#   bash bench/run_gpu.sh [seq lengths...]
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
carry=$here/devcarry
dest=${OUT:-/tmp/g3moe-out}
out=$(mktemp -d /tmp/g3moe-logs.XXXXXX)
mkdir -p "$dest"
# Runs also when a step below fails or times out.
trap 'tar -C "$out" -czf "$dest/logs.tar.gz" . && cp "$out"/summary.md "$dest"/ 2> /dev/null' EXIT
seqs=("${@:-4096 8192}")
[[ ${SKIP_BENCH:-0} == 1 ]] && seqs=()
# The PyTorch stack is measured at every length the issue names; it runs out of
# memory past 8K on an 80 GB card.
# TORCH_SEQS="8192" narrows it for a shorter call; BENCH_EXTRAS=0 leaves out
# the attention benchmark, the dense CUDA-graph comparison and the profiles.
torch_seqs=(${TORCH_SEQS:-4096 8192 16384 32768})
[[ -f $carry/bin.tar.gz ]] && tar -C "$carry" -xzf "$carry/bin.tar.gz"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

echo "== GPU correctness (CUDA backend vs CPU reference)"
export G3MOE_TEST_STEPS=$carry/steps G3MOE_EXAMPLES_DIR=$here/examples
"$carry/G3RtGpuTests" 2>&1 | tee "$out/gpu_random.log" | tail -3
timeout 200 "$carry/G3MoECudaStepTests" > "$out/gpu_steps.log" 2>&1
grep -E "^\[ +(OK|FAILED|PASSED) +\]|Failure" "$out/gpu_steps.log"

timeout 200 "$carry/G3MoECudaTrainTests" > "$out/gpu_train.log" 2>&1
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]|Failure" "$out/gpu_train.log"

# SKIP_ATTENTION_TESTS=1 leaves out the attention, argument-check and
# device-budget suites (for a call about other kernels).
if [[ ${SKIP_ATTENTION_TESTS:-0} != 1 ]]; then
  timeout 200 "$carry/G3MoECudaAttentionTests" > "$out/gpu_attention.log" 2>&1
  grep -E "^\[ +(FAILED|PASSED) +\]|Failure|worst" "$out/gpu_attention.log"

  timeout 200 "$carry/G3MoECudaChecksTests" > "$out/gpu_checks.log" 2>&1
  grep -E "^\[ +(FAILED|PASSED) +\]|Failure" "$out/gpu_checks.log"

  # g3moe-compile's default memory budget from the visible GPU.
  timeout 200 "$carry/G3MoEDeviceBudgetGpuTests" > "$out/gpu_budget.log" 2>&1
  grep -E "^\[ +(FAILED|PASSED) +\]|Failure|budget" "$out/gpu_budget.log" | head -8
fi

echo "== a mid-size Gemma-3 checkpoint from save_pretrained: g3moe (cuda) vs transformers + PEFT"
PYTHONUNBUFFERED=1 timeout 300 python3 "$here/test/gpu/hf_midsize.py" check "$carry/midsize" \
  "$carry/g3moe-run" 2>&1 | grep -v -i warn | tail -4 | tee "$out/midsize.log"
echo "== fp8_base's quality on the same checkpoint: bf16, fp32 and fp8 steps, 50 steps each"
PYTHONUNBUFFERED=1 timeout 300 python3 "$here/test/gpu/hf_midsize.py" quality "$carry/midsize" \
  "$carry/g3moe-run" 2>&1 | grep -v -i warn | tail -2 | tee "$out/midsize_fp8.log"

echo "== the main job's training on the GPU (g3moe-run --device cuda)"
rm -rf /tmp/tiny-hf /tmp/tiny-run
"$carry/g3moe-run" "$carry/tiny-g3moe.step" --save-initial-weights /tmp/tiny-hf > /dev/null &&
  cp "$carry/tokenizer.model" /tmp/tiny-hf/ &&
  timeout 120 "$carry/g3moe-run" "$carry/tiny-g3moe.step" --device cuda --weights /tmp/tiny-hf \
    --data "$here/examples/data/chat.jsonl" --images mask --output-dir /tmp/tiny-run \
    --no-progress-bar 2>&1 | tee "$out/tiny_cuda.log" | grep -E "backend|step [0-9]+/|eval step|saved .*adapter"

echo "== benchmark: attention kernels (own, cuDNN through g3moe, cuDNN through PyTorch)"
# ATTENTION_IMPLS="cudnn" leaves out the (slow, unchanged) own kernels.
extras=${BENCH_EXTRAS:-1}
[[ ${#seqs[@]} -gt 0 && $extras == 1 ]] && for impl in ${ATTENTION_IMPLS:-own cudnn}; do
  G3MOE_CUDA_ATTENTION=$impl timeout 100 "$carry/attention-bench" ${seqs[*]} 2>&1 | tee -a "$out/bench_attention.jsonl"
done
[[ ${#seqs[@]} -gt 0 && $extras == 1 ]] &&
  timeout 100 python3 "$carry/attention_reference.py" ${seqs[*]} 2>&1 | tee -a "$out/bench_attention.jsonl"

echo "== benchmark: g3moe (expert products grouped in one kernel, then per-expert cuBLAS)"
# EXPERT_GEMMS="grouped" leaves out the per-expert cuBLAS comparison;
# BENCH_STEPS (6) is the steps per run, the first two untimed. Each
# length runs with the recipe's LoRA dropout (0.05; inside the products and,
# the -sep step, as separate ops) and, where prepared, without (the -d0 step).
for T in ${seqs[*]}; do
  for step in "$carry/g3moe-4b-$T.step" "$carry/g3moe-4b-$T-sep.step" "$carry/g3moe-4b-$T-d0.step" \
    "$carry/g3moe-4b-$T-fp8.step"; do
    [[ -f $step ]] || continue
    for gemm in ${EXPERT_GEMMS:-grouped cublas}; do
      G3MOE_EXPERT_GEMM=$gemm timeout 150 "$carry/g3moe-bench" "$step" "${BENCH_STEPS:-6}" 2>&1 |
        tee -a "$out/bench_g3moe.jsonl"
    done
  done
done
# SKIP_STRONG=1 leaves out the strong PyTorch stack (lora dropout 0.05, as
# the recipe's steps above).
if [[ ${#seqs[@]} -gt 0 && ${SKIP_STRONG:-0} != 1 ]]; then
  echo "== benchmark: strong PyTorch stack"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$carry"/wheels/*.whl \
    > /dev/null 2>&1
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "${STRONG_TIMEOUT:-300}" python3 \
    "$carry/strong_stack.py" --lora-dropout 0.05 --steps "${BENCH_STEPS:-6}" ${seqs[*]} 2>&1 |
    grep -v -i warn | tee "$out/bench_strong.jsonl"
fi
echo "== benchmark: CUDA graphs against kernel-by-kernel launches (dense Gemma-3 4B, LoRA)"
for T in 1024 4096; do
  [[ -f $carry/gemma3-4b-$T.step && $extras == 1 ]] || continue
  for graphs in 0 1; do
    G3MOE_CUDA_GRAPHS=$graphs timeout 100 "$carry/g3moe-bench" "$carry/gemma3-4b-$T.step" 12 2>&1 |
      sed "s/^{/{\"graphs\": $graphs, /" | tee -a "$out/bench_graphs.jsonl"
  done
done
if [[ -f $carry/g3moe-4b-8192.step && $extras == 1 ]]; then
  for gemm in ${EXPERT_GEMMS:-grouped cublas}; do
    G3MOE_EXPERT_GEMM=$gemm timeout 100 "$carry/g3moe-bench" "$carry/g3moe-4b-8192.step" 3 --profile \
      2> "$out/profile_8192_$gemm.log" > /dev/null
    echo "-- profile, expert products: $gemm"
    head -20 "$out/profile_8192_$gemm.log"
  done
fi
[[ ${#seqs[@]} -eq 0 ]] && exit 0
# SKIP_RECIPE=1 leaves out the recipe's PyTorch stack (for a shorter call).
if [[ ${SKIP_RECIPE:-0} != 1 ]]; then
  echo "== benchmark: the recipe's PyTorch stack"
  PYTHONUNBUFFERED=1 timeout 240 python3 "$carry/pytorch_stack.py" --seq ${torch_seqs[*]} --steps 5 \
    2>&1 | grep -v Warning | tee "$out/bench_pytorch.jsonl"
fi
echo "== summary (for bench/RESULTS.md)"
python3 "$here/bench/summarize.py" "$out" | tee "$out/summary.md"
