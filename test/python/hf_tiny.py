"""Tiny random Gemma-3 checkpoints written by transformers at test time, data
files for them, and the reference loss and gradients computed by transformers,
shared by the comparison tests (test_hf_parity, test_upcycle, test_merge).

The loss is g3moe's (HF's with num_items_in_batch): the summed cross-entropy of
the shifted labels divided by the number of shifted labels != -100 of the
micro-batch (its cross-entropy terms, as transformers' Trainer counts them).
"""
import json

import numpy as np
import torch
from safetensors.numpy import load_file

IGNORE = -100


def text_config(**overrides):
    """A Gemma3TextConfig of the README's tiny size (H 64, V 512, GQA 4/2, d 16)."""
    from transformers import Gemma3TextConfig

    fields = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  query_pre_attn_scalar=16, sliding_window=4,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  max_position_embeddings=256, rms_norm_eps=1e-6, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
                  attn_implementation="eager")
    fields.update(overrides)
    return Gemma3TextConfig(**fields)


def randomize(model, seed, std=0.08):
    """Larger random weights than HF's init (and non-zero norms), so that the
    logits are far from uniform and every gradient is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if "norm" in name else std
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
        emb = model.get_input_embeddings().weight
        emb[model.config.get_text_config().pad_token_id].zero_()
    return model


def causal_lm(config, seed=0):
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).float()
    return randomize(model, seed)


def save(model, path):
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def make_rows(seed, vocab, seq_len, lengths, prompt_mask=(0, 3)):
    """Rows of random tokens (never the pad id 0) of the given lengths; the
    first `prompt_mask[1]` labels of row `prompt_mask[0]` are -100 (a masked
    prompt)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(lengths):
        assert n <= seq_len
        ids = [2] + rng.integers(3, vocab, size=n - 1).tolist()
        labels = list(ids)
        if prompt_mask and i == prompt_mask[0]:
            labels[:prompt_mask[1]] = [IGNORE] * prompt_mask[1]
        rows.append((ids, labels))
    return rows


def write_rows(path, rows):
    with open(path, "w") as f:
        for ids, labels in rows:
            f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
    return path


def batch(rows, seq_len, pad_id=0):
    """Right-padded input_ids, attention_mask and labels, as g3moe assembles them."""
    ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), seq_len), dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE, dtype=torch.long)
    for r, (i, l) in enumerate(rows):
        ids[r, :len(i)] = torch.tensor(i)
        mask[r, :len(i)] = 1
        labels[r, :len(l)] = torch.tensor(l)
    return ids, mask, labels


def loss_of(logits, labels, num_items):
    """Sum of the shifted cross-entropy over num_items (HF's ForCausalLMLoss)."""
    logits = logits[:, :-1, :].float().reshape(-1, logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE,
                                             reduction="sum") / num_items


def shifted_count(labels):
    """The cross-entropy terms of a batch: transformers' Trainer's num_items_in_batch."""
    return int((labels[..., 1:] != IGNORE).sum())


def reference(model, rows, seq_len, grads=True):
    """transformers' loss (and parameter gradients, by name) on one micro-batch."""
    ids, mask, labels = batch(rows, seq_len)
    num_items = shifted_count(labels)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = loss_of(logits, labels, num_items)
    out = {}
    if grads:
        loss.backward()
        out = {n: p.grad.detach().clone() for n, p in model.named_parameters()
               if p.grad is not None}
    return loss.item(), out, logits.detach(), num_items


def read_dump(path):
    return {k: v for k, v in load_file(str(path)).items()}


def assert_inputs_match(dump, rows, seq_len):
    """The dump's micro-batch is the rows as the reference sees them."""
    ids, _, labels = batch(rows, seq_len)
    np.testing.assert_array_equal(dump["inputs/input_ids"], ids.numpy())
    assert dump["inputs/num_items"][0] == shifted_count(labels)


def assert_grads_close(ours, theirs, rel=1e-3, rename=lambda n: n):
    """Every reference gradient has a g3moe counterpart (by HF name) whose
    largest difference and norm are within `rel` of the reference's scale."""
    ours = {k[len("grad/"):]: v for k, v in ours.items() if k.startswith("grad/")}
    assert ours, "the dump holds no gradients"
    seen = set()
    for name, g in theirs.items():
        key = rename(name)
        assert key in ours, f"g3moe has no gradient for {key}"
        seen.add(key)
        mine = torch.from_numpy(ours[key])
        assert tuple(mine.shape) == tuple(g.shape), key
        scale = g.abs().max().item()
        diff = (mine - g).abs().max().item()
        assert diff <= rel * scale + 1e-9, f"{key}: max diff {diff:.3g}, scale {scale:.3g}"
        n1, n2 = mine.norm().item(), g.norm().item()
        assert abs(n1 - n2) <= rel * n2 + 1e-9, f"{key}: norm {n1:.6g} vs {n2:.6g}"
    assert seen == set(ours), f"gradients without a reference: {sorted(set(ours) - seen)}"
