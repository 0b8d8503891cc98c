"""g3moe against the PyTorch G3MoE of test/reference (written from
G3MOE_SPEC.md): full fine-tuning of a tiny G3MoE with distinct experts, the
loss and the gradient of every parameter (routers and experts included), for
SparseMixer (training mode, jitter off) and softmax top-k routing."""
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import hf_tiny
from conftest import SOURCE_DIR

sys.path.insert(0, str(SOURCE_DIR / "test" / "reference"))
import g3moe_reference  # noqa: E402

SEQ = 12
LENGTHS = (12, 9, 12, 5)


def make_checkpoint(tmp_path, g3moe_compile, g3moe_run, router):
    """A G3MoE checkpoint (4 experts, top-2, layers 1-2 MoE) with experts made
    different and routers whose logits are far apart, so that SparseMixer
    never has two candidates and routing does not depend on its sampling."""
    config = hf_tiny.text_config(num_hidden_layers=3)
    dense = hf_tiny.save(hf_tiny.causal_lm(config, seed=5), tmp_path / "dense")
    step = tmp_path / "moe.step"
    g3moe_compile(dense / "config.json", "--quiet", "--fp32", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), "--set", "test_size=0",
                  "--set", "n_routed_experts=4", "--set", "num_experts_per_tok=2",
                  "--set", "first_k_dense_replace=1", "--set", f"router_type={router}",
                  "--set", "input_jitter_noise=0", "--set", "finetuning=full", "-o", step)
    ckpt = tmp_path / "g3moe"
    g3moe_run(step, "--weights", dense, "--save-initial-weights", ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    rng = np.random.default_rng(7)
    for layer in (1, 2):
        for e in range(4):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                name = f"model.layers.{layer}.moe.experts.{e}.{proj}.weight"
                tensors[name] = (tensors[name] + rng.normal(0, 0.05, tensors[name].shape)
                                 ).astype(np.float32)
        # Logits ≈ c_e · (v · f) plus a little noise, with c = (3, 1, -1, -3) · k
        # shuffled per layer: the order of the experts flips with the sign of v · f.
        v = rng.normal(0, 1, 64)
        scale = np.array([3.0, 1.0, -1.0, -3.0])[rng.permutation(4)]
        tensors[f"model.layers.{layer}.moe.gate.weight"] = (
            np.outer(scale, v) * 0.05 + rng.normal(0, 0.002, (4, 64))).astype(np.float32)
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    return step, ckpt


@pytest.mark.parametrize("router", ["sparsemixer", "softmax_topk"])
def test_loss_and_gradients_match_the_reference(tmp_path, g3moe_compile, g3moe_run, router):
    step, ckpt = make_checkpoint(tmp_path, g3moe_compile, g3moe_run, router)
    rows = hf_tiny.make_rows(3, 512, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)
    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--dump-gradients", dump)
    ours = hf_tiny.read_dump(dump)
    hf_tiny.assert_inputs_match(ours, rows, SEQ)

    model = g3moe_reference.build(ckpt)
    loss, grads, _, _ = hf_tiny.reference(model, rows, SEQ)
    blocks = g3moe_reference.moe_blocks(model)
    assert len(blocks) == 2
    assert sum(b.ambiguous for b in blocks) == 0, "a token's routing would be sampled"
    # Routing is not trivial: every expert gets tokens, and first choices differ.
    for b in blocks:
        assert set(b.routing[-1].flatten().tolist()) == {0, 1, 2, 3}, b.routing[-1]
        assert len(set(b.routing[-1][:, 0].tolist())) > 1, b.routing[-1]
    assert float(ours["loss"][0]) == pytest.approx(loss, rel=1e-5)
    hf_tiny.assert_grads_close(ours, grads, rel=2e-3, rename=g3moe_reference.rename)
    # SparseMixer with one candidate per stage has P one-hot at the chosen
    # expert, so its router gradient γ·w·(δ − P) is exactly zero (§3.5);
    # softmax top-k's is not.
    router_grad = grads["model.layers.1.mlp.moe.gate.weight"].abs().max().item()
    assert (router_grad == 0) == (router == "sparsemixer"), router_grad
