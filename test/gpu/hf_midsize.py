"""A mid-size random Gemma-3 checkpoint written by transformers, trained with
LoRA by g3moe-run on the GPU and compared with transformers + PEFT there.

The model has the 4B's attention geometry (head_dim 256, 8 query / 4 kv heads,
sliding layers with a window shorter than the sequence and a global layer), so
attention runs on cuDNN, and one row of the micro-batch is padded.

    python3 hf_midsize.py prepare DIR          # here: config.json and data.jsonl
    python3 hf_midsize.py check DIR G3MOE_RUN  # on the GPU machine

`check` writes the checkpoint with save_pretrained; for a bf16 and an fp32
LoRA step (LoRA on all seven projections, r 16, no dropout, so that both
sides see the same function), g3moe-run --device cuda takes
one optimizer step so that LoRA B is non-zero and dumps its loss and LoRA
gradients at that checkpoint, and transformers + PEFT compute the same from
the checkpoint's adapter. The bf16 step passes when its loss is within 1 % of
transformers' fp32 loss and its LoRA gradients, all together, are no further
from transformers' fp32 ones than 3x the distance of transformers' own bf16
run (plus 1 %): bf16 alone moves LoRA gradients of a random model a lot. The
fp32 step must match transformers in fp32: loss within 1e-4, gradients within
1e-3 relative.

    python3 hf_midsize.py quality DIR G3MOE_RUN  # fp8_base against bf16 and fp32

`quality` measures what fp8_base (midsize-fp8.step: e4m3 frozen products)
costs: for the bf16, fp32 and fp8 steps, the loss and LoRA gradients after
one step against transformers in fp32, as above, and the losses of 50
optimizer steps on the same data; it prints them as one JSON line and
asserts nothing (bench/RESULTS.md records the numbers).
"""
import json
import os
import pathlib
import subprocess
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
import hf_tiny  # noqa: E402

SEQ = 1024
LENGTHS = (1024, 700)
# cpu: a dry run of the whole check on the build machine (slow).
DEVICE = os.environ.get("G3MOE_MIDSIZE_DEVICE", "cuda")


def config():
    return hf_tiny.text_config(
        vocab_size=16384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=256, max_position_embeddings=4096,
        layer_types=["sliding_attention"] * 5 + ["full_attention"])


def prepare(out):
    out.mkdir(parents=True, exist_ok=True)
    config().save_pretrained(str(out))
    hf_tiny.write_rows(out / "data.jsonl", hf_tiny.make_rows(5, 16384, SEQ, LENGTHS))


def peft_loss_and_grads(base_dir, adapter_dir, rows, dtype):
    from peft import PeftModel
    from transformers import Gemma3ForCausalLM

    base = Gemma3ForCausalLM.from_pretrained(str(base_dir), dtype=dtype,
                                             attn_implementation="eager").to(DEVICE)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    ids, mask, labels = hf_tiny.batch(rows, SEQ)
    num_items = hf_tiny.shifted_count(labels)
    logits = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits
    loss = hf_tiny.loss_of(logits, labels.to(DEVICE), num_items)
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = name.removeprefix("base_model.model.").replace(".default.weight", ".weight")
            grads[key] = p.grad.detach().float().cpu()
    return loss.item(), grads


def relative(a, b):
    """||a - b|| / ||b|| over the tensors b has."""
    err = sum(float((a[k] - b[k]).norm() ** 2) for k in b)
    norm = sum(float(b[k].norm() ** 2) for k in b)
    return (err / norm) ** 0.5


WORK = pathlib.Path("/tmp/g3moe-midsize")


def base_checkpoint():
    """The random checkpoint, written by transformers, and the rows of data.jsonl."""
    subprocess.run(["rm", "-rf", str(WORK)], check=True)
    cfg = config()
    # Weights of a realistic scale (hf_tiny's 0.08 saturates the softmax of
    # a 1024-wide model).
    from transformers import Gemma3ForCausalLM
    torch.manual_seed(11)
    model = hf_tiny.randomize(Gemma3ForCausalLM(cfg).float(), 11, std=0.02)
    return hf_tiny.save(model, WORK / "base"), hf_tiny.make_rows(5, cfg.vocab_size, SEQ, LENGTHS)


