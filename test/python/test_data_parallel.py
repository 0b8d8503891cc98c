"""Data parallel on the CPU (Gloo): N g3moe-run processes launched as torchrun
launches them (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; through torchrun
itself, and through g3moe-run --nproc-per-node) train, per
optimizer step, what one process trains with N times the gradient
accumulation: the same losses and gradient norms, and the same trained
parameters, to fp32 rounding, whether each process holds the whole optimizer
state or its share of the Adam moments (ZeRO stage 1), of the gradients
(stage 2) and of the trained parameters (stage 3). Micro-batches of one row, so that each rank's
micro-batch is exactly one of the single process's (a MoE's balancing loss is
a statistic of its micro-batch). A rank that never arrives makes the others
fail with an error, not hang."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import BIN, BUILD_DIR, EXAMPLES

TRAIN = ["--data", EXAMPLES / "data" / "chat.jsonl", "--images", "mask", "--no-progress-bar",
         "--max-steps", "3", "--test-size", "0", "--logging-steps", "1", "--save-steps", "0"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, world, timeout=300, ranks=None):
    """Runs `world` g3moe-run processes as torchrun would (only `ranks` of
    them when given) and returns their CompletedProcess-like results."""
    port = free_port()
    procs = []
    for rank in range(world) if ranks is None else ranks:
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), G3MOE_DIST_TIMEOUT_S="20")
        procs.append(subprocess.Popen([str(BIN / "g3moe-run"), *map(str, args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def steps(folder):
    """(loss, grad_norm) of each logged training step in metrics.jsonl."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows if "grad_norm" in r]


def sharded_step(tmp_path, g3moe_compile, world, *settings, model="tiny-g3moe", zero=1):
    """The tiny model's step with its Adam moments (and at ZeRO stage 2 its
    gradients) divided among `world` processes."""
    step = tmp_path / f"step-{world}-zero{zero}.bin"
    g3moe_compile(EXAMPLES / model / "config.json", "--fp32", "--quiet", "--micro-batch", "1",
                  "--seq-len", "64", *settings, "--set", f"data_parallel={world}", "--set",
                  f"zero_stage={zero}", "-o", step)
    return step


@pytest.mark.parametrize("model,settings", [
    ("tiny-g3moe", ["--set", "lora_dropout=0"]),
    ("tiny-gemma3", ["--set", "finetuning=full"]),
    # Every layer made again in the backward: at ZeRO stage 3 its parameters
    # are received again with it.
    ("tiny-gemma3", ["--set", "finetuning=full", "--recompute", "layers"]),
])
@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_ranks_train_like_one_process_with_more_accumulation(tmp_path, g3moe_compile, g3moe_run,
                                                             model, settings, world, zero):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / model / "config.json", "--fp32", "--quiet", "--micro-batch", "1",
                  "--seq-len", "64", *settings, "-o", step)
    init = tmp_path / "init"
    g3moe_run(step, "--save-initial-weights", init)
    (init / "tokenizer.model").write_bytes((BUILD_DIR / "tiny-tokenizer" / "tokenizer.model")
                                           .read_bytes())
    common = [step, "--weights", init, *TRAIN]
    g3moe_run(*common, "--gradient-accumulation-steps", str(world), "--output-dir",
              tmp_path / "one")
    if zero:
        common[0] = sharded_step(tmp_path, g3moe_compile, world, *settings, model=model,
                                 zero=zero)
    results = launch([*common, "--gradient-accumulation-steps", "1", "--output-dir",
                      tmp_path / "many"], world)
    for rank, (code, stdout, stderr) in enumerate(results):
        assert code == 0, f"rank {rank}: {stderr}"
    # Rank 0 alone logs and writes.
    assert "step 3/3" in results[0][1]
    assert all(stdout == "" for _, stdout, _ in results[1:])

    one, many = steps(tmp_path / "one"), steps(tmp_path / "many")
    assert len(one) == len(many) == 3
    np.testing.assert_allclose(many, one, rtol=2e-5)
    files = [f.name for f in (tmp_path / "one").glob("*.safetensors")]
    assert files
    for name in files:
        want, got = load_file(tmp_path / "one" / name), load_file(tmp_path / "many" / name)
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_a_rank_that_never_arrives_fails_the_others(tmp_path, g3moe_compile, g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "-o", step)
    start = time.monotonic()
    [(code, _, stderr)] = launch([step, *TRAIN, "--output-dir", tmp_path / "out"], 2, ranks=[0])
    assert code == 1
    assert "g3moe-run (rank 0): error:" in stderr and "rank" in stderr.split("error:")[1]
    assert time.monotonic() - start < 90


