"""Every LoRA gradient of g3moe's fp32 CPU step against transformers + PEFT:
lora_A and lora_B of every targeted module (q/k/v/o_proj and the MLP's
gate/up/down_proj; on a G3MoE also every expert's) on one padded micro-batch.

The adapters start random, B included (a freshly initialised B is zero, which
would leave every lora_A gradient zero): the test draws A and B, builds the
PEFT model with them, and gives g3moe the same values as the adapter file of a
g3moe checkpoint that --dump-gradients --resume loads on top of --weights.

Two models: a dense Gemma-3 that transformers itself runs, and a G3MoE (4
experts, top-2, layer 0 dense) that the PyTorch reference of test/reference
runs, whose experts are nn.Linear modules PEFT wraps one by one; its routers
are built so that every expert receives tokens and no SparseMixer routing
would be sampled, which the test asserts from the reference's routing.

The loss is divided by the count g3moe reports in the dump (inputs/num_items),
so the comparison holds whichever count g3moe's loss normalisation uses."""
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
RANK, ALPHA = 4, 8
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EXPERTS = 4


def compile_lora(g3moe_compile, config_json, step, *extra):
    g3moe_compile(config_json, "--quiet", "--fp32", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), "--set", "test_size=0",
                  "--set", f"lora_r={RANK}", "--set", f"lora_alpha={ALPHA}",
                  "--set", "lora_dropout=0", "--set", f"lora_target_modules={','.join(TARGETS)}",
                  *extra, "-o", step)
    return step


def dense_case(tmp_path, g3moe_compile, g3moe_run):
    config = hf_tiny.text_config()
    model = hf_tiny.causal_lm(config, seed=21)
    ckpt = hf_tiny.save(model, tmp_path / "dense")
    step = compile_lora(g3moe_compile, ckpt / "config.json", tmp_path / "lora.step")
    return model, ckpt, step, lambda name: name


