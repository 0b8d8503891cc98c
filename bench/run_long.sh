#!/usr/bin/env bash
# One device call: g3moe at long context against the strong PyTorch stack
# with every layer checkpointed, the lengths of issue 16. The steps come
# prebuilt in devcarry/long.tar.gz (bench/prepare_long.sh makes them), with the
# binaries of bench/prepare_gpu.sh and the strong stack and its wheels.
# Logs and the JSON lines go to $OUT.
#   bash bench/run_long.sh [strong-stack lengths...]
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
carry=$here/devcarry
out=${OUT:-/tmp/g3moe-out}
mkdir -p "$out"
[[ -f $carry/bin.tar.gz ]] && tar -C "$carry" -xzf "$carry/bin.tar.gz"
mkdir -p "$carry/long" && tar -C "$carry/long" -xzf "$carry/long.tar.gz"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# LONG_STEPS="g3moe-4b-131072-60 preset-120k" narrows the steps timed (file
# names without .step); SKIP_STRONG=1 leaves out the strong stack, so that
# the lengths can be split over calls.
echo "== g3moe (one line per step file: tokens/s, MFU, GPU memory)"
for step in "$carry"/long/*.step; do
  name=$(basename "$step" .step)
  [[ -z ${LONG_STEPS:-} || " $LONG_STEPS " == *" $name "* ]] || continue
  echo "-- $name"
  # A micro-step that could not be captured ran kernel by kernel: its
  # tokens/s are not the graph's, and a warning says so.
  timeout "${G3MOE_TIMEOUT:-200}" "$carry/g3moe-bench" "$step" "${BENCH_STEPS:-4}" 2>&1 |
    tail -2 | sed "s/^{/{\"step\": \"$name\", /" | tee -a "$out/bench_long.jsonl" /dev/stderr |
    grep -o '"micro_step_runs_as":"kernels[^"]*"' | sed "s/^/warning: $name: /"
done
# PRESET_RUN=1: g3moe-run trains the 120K preset's step on the GPU for two
# optimizer steps (one micro-batch each) on long documents packed into
# 120,000-token rows, and evaluates on the held-out third.
if [[ ${PRESET_RUN:-0} == 1 && -f $carry/long/preset-120k.step ]]; then
  echo "== g3moe-run: the 120K preset, packed long documents, 2 steps and an eval"
  python3 - > /tmp/long-docs.jsonl <<'PY'
import json, random
random.seed(0)
for d in range(45):  # 45 documents of 6,000-10,000 tokens: about 3.6 rows of 120,000
    n = random.randint(6000, 10000)
    print(json.dumps({"input_ids": [random.randrange(3, 262000) for _ in range(n)]}))
PY
  rm -rf /tmp/preset-run
  timeout "${PRESET_TIMEOUT:-240}" "$carry/g3moe-run" "$carry/long/preset-120k.step" --device cuda \
    --data /tmp/long-docs.jsonl --data-format tokenized --packing --test-size 0.25 \
    --gradient-accumulation-steps 1 --max-steps 2 --eval-steps 0 --save-steps 0 \
    --output-dir /tmp/preset-run --no-progress-bar 2>&1 | grep -v warning |
    tee "$out/preset_run.log" | tail -12
fi
[[ ${SKIP_STRONG:-0} == 1 ]] && exit 0

echo "== strong stack, every layer checkpointed"
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$carry"/wheels/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout "${STRONG_TIMEOUT:-300}" python3 "$carry/strong_stack.py" \
  --ckpt all --lora-dropout 0.05 --steps "${BENCH_STEPS:-4}" "${@:-65536 131072}" 2>&1 |
  grep -v -i warn | tee -a "$out/strong_long.jsonl"
