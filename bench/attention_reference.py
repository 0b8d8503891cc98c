"""cuDNN's fused attention through PyTorch, the yardstick for attention-bench.

Times torch's scaled_dot_product_attention on its cuDNN backend for the
G3MoE-4B global-layer shape (8 query heads, head_dim 256, causal; the 4 kv
heads expanded to 8, which does the same work) and prints JSON lines in
attention-bench's format: median ms and TFLOP/s of the forward and of the
backward (FLOPs: 4 * visible pairs * heads * d, 2.5 times that backward).

    python3 bench/attention_reference.py 4096 8192
"""
import json
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, KV_HEADS, DIM = 8, 4, 256


def median_ms(fn, reps=6):
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i > 0:
            times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    for seq in [int(a) for a in sys.argv[1:]]:
        gen = torch.Generator(device="cuda").manual_seed(0)
        def rand(heads):
            return (torch.rand(1, heads, seq, DIM, device="cuda", generator=gen) * 2 - 1).bfloat16()
        q = rand(HEADS).requires_grad_()
        k = rand(KV_HEADS).repeat_interleave(HEADS // KV_HEADS, 1).requires_grad_()
        v = rand(KV_HEADS).repeat_interleave(HEADS // KV_HEADS, 1).requires_grad_()
        grad = rand(HEADS)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / 16)
            fwd = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=1 / 16))
            bwd = median_ms(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
        flops = 4 * seq * (seq + 1) / 2 * HEADS * DIM
        print(json.dumps({"impl": "torch-cudnn", "seq": seq, "window": 0,
                          "fwd_ms": round(fwd, 3), "fwd_tflops": round(flops / fwd / 1e9, 1),
                          "bwd_ms": round(bwd, 3), "bwd_tflops": round(2.5 * flops / bwd / 1e9, 1)}),
              flush=True)


if __name__ == "__main__":
    main()
