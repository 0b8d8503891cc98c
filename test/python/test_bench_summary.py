"""bench/summarize.py, the table bench/run_gpu.sh prints last: rows per length
from the benchmark's JSON lines (the faster way of running the expert
products, the recipe's LoRA dropout with dropout 0 beside), the strong and
the recipe's stacks with out-of-memory baselines and both ratios, the
grouped against the per-expert cuBLAS expert products (a grouped micro-step
that was not captured as a graph named with its reason), and the attention
comparison; lines that are not JSON (warnings) are skipped."""
import subprocess
import sys

from conftest import SOURCE_DIR


def summarize(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    proc = subprocess.run([sys.executable, str(SOURCE_DIR / "bench" / "summarize.py"),
                           str(tmp_path)], capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def test_rows_ratios_and_attention(tmp_path):
    lines = summarize(tmp_path, {
        "bench_g3moe.jsonl":
            '{"seq": 8192, "tok_s": 15000.0, "mfu": 0.375, "gpu_gib": 59.3, "lora_dropout": 0.05, '
            '"expert_gemm": "cublas", "micro_step_runs_as": "kernels: why"}\n'
            '{"seq": 8192, "tok_s": 12000.0, "mfu": 0.3, "gpu_gib": 59.3, "lora_dropout": 0.05, '
            '"expert_gemm": "grouped", "micro_step_runs_as": "graph"}\n'
            '{"seq": 8192, "tok_s": 16000.0, "mfu": 0.4, "gpu_gib": 58.0, "lora_dropout": 0.0, '
            '"expert_gemm": "grouped"}\n'
            '{"seq": 32768, "tok_s": 10000, "mfu": 0.3, "gpu_gib": 70.5, "lora_dropout": 0.05, '
            '"expert_gemm": "cublas"}\n'
            '{"seq": 32768, "tok_s": 11000.4, "mfu": 0.3, "gpu_gib": 70.5, "lora_dropout": 0.05, '
            '"expert_gemm": "grouped"}\n',
        "bench_strong.jsonl":
            '{"card": "NVIDIA H100 80GB HBM3", "stack": "strong"}\n'
            '{"seq": 8192, "tok_s": 10000, "mfu": 0.25, "peak_gib": 68.0}\n',
        "bench_pytorch.jsonl":
            'UserWarning: something\n'
            '{"card": "NVIDIA H100 80GB HBM3", "params": 1}\n'
            '{"seq": 8192, "tok_s": 5000, "mfu": 0.1, "peak_gib": 41.0}\n'
            '{"seq": 32768, "oom": true}\n',
        "bench_attention.jsonl":
            '{"impl": "cudnn", "seq": 8192, "window": 0, "fwd_ms": 0.5, "bwd_ms": 1.7}\n'
            '{"impl": "cudnn", "seq": 8192, "window": 1024, "fwd_ms": 0.2, "bwd_ms": 0.7}\n'
            '{"impl": "torch-cudnn", "seq": 8192, "window": 0, "fwd_ms": 0.5, "bwd_ms": 1.5}\n',
    })
    assert lines[0].startswith("card: NVIDIA H100 80GB HBM3; LoRA r 16")
    assert ("| 8192 | 15,000 | 37.5 % | 59.3 GiB | cublas | 10,000 | 25.0 % | 68.0 GiB "
            "| 5,000 | 10.0 % | 41.0 GiB | 1.50× | 3.00× | 16,000 (40.0 %, 58.0 GiB) |" in lines)
    assert ("| 32768 | 11,000 | 30.0 % | 70.5 GiB | grouped | — | — | — | out of memory | — | — "
            "| — | — | — |" in lines)
    assert "| 8192 | 12,000 | graph | 15,000 | kernels | 0.80× |" in lines
    assert not any(line.startswith("note:") for line in lines)
    assert "| cudnn | 8192 | 2.200 | 2.000 | 1.10× |" in lines
    # The sliding-window line has no PyTorch counterpart and is not compared.
    assert sum(line.startswith("| cudnn |") for line in lines) == 1


def test_missing_baseline_leaves_dashes(tmp_path):
    lines = summarize(tmp_path, {
        "bench_g3moe.jsonl": '{"seq": 4096, "tok_s": 14000, "mfu": 0.35, "gpu_gib": 37.7}\n',
    })
    assert lines[0].startswith("card: ?")
    assert ("| 4096 | 14,000 | 35.0 % | 37.7 GiB | cublas | — | — | — | — | — | — | — | — | — |"
            in lines)
    assert not any(line.startswith("| attention") for line in lines)


def test_a_grouped_step_that_was_not_captured_is_named(tmp_path):
    lines = summarize(tmp_path, {
        "bench_g3moe.jsonl":
            '{"seq": 262144, "tok_s": 7670, "mfu": 0.31, "gpu_gib": 75.7, "lora_dropout": 0.05, '
            '"expert_gemm": "grouped", "micro_step_runs_as": "kernels: moe_dispatch: capturing"}\n',
    })
    assert ("note: at 262144 tokens the grouped micro-step ran as kernels: moe_dispatch: capturing"
            in lines)


def test_fp8_rows_have_a_table_of_their_own(tmp_path):
    lines = summarize(tmp_path, {
        "bench_g3moe.jsonl":
            '{"seq": 8192, "tok_s": 16000, "mfu": 0.4, "gpu_gib": 60.1, "lora_dropout": 0.05, '
            '"expert_gemm": "grouped", "micro_step_runs_as": "graph"}\n'
            '{"seq": 8192, "tok_s": 20000, "mfu": 0.5, "gpu_gib": 60.0, "lora_dropout": 0.05, '
            '"expert_gemm": "grouped", "micro_step_runs_as": "graph", "fp8_base": true}\n'
            '{"seq": 8192, "tok_s": 17600, "mfu": 0.44, "gpu_gib": 60.0, "lora_dropout": 0.05, '
            '"expert_gemm": "cublas", "micro_step_runs_as": "kernels: why", "fp8_base": true}\n',
    })
    # The bf16 row stays the g3moe row, though the fp8 ones are faster.
    assert ("| 8192 | 16,000 | 40.0 % | 60.1 GiB | grouped | — | — | — | — | — | — | — | — | — |"
            in lines)
    assert ("| 8192 | per-expert cuBLASLt | 17,600 | 44.0 % | 60.0 GiB | kernels | 16,000 | 1.10× |"
            in lines)
    assert "| 8192 | grouped | 20,000 | 50.0 % | 60.0 GiB | graph | 16,000 | 1.25× |" in lines