def g3moe_case(tmp_path, g3moe_compile, g3moe_run):
    """A G3MoE checkpoint upcycled by g3moe from a transformers Gemma-3, with
    experts made different and routers whose logits for a token are far apart
    (c_e · (v · x) for c a shuffled (3, 1, -1, -3), plus a little noise): the
    order of the experts flips with the sign of v · x, so tokens reach every
    expert, and the top two never tie closely enough for SparseMixer to sample."""
    config = hf_tiny.text_config()
    dense = hf_tiny.save(hf_tiny.causal_lm(config, seed=22), tmp_path / "dense")
    moe = ("--set", f"n_routed_experts={EXPERTS}", "--set", "num_experts_per_tok=2",
           "--set", "first_k_dense_replace=1", "--set", "router_type=sparsemixer",
           "--set", "input_jitter_noise=0")
    full = tmp_path / "full.step"
    g3moe_compile(dense / "config.json", "--quiet", "--fp32", "--seq-len", str(SEQ),
                  "--micro-batch", str(len(LENGTHS)), "--set", "finetuning=full", *moe,
                  "-o", full)
    ckpt = tmp_path / "g3moe"
    g3moe_run(full, "--weights", dense, "--save-initial-weights", ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    rng = np.random.default_rng(23)
    hidden = config.hidden_size
    for layer in (1, 2):
        for e in range(EXPERTS):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                name = f"model.layers.{layer}.moe.experts.{e}.{proj}.weight"
                tensors[name] = (tensors[name] + rng.normal(0, 0.05, tensors[name].shape)
                                 ).astype(np.float32)
        v = rng.normal(0, 1, hidden)
        c = np.array([3.0, 1.0, -1.0, -3.0])[rng.permutation(EXPERTS)]
        tensors[f"model.layers.{layer}.moe.gate.weight"] = (
            np.outer(c, v) * 0.05 + rng.normal(0, 0.0005, (EXPERTS, hidden))).astype(np.float32)
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    step = compile_lora(g3moe_compile, dense / "config.json", tmp_path / "lora.step", *moe)
    return g3moe_reference.build(ckpt), ckpt, step, g3moe_reference.rename


CASES = {"dense_gemma3": dense_case, "g3moe": g3moe_case}


def g3moe_name(peft_name, rename):
    """PEFT's parameter name -> g3moe's (the HF name, as in its dumps)."""
    assert peft_name.startswith("base_model.model.")
    return rename(peft_name[len("base_model.model."):].replace(".default.", "."))


def randomize_adapters(model, seed):
    """A and B drawn at the scale of a trained adapter (B non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def shifted_loss(model, rows, num_items):
    """The summed shifted cross-entropy of the micro-batch over num_items."""
    ids, mask, labels = hf_tiny.batch(rows, SEQ)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
        ignore_index=hf_tiny.IGNORE, reduction="sum") / num_items


def loss_and_grads(model, rows, num_items):
    """shifted_loss and the gradient of every parameter that gets one, by name."""
    model.zero_grad(set_to_none=True)
    loss = shifted_loss(model, rows, num_items)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_lora_gradient_matches_peft(tmp_path, g3moe_compile, g3moe_run, case):
    from peft import LoraConfig, get_peft_model

    base, ckpt, step, rename = CASES[case](tmp_path, g3moe_compile, g3moe_run)
    rows = hf_tiny.make_rows(24, 512, SEQ, LENGTHS)
    data = hf_tiny.write_rows(tmp_path / "data.jsonl", rows)

    # A g3moe checkpoint to resume from (one step of training), whose adapter
    # file then gets the test's random adapters.
    out = tmp_path / "out"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--max-steps", "1", "--save-steps", "1",
              "--output-dir", out)
    resume = out / "checkpoint-1"
    written = load_file(str(resume / "adapter_model.safetensors"))

    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=RANK, lora_alpha=ALPHA,
                                            lora_dropout=0.0, bias="none",
                                            target_modules=list(TARGETS)))
    randomize_adapters(model, seed=25)
    adapters = {g3moe_name(n, rename): p.detach().numpy().copy()
                for n, p in model.named_parameters() if "lora_" in n}
    # PEFT wraps exactly the modules g3moe adapts (experts one by one).
    assert set("base_model.model." + n for n in adapters) == set(written)
    layers = base.config.num_hidden_layers
    expected = layers * len(TARGETS) * 2
    if case == "g3moe":
        expected += 2 * (EXPERTS - 1) * 3 * 2   # layers 1-2: E experts instead of one MLP
    assert len(adapters) == expected
    save_file({"base_model.model." + n: v for n, v in adapters.items()},
              str(resume / "adapter_model.safetensors"), metadata={"format": "pt"})

    dump = tmp_path / "grads.safetensors"
    g3moe_run(step, "--weights", ckpt, "--data", data, "--resume", resume,
              "--dump-gradients", dump)
    ours = hf_tiny.read_dump(dump)
    ids, _, labels = hf_tiny.batch(rows, SEQ)
    np.testing.assert_array_equal(ours["inputs/input_ids"], ids.numpy())
    num_items = float(ours["inputs/num_items"][0])
    # transformers' Trainer's count: the cross-entropy terms.
    assert num_items == hf_tiny.shifted_count(labels)

    model.train()   # SparseMixer's training-mode routing; dropout is 0
    loss, grads = loss_and_grads(model, rows, num_items)
    if case == "g3moe":
        # Every expert of both MoE layers receives tokens, and no token's
        # routing would have been sampled (g3moe samples; the reference can't).
        blocks = g3moe_reference.moe_blocks(base)
        assert len(blocks) == 2
        assert sum(b.ambiguous for b in blocks) == 0, "a token's routing would be sampled"
        for layer, b in zip((1, 2), blocks):
            routed = set(b.routing[-1].flatten().tolist())
            assert routed == set(range(EXPERTS)), \
                f"layer {layer}: only experts {sorted(routed)} get tokens"
    # Only the adapters train (PEFT froze the rest, as g3moe does), and
    # every one of them gets a gradient.
    assert grads and all("lora_" in n for n in grads), sorted(grads)[:4]
    assert len(grads) == len(adapters)

    # Every adapter gradient is non-zero (B random, every expert routed to),
    # so the comparison below covers each of them.
    for name, g in grads.items():
        assert g.abs().max().item() > 0, name
    assert float(ours["loss"][0]) == pytest.approx(loss, rel=1e-5)
    hf_tiny.assert_grads_close(ours, grads, rel=1e-4,
                               rename=lambda n: g3moe_name(n, rename))

    # The adapters g3moe loaded matter: without them the loss is another.
    with torch.no_grad(), model.disable_adapter():
        base_loss = shifted_loss(model, rows, num_items).item()
    assert abs(base_loss - loss) > 1e-3 * abs(loss), (base_loss, loss)
