#!/usr/bin/env python3
"""The table bench/run_gpu.sh prints last: g3moe against the strong and the
recipe's PyTorch stacks per length (tokens/s, MFU, GPU memory, both ratios;
the recipe's LoRA dropout in all three, and g3moe without dropout beside),
the two ways of running the expert products (and why a grouped micro-step
was not captured as a CUDA graph, where it was not), fp8_base against bf16,
and the attention kernels
against PyTorch's cuDNN attention (forward + backward time ratio), from the
JSON lines the run wrote into its output folder. Markdown, ready for
bench/RESULTS.md.

    summarize.py OUT_DIR
"""

import json
import sys
from pathlib import Path


def json_lines(path):
    """The JSON objects of a file's lines; other lines (warnings) are skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def fastest(rows):
    """Per length, the faster of the runs (the two ways of running the
    expert products)."""
    best = {}
    for r in rows:
        if r["seq"] not in best or r["tok_s"] > best[r["seq"]]["tok_s"]:
            best[r["seq"]] = r
    return best


def stack_cells(r):
    """tokens/s, MFU and peak memory of a PyTorch stack's row."""
    if not r:
        return ["—"] * 3
    if r.get("oom"):
        return ["out of memory", "—", "—"]
    if "tok_s" not in r:
        return ["failed", "—", "—"]
    return [f"{r['tok_s']:,.0f}", f"{100 * r['mfu']:.1f} %", f"{r['peak_gib']:.1f} GiB"]


def ratio(g, t):
    ok = g and t and "tok_s" in t
    return f"{g['tok_s'] / t['tok_s']:.2f}×" if ok else "—"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py OUT_DIR")
    out = Path(sys.argv[1])
    every = [r for r in json_lines(out / "bench_g3moe.jsonl") if "seq" in r]
    # fp8_base has a table of its own, against g3moe's bf16.
    rows = [r for r in every if not r.get("fp8_base")]
    fp8 = [r for r in every if r.get("fp8_base")]
    # The recipe's dropout (steps from before the field: dropout 0).
    recipe = [r for r in rows if r.get("lora_dropout", 0) > 0]
    nodrop = fastest([r for r in rows if r.get("lora_dropout", 0) == 0])
    by_mode = {}
    for r in recipe or rows:
        by_mode.setdefault(r.get("expert_gemm", "cublas"), {})[r["seq"]] = r
    g3moe = fastest(recipe or rows)
    torch = {r["seq"]: r for r in json_lines(out / "bench_pytorch.jsonl") if "seq" in r}
    strong = {r["seq"]: r for r in json_lines(out / "bench_strong.jsonl") if "seq" in r}
    cards = [r["card"] for f in ("bench_strong.jsonl", "bench_pytorch.jsonl")
             for r in json_lines(out / f) if "card" in r]

    print(f"card: {cards[0] if cards else '?'}; LoRA r 16 on gate/up/down, dropout "
          f"{'0.05' if recipe else '0'} in every stack unless said")
    print("| tokens | g3moe tokens/s | MFU | GPU memory | expert products "
          "| strong stack tokens/s | MFU | peak | recipe's stack tokens/s | MFU | peak "
          "| g3moe / strong | g3moe / recipe's | g3moe, dropout 0 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seq in sorted(set(g3moe) | set(torch) | set(strong)):
        g, d = g3moe.get(seq), nodrop.get(seq) if recipe else None
        cells = [str(seq)]
        cells += [f"{g['tok_s']:,.0f}", f"{100 * g['mfu']:.1f} %", f"{g['gpu_gib']:.1f} GiB",
                  g.get("expert_gemm", "cublas")] if g else ["—"] * 4
        cells += stack_cells(strong.get(seq)) + stack_cells(torch.get(seq))
        cells += [ratio(g, strong.get(seq)), ratio(g, torch.get(seq))]
        cells.append(f"{d['tok_s']:,.0f} ({100 * d['mfu']:.1f} %, {d['gpu_gib']:.1f} GiB)"
                     if d else "—")
        print("| " + " | ".join(cells) + " |")

    # A grouped micro-step is captured as a CUDA graph; one that could not be
    # ran kernel by kernel, and its tokens/s are not the graph's: say why.
    for r in sorted(rows, key=lambda r: r["seq"]):
        runs = r.get("micro_step_runs_as", "graph")
        if r.get("expert_gemm") == "grouped" and runs != "graph":
            print(f"\nnote: at {r['seq']} tokens the grouped micro-step ran as {runs}")

    # The expert products: one grouped kernel (captured with the micro-step)
    # against one cuBLAS product per expert (the micro-step then waits for
    # the routing and runs kernel by kernel).
    grouped, cublas = by_mode.get("grouped", {}), by_mode.get("cublas", {})
    both = sorted(set(grouped) & set(cublas))
    if both:
        print()
        print("| tokens | grouped tokens/s | runs as | per-expert cuBLAS tokens/s | runs as "
              "| grouped / cuBLAS |")
        print("|---|---|---|---|---|---|")
        for seq in both:
            g, c = grouped[seq], cublas[seq]
            runs = [r.get("micro_step_runs_as", "?").split(":")[0] for r in (g, c)]
            print(f"| {seq} | {g['tok_s']:,.0f} | {runs[0]} | {c['tok_s']:,.0f} | {runs[1]} "
                  f"| {g['tok_s'] / c['tok_s']:.2f}× |")

    # fp8_base against bf16, both with the recipe's dropout: the expert
    # products on the grouped e4m3 kernel and per expert on cuBLASLt.
    if fp8:
        print()
        print("| tokens | fp8 expert products | fp8_base tokens/s | MFU | GPU memory | runs as "
              "| bf16 tokens/s | fp8 / bf16 |")
        print("|---|---|---|---|---|---|---|---|")
        for r in sorted(fp8, key=lambda r: (r["seq"], r.get("expert_gemm", ""))):
            b = g3moe.get(r["seq"])
            mode = "grouped" if r.get("expert_gemm") == "grouped" else "per-expert cuBLASLt"
            runs = r.get("micro_step_runs_as", "?").split(":")[0]
            bf16 = [f"{b['tok_s']:,.0f}", f"{r['tok_s'] / b['tok_s']:.2f}×"] if b else ["—"] * 2
            print(f"| {r['seq']} | {mode} | {r['tok_s']:,.0f} | {100 * r['mfu']:.1f} % "
                  f"| {r['gpu_gib']:.1f} GiB | {runs} | " + " | ".join(bf16) + " |")

    # Attention: g3moe's implementations against PyTorch's cuDNN, global layers.
    attention = json_lines(out / "bench_attention.jsonl")
    reference = {r["seq"]: r for r in attention
                 if r.get("impl") == "torch-cudnn" and r.get("window", 0) == 0}
    ours = [r for r in attention if r.get("impl") != "torch-cudnn" and r.get("window", 0) == 0]
    if ours and reference:
        print()
        print("| attention | tokens | g3moe fwd + bwd ms | PyTorch fwd + bwd ms | ratio |")
        print("|---|---|---|---|---|")
        for r in ours:
            ref = reference.get(r["seq"])
            if not ref:
                continue
            mine, theirs = r["fwd_ms"] + r["bwd_ms"], ref["fwd_ms"] + ref["bwd_ms"]
            print(f"| {r['impl']} | {r['seq']} | {mine:.3f} | {theirs:.3f} | "
                  f"{mine / theirs:.2f}× |")


if __name__ == "__main__":
    main()