def test_a_rank_that_dies_ends_the_others_naming_the_collective(tmp_path, g3moe_compile,
                                                                g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "-o", step)
    train = [str(a) for a in TRAIN]
    train[train.index("--max-steps") + 1] = "100000"
    args = [str(BIN / "g3moe-run"), str(step), *train,
            "--tokenizer", str(BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"),
            "--output-dir", str(tmp_path / "out")]
    port = free_port()
    procs = [subprocess.Popen(args, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2",
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    # Rank 0 logs every step: once it has, both are inside the loop.
    for line in procs[0].stdout:
        if line.startswith("step 1/"):
            break
    else:
        pytest.fail("rank 0 ended before its first step: " + procs[0].stderr.read())
    procs[1].kill()
    start = time.monotonic()
    _, stderr = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 1
    assert time.monotonic() - start < 60
    assert "all-reduce on rank 0 of 2 failed" in stderr, stderr


def test_torchrun_launches_the_ranks(tmp_path, g3moe_compile, g3moe_run):
    """torchrun --no-python, as PyTorch users launch: its agent keeps
    MASTER_PORT for its own store; the ranks rendezvous beside it."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "--set", "lora_dropout=0", "-o", step)
    common = [step, *TRAIN, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    g3moe_run(*common, "--gradient-accumulation-steps", "2", "--output-dir", tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "--no-python",
                           str(BIN / "g3moe-run"), *map(str, common),
                           "--gradient-accumulation-steps", "1", "--output-dir",
                           str(tmp_path / "many")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    np.testing.assert_allclose(steps(tmp_path / "many"), steps(tmp_path / "one"), rtol=2e-5)


def test_g3moe_run_starts_its_own_ranks(tmp_path, g3moe_compile, g3moe_run):
    """--nproc-per-node N: g3moe-run starts the N local ranks itself; a rank
    that fails ends the job with a non-zero exit naming it."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "--set", "lora_dropout=0", "-o", step)
    common = [step, *TRAIN, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    g3moe_run(*common, "--gradient-accumulation-steps", "2", "--output-dir", tmp_path / "one")
    g3moe_run(*common, "--gradient-accumulation-steps", "1", "--nproc-per-node", "2",
              "--output-dir", tmp_path / "many")
    np.testing.assert_allclose(steps(tmp_path / "many"), steps(tmp_path / "one"), rtol=2e-5)
    bad = g3moe_run(step, "--data", tmp_path / "missing.jsonl", "--nproc-per-node", "2",
                    "--output-dir", tmp_path / "bad", check=False)
    assert bad.returncode == 1
    assert "of 2 failed (exit status 1)" in bad.stderr


def test_zero1_save_that_dies_leaves_the_last_checkpoint(tmp_path, g3moe_compile, g3moe_run,
                                                         monkeypatch):
    """Rank 0 dying while it writes a checkpoint of a ZeRO step (before the
    other rank has sent it its moments) ends both processes with errors, leaves
    no checkpoint-4, and the run resumes from checkpoint-2 as if nothing
    happened."""
    step = sharded_step(tmp_path, g3moe_compile, 2)
    train = [str(a) for a in TRAIN]
    train[train.index("--max-steps") + 1] = "6"
    train[train.index("--save-steps") + 1] = "2"
    common = [step, *train, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model",
              "--output-dir", tmp_path / "out"]
    monkeypatch.setenv("G3MOE_TEST_ABORT_DURING_SAVE", "4")
    results = launch(common, 2, timeout=120)
    assert all(code != 0 for code, _, _ in results), results
    assert (tmp_path / "out" / "checkpoint-2").is_dir()
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    monkeypatch.delenv("G3MOE_TEST_ABORT_DURING_SAVE")
    results = launch([*common, "--resume"], 2)
    assert all(code == 0 for code, _, _ in results), results
    whole = tmp_path / "whole"
    g3moe_run(step, *common[1:-1], whole, "--nproc-per-node", "2")
    np.testing.assert_allclose(steps(tmp_path / "out")[-2:], steps(whole)[-2:], rtol=2e-5)


def test_zero3_merged_model_is_the_one_process_merge(tmp_path, g3moe_compile, g3moe_run):
    """At ZeRO stage 3 each process holds only its own adapters; rank 0
    receives the others' to write the adapter and the merged model, which
    are those of one process with the same global batch."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "--set", "lora_dropout=0", "-o", step)
    common = [*TRAIN, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model", "--merge"]
    g3moe_run(step, *common, "--gradient-accumulation-steps", "2", "--output-dir",
              tmp_path / "one")
    sharded = sharded_step(tmp_path, g3moe_compile, 2, "--set", "lora_dropout=0", zero=3)
    results = launch([sharded, *common, "--gradient-accumulation-steps", "1", "--output-dir",
                      tmp_path / "many"], 2)
    for rank, (code, _, stderr) in enumerate(results):
        assert code == 0, f"rank {rank}: {stderr}"
    for name in ["adapter_model.safetensors", "merged/model.safetensors"]:
        want, got = load_file(tmp_path / "one" / name), load_file(tmp_path / "many" / name)
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("before,after", [
    ((2, 0), (4, 0)), ((4, 0), (1, 0)), ((2, 1), (4, 1)), ((4, 1), (1, 0)), ((2, 0), (2, 1)),
    ((2, 2), (4, 1)), ((4, 1), (2, 2)), ((2, 3), (4, 0)), ((4, 1), (2, 3))])
def test_resume_with_another_number_of_processes(tmp_path, g3moe_compile, g3moe_run, before,
                                                 after):
    """A checkpoint of N processes resumes on M with the same global batch
    (N x accumulation kept), and with the optimizer state divided among them
    (ZeRO stages 1 and 2) or not, before and after: the run continues as the
    uninterrupted one."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "-o", step)
    train = [str(a) for a in TRAIN]
    train[train.index("--max-steps") + 1] = "4"
    common = [*train, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    g3moe_run(step, *common, "--gradient-accumulation-steps", "4", "--output-dir",
              tmp_path / "whole")
    out = tmp_path / "resumed"
    base = list(common)
    base[base.index("--save-steps") + 1] = "2"

    def run(world, zero, *more):
        at = sharded_step(tmp_path, g3moe_compile, world, zero=zero) if zero else step
        g3moe_run(at, *base, "--gradient-accumulation-steps", str(4 // world), "--nproc-per-node",
                  str(world), *more, "--output-dir", out)

    run(*before, "--stop-after-steps", "2")
    run(*after, "--resume")
    np.testing.assert_allclose(steps(out), steps(tmp_path / "whole"), rtol=2e-5)
    want = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    got = load_file(out / "adapter_model.safetensors")
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("zero", [1, 2])
def test_zero_checkpoints_hold_each_process_moments_in_a_file_of_its_own(
        tmp_path, g3moe_compile, g3moe_run, zero):
    """With the moments divided among 2 processes, a checkpoint holds one
    optimizer file per process and an index naming each tensor's file; each
    file holds a part, and together they are the moments one process with 2x
    the accumulation keeps."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "-o", step)
    train = [str(a) for a in TRAIN]
    train[train.index("--max-steps") + 1] = "2"
    train[train.index("--save-steps") + 1] = "2"
    common = [*train, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    g3moe_run(step, *common, "--gradient-accumulation-steps", "2", "--output-dir", tmp_path / "one")
    g3moe_run(sharded_step(tmp_path, g3moe_compile, 2, zero=zero), *common, "--nproc-per-node",
              "2", "--output-dir", tmp_path / "two")
    want = load_file(tmp_path / "one" / "checkpoint-2" / "optimizer.safetensors")
    folder = tmp_path / "two" / "checkpoint-2"
    assert not (folder / "optimizer.safetensors").exists()
    index = json.loads((folder / "optimizer.safetensors.index.json").read_text())
    assert index["metadata"] == {"processes": 2, "zero_stage": zero}
    files = {f: load_file(folder / f) for f in set(index["weight_map"].values())}
    assert sorted(files) == ["optimizer-00000-of-00002.safetensors",
                             "optimizer-00001-of-00002.safetensors"]
    assert all(files.values())
    got = {}
    for name, file in index["weight_map"].items():
        got[name] = files[file][name]
    assert got.keys() == want.keys()
    assert sum(len(f) for f in files.values()) == len(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-7, err_msg=key)


def test_evaluation_and_moe_statistics_cover_every_rank(tmp_path, g3moe_compile, g3moe_run):
    """Each rank evaluates a share of the held-out batches and the MoE routing
    counts of every rank's micro-batches are summed: the logged evaluation
    and expert shares are those of one process."""
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "--set", "lora_dropout=0", "-o", step)
    train = [str(a) for a in TRAIN]
    train[train.index("--test-size") + 1] = "0.25"
    common = [step, *train, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    g3moe_run(*common, "--gradient-accumulation-steps", "2", "--output-dir", tmp_path / "one")
    g3moe_run(*common, "--gradient-accumulation-steps", "1", "--nproc-per-node", "2",
              "--output-dir", tmp_path / "two")

    def logged(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        evals = [(r["eval_loss"], r["eval_mean_token_accuracy"]) for r in rows if "eval_loss" in r]
        shares = [np.concatenate([np.asarray(v) for _, v in sorted(r["moe_expert_share"].items())])
                  for r in rows if "moe_expert_share" in r]
        return evals, shares

    (evals_one, shares_one), (evals_two, shares_two) = logged(tmp_path / "one"), \
        logged(tmp_path / "two")
    assert len(evals_one) == len(evals_two) == 1
    np.testing.assert_allclose(evals_two, evals_one, rtol=2e-5)
    assert len(shares_one) == len(shares_two) == 3
    np.testing.assert_allclose(shares_two, shares_one, rtol=1e-6)


def test_a_step_compiled_for_n_processes_runs_on_n(tmp_path, g3moe_compile, g3moe_run):
    step = tmp_path / "step.bin"
    g3moe_compile(EXAMPLES / "tiny-g3moe" / "config.json", "--fp32", "--quiet", "--micro-batch",
                  "1", "--seq-len", "64", "--set", "data_parallel=2", "-o", step)
    common = [step, *TRAIN, "--tokenizer", BUILD_DIR / "tiny-tokenizer" / "tokenizer.model"]
    alone = g3moe_run(*common, "--output-dir", tmp_path / "alone", check=False)
    assert alone.returncode == 1
    assert "compiled for data_parallel 2 processes, but the job has 1" in alone.stderr
    g3moe_run(*common, "--nproc-per-node", "2", "--output-dir", tmp_path / "two")
    assert len(steps(tmp_path / "two")) == 3
