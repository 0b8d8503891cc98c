#!/usr/bin/env python3
"""The table bench/run_gpu.sh prints last: g3moe against the PyTorch stack per
length (tokens/s, MFU, GPU memory, ratio) and the attention kernels against
PyTorch's cuDNN attention (forward + backward time ratio), from the JSON lines
the run wrote into its output folder. Markdown, ready for bench/RESULTS.md.

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


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: summarize.py OUT_DIR")
    out = Path(sys.argv[1])
    rows = [r for r in json_lines(out / "bench_g3moe.jsonl") if "seq" in r]
    by_mode = {}
    for r in rows:
        by_mode.setdefault(r.get("expert_gemm", "cublas"), {})[r["seq"]] = r
    # Per length, the faster way of running the expert products.
    g3moe = {}
    for runs in by_mode.values():
        for seq, r in runs.items():
            if seq not in g3moe or r["tok_s"] > g3moe[seq]["tok_s"]:
                g3moe[seq] = r
    torch = {r["seq"]: r for r in json_lines(out / "bench_pytorch.jsonl") if "seq" in r}
    card = next((r["card"] for r in json_lines(out / "bench_pytorch.jsonl") if "card" in r), "?")

    print(f"card: {card}")
    print("| tokens | g3moe tokens/s | g3moe MFU | g3moe GPU memory | expert products "
          "| PyTorch tokens/s | PyTorch MFU | PyTorch peak | g3moe / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seq in sorted(set(g3moe) | set(torch)):
        g, t = g3moe.get(seq), torch.get(seq)
        cells = [str(seq)]
        cells += [f"{g['tok_s']:,.0f}", f"{100 * g['mfu']:.1f} %", f"{g['gpu_gib']:.1f} GiB",
                  g.get("expert_gemm", "cublas")] if g else ["—"] * 4
        if t and t.get("oom"):
            cells += ["out of memory", "—", "—"]
        elif t:
            cells += [f"{t['tok_s']:,.0f}", f"{100 * t['mfu']:.1f} %", f"{t['peak_gib']:.1f} GiB"]
        else:
            cells += ["—"] * 3
        ok = g and t and not t.get("oom")
        cells.append(f"{g['tok_s'] / t['tok_s']:.2f}×" if ok else "—")
        print("| " + " | ".join(cells) + " |")

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
