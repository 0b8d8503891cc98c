"""Upcycling a dense Gemma-3 checkpoint (written by transformers) into a G3MoE
step (G3MOE_SPEC.md §3.8): every expert is the layer's MLP, so at step 0 the
MoE model computes the dense model's function whatever the routing (§3.6; the
post-FFN RMSNorm removes the per-token scale w1 + w2, up to its eps)."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import hf_tiny

SEQ = 12
LENGTHS = (12, 9, 12, 5)
MOE = ("--set", "n_routed_experts=4", "--set", "num_experts_per_tok=2",
       "--set", "first_k_dense_replace=1", "--set", "router_type=sparsemixer")


@pytest.fixture
def dense(tmp_path):
    config = hf_tiny.text_config(num_hidden_layers=3)
    model = hf_tiny.causal_lm(config, seed=11)
    ckpt = hf_tiny.save(model, tmp_path / "dense")
    rows = hf_tiny.make_rows(12, config.vocab_size, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    return model, ckpt, rows, data


def compile_moe(g3moe_compile, config, step, *extra):
    g3moe_compile(config, "--quiet", "--fp32", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), "--set", "test_size=0", *MOE, *extra,
                  "-o", step)
    return step


def test_upcycled_training_loss_is_the_dense_loss(tmp_path, g3moe_compile, g3moe_run, dense):
    """forward_backward of the LoRA step (training mode: SparseMixer sampling
    and coins on; input jitter off so that every expert sees the same input)."""
    model, ckpt, rows, data = dense
    step = compile_moe(g3moe_compile, ckpt / "config.json", tmp_path / "moe.step",
                       "--set", "input_jitter_noise=0")
    dense_loss, _, _, _ = hf_tiny.reference(model, rows, SEQ, grads=False)
    losses = []
    for seed in ("1", "2"):   # other routers, other routing: the same function
        dump = tmp_path / f"g{seed}.safetensors"
        out = g3moe_run(step, "--seed", seed, "--weights", ckpt, "--data", data,
                        "--dump-gradients", dump)
        assert "upcycled the dense MLPs of 3 layers" in out.stdout
        assert "router tensors are not in the checkpoint" in out.stdout
        losses.append(float(hf_tiny.read_dump(dump)["loss"][0]))
    assert losses == pytest.approx([dense_loss] * 2, rel=1e-4)


def test_upcycled_eval_loss_is_the_dense_loss(tmp_path, g3moe_compile, g3moe_run, dense):
    """eval_forward (deterministic routing, no jitter) with the default
    input_jitter_noise compiled in."""
    model, ckpt, rows, data = dense
    step = compile_moe(g3moe_compile, ckpt / "config.json", tmp_path / "moe.step")
    metrics = tmp_path / "eval.json"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--eval-only", "--metrics-file", metrics)
    ours = json.loads(metrics.read_text())["eval_loss"]
    ids, mask, labels = hf_tiny.batch(rows, SEQ)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    shifted = int((labels[:, 1:] != hf_tiny.IGNORE).sum())
    theirs = hf_tiny.loss_of(logits, labels, shifted).item()
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_experts_are_copies_and_matter(tmp_path, g3moe_compile, g3moe_run, dense):
    """The exported upcycled model holds the MLP in every expert and a random
    router; changing one expert (loaded back as a G3MoE checkpoint) changes
    the loss, so the invariance above is not the experts being bypassed."""
    model, ckpt, rows, data = dense
    step = compile_moe(g3moe_compile, ckpt / "config.json", tmp_path / "moe.step",
                       "--set", "input_jitter_noise=0")
    export = tmp_path / "g3moe"
    g3moe_run(step, "--weights", ckpt, "--save-initial-weights", export)
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "g3moe_text" and config["n_routed_experts"] == 4
    assert config["first_k_dense_replace"] == 1 and config["router_type"] == "sparsemixer"
    tensors = load_file(str(export / "model.safetensors"))
    mlp = load_file(str(ckpt / "model.safetensors"))
    np.testing.assert_array_equal(tensors["model.layers.0.moe.gate_proj.weight"],
                                  mlp["model.layers.0.mlp.gate_proj.weight"])
    for layer in (1, 2):
        for e in range(4):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                np.testing.assert_array_equal(
                    tensors[f"model.layers.{layer}.moe.experts.{e}.{proj}.weight"],
                    mlp[f"model.layers.{layer}.mlp.{proj}.weight"])
        router = tensors[f"model.layers.{layer}.moe.gate.weight"]
        assert router.shape == (4, 64) and 0.01 < router.std() < 0.03
    assert not any(".mlp." in name for name in tensors)

    dense_loss, _, _, _ = hf_tiny.reference(model, rows, SEQ, grads=False)
    # Loaded back as a G3MoE checkpoint (routers included): still the dense loss.
    g3moe_run(step, "--weights", export, "--data", data, "--dump-gradients",
              tmp_path / "same.safetensors")
    same = float(hf_tiny.read_dump(tmp_path / "same.safetensors")["loss"][0])
    assert same == pytest.approx(dense_loss, rel=1e-4)
    # Experts made different (inside the GELU: scaling up_proj alone would
    # only scale the output, which the norm removes): another function.
    rng = np.random.default_rng(0)
    for layer in (1, 2):
        for e in range(1, 4):
            name = f"model.layers.{layer}.moe.experts.{e}.gate_proj.weight"
            tensors[name] = tensors[name] + rng.normal(0, 0.1, tensors[name].shape).astype(
                np.float32)
    save_file(tensors, str(export / "model.safetensors"), metadata={"format": "pt"})
    g3moe_run(step, "--weights", export, "--data", data, "--dump-gradients",
              tmp_path / "changed.safetensors")
    changed = float(hf_tiny.read_dump(tmp_path / "changed.safetensors")["loss"][0])
    assert abs(changed - dense_loss) > 1e-3 * dense_loss


def test_shared_experts_wider_than_the_mlp_are_refused(tmp_path, g3moe_compile, g3moe_run,
                                                       dense):
    _, ckpt, _, data = dense
    step = compile_moe(g3moe_compile, ckpt / "config.json", tmp_path / "moe.step",
                       "--set", "n_shared_experts=2")
    proc = g3moe_run(step, "--weights", ckpt, "--save-initial-weights", tmp_path / "x",
                     check=False)
    assert proc.returncode == 1
    assert "shared experts wider than the MLP cannot be upcycled" in proc.stderr
    assert "model.layers.1.moe.shared_experts.gate_proj.weight" in proc.stderr
    assert not (tmp_path / "x").exists()