def runner(root, g3moe_run, base, step):
    """g3moe-run on `step` with the checkpoint and data, extra arguments appended."""
    return lambda *a: subprocess.run(
        [g3moe_run, str(root / step), "--device", DEVICE, "--weights", str(base), "--data",
         str(root / "data.jsonl"), "--no-progress-bar", *map(str, a)], check=True,
        capture_output=True, text=True)


def g3moe_grads(root, g3moe_run, base, step):
    """One LoRA training step, then loss and LoRA gradients at its checkpoint."""
    run = runner(root, g3moe_run, base, step)
    out = WORK / step
    run("--max-steps", 1, "--save-steps", 1, "--learning-rate", "1e-3", "--output-dir", out)
    run("--resume", out / "checkpoint-1", "--dump-gradients", out / "grads.safetensors")
    dump = hf_tiny.read_dump(out / "grads.safetensors")
    grads = {k[len("grad/"):]: torch.from_numpy(v) for k, v in dump.items()
             if k.startswith("grad/")}
    return float(dump["loss"][0]), grads, out / "checkpoint-1"


def check(root, g3moe_run):
    base, rows = base_checkpoint()
    g3moe = lambda step: g3moe_grads(root, g3moe_run, base, step)

    result = {}
    # The bf16 step (attention on cuDNN) is as close to transformers in fp32
    # as transformers in bf16 is.
    loss, mine, adapter = g3moe("midsize.step")
    loss32, grads32 = peft_loss_and_grads(base, adapter, rows, torch.float32)
    loss16, grads16 = peft_loss_and_grads(base, adapter, rows, torch.bfloat16)
    assert set(mine) == set(grads32), sorted(set(mine) ^ set(grads32))
    result["bf16"] = {"lora_grads": len(mine), "loss_g3moe": loss, "loss_hf_fp32": loss32,
                      "loss_hf_bf16": loss16, "grad_err_g3moe": relative(mine, grads32),
                      "grad_err_hf_bf16": relative(grads16, grads32)}
    # The fp32 step (own attention kernels) is transformers in fp32.
    loss, mine, adapter = g3moe("midsize-fp32.step")
    loss32, grads32 = peft_loss_and_grads(base, adapter, rows, torch.float32)
    assert set(mine) == set(grads32), sorted(set(mine) ^ set(grads32))
    result["fp32"] = {"loss_g3moe": loss, "loss_hf_fp32": loss32,
                      "grad_err_g3moe": relative(mine, grads32),
                      "worst_tensor_err": max(float((mine[k] - g).norm() / g.norm())
                                              for k, g in grads32.items())}
    print(json.dumps(result))
    b, f = result["bf16"], result["fp32"]
    assert abs(b["loss_g3moe"] - b["loss_hf_fp32"]) <= 1e-2 * abs(b["loss_hf_fp32"]), result
    assert b["grad_err_g3moe"] <= 3 * b["grad_err_hf_bf16"] + 1e-2, result
    assert abs(f["loss_g3moe"] - f["loss_hf_fp32"]) <= 1e-4 * abs(f["loss_hf_fp32"]), result
    assert f["grad_err_g3moe"] <= 1e-3, result


def quality(root, g3moe_run, steps=50):
    base, rows = base_checkpoint()
    result = {}
    for name, step in (("bf16", "midsize.step"), ("fp32", "midsize-fp32.step"),
                       ("fp8", "midsize-fp8.step")):
        loss, mine, adapter = g3moe_grads(root, g3moe_run, base, step)
        loss32, grads32 = peft_loss_and_grads(base, adapter, rows, torch.float32)
        out = WORK / ("train-" + name)
        runner(root, g3moe_run, base, step)("--max-steps", steps, "--learning-rate", "1e-4",
                                            "--logging-steps", 1, "--output-dir", out)
        losses = [json.loads(line)["loss"] for line in
                  (out / "metrics.jsonl").read_text().splitlines() if "grad_norm" in line]
        result[name] = {"loss_g3moe": loss, "loss_hf_fp32": loss32,
                        "grad_err_vs_hf_fp32": relative(mine, grads32),
                        "train_losses": losses[:1] + losses[9::10],
                        "last10_mean": sum(losses[-10:]) / len(losses[-10:])}
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(pathlib.Path(sys.argv[2]))
    elif sys.argv[1] == "quality":
        quality(pathlib.Path(sys.argv[2]), sys.argv[3])
    else:
        check(pathlib.Path(sys.argv[2]), sys.argv[3])
