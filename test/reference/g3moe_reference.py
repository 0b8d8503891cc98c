"""A PyTorch G3MoE, written from G3MOE_SPEC.md §2-3, as an independent oracle
for g3moe's routing, loss and gradients.

The Gemma-3 backbone is transformers' (the spec's §2 is HF Gemma-3); the MoE
block of §3 replaces each decoder layer's MLP: a bias-free router, E GeGLU
experts, SparseMixer-v2 top-2 routing with its custom backward (§3.4-3.5) or
softmax top-k routing, and the weighted sum of §3.6. Parameters are named as
G3MoE checkpoints name them (`model.layers.N.moe...`).

SparseMixer samples in training. The reference draws nothing: it covers the
tokens whose routing is decided without sampling (one candidate survives the
exclusion test at each stage, so the Gumbel argmax is the argmax and the
coin factor is 1) and reports the others, which a caller must not have.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def gelu_tanh(x):
    return nn.functional.gelu(x, approximate="tanh")


class Expert(nn.Module):
    """The GeGLU MLP of §2.6 (also the dense layers' `moe` module)."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class SparseMixerWeights(torch.autograd.Function):
    """w_j = P_j[i_j] forward; backward ∂S_e += γ_j · w_j · (δ(e, i_j) − P_j,e)
    (§3.5), with the masks, indices and coins constant."""

    @staticmethod
    def forward(ctx, scores, probs, indices):
        ctx.save_for_backward(probs, indices)
        return torch.gather(probs, 2, indices.unsqueeze(-1)).squeeze(-1)  # [N, 2]

    @staticmethod
    def backward(ctx, dw):
        probs, indices = ctx.saved_tensors           # [N, 2, E], [N, 2]
        w = torch.gather(probs, 2, indices.unsqueeze(-1)).squeeze(-1)
        onehot = nn.functional.one_hot(indices, probs.shape[-1]).to(probs.dtype)
        dscores = ((dw * w).unsqueeze(-1) * (onehot - probs)).sum(1)
        return dscores, None, None


def sparsemixer_top2(scores, eps):
    """§3.4 without sampling: indices [N, 2], weights [N, 2], and a mask of
    the tokens for which training would have sampled (more than one
    candidate at a stage)."""
    neg_inf = torch.finfo(scores.dtype).min
    s = scores.detach()
    probs, indices, ambiguous = [], [], torch.zeros(s.shape[0], dtype=torch.bool)
    masked = s.clone()
    for stage in range(2):
        m = masked.max(-1, keepdim=True).values
        denom = torch.maximum(torch.maximum(s.abs(), m.abs()), torch.full_like(s, 1e-8 if stage else 0.0))
        excluded = (m - s) / denom > 2 * eps
        excluded |= masked == neg_inf
        gated = s.masked_fill(excluded, neg_inf)
        ambiguous |= (~excluded).sum(-1) > 1
        idx = masked.argmax(-1)
        probs.append(torch.softmax(gated, -1).masked_fill(excluded, 0.0))
        indices.append(idx)
        masked = masked.scatter(1, idx.unsqueeze(-1), neg_inf)
    probs, indices = torch.stack(probs, 1), torch.stack(indices, 1)
    return indices, SparseMixerWeights.apply(scores, probs, indices), ambiguous


class MoEBlock(nn.Module):
    """§3.1-3.6: router `gate`, experts, routing, weighted sum."""

    def __init__(self, config):
        super().__init__()
        h, i, e = config["hidden_size"], config["intermediate_size"], config["n_routed_experts"]
        self.router_type = config.get("router_type", "sparsemixer")
        self.eps = config.get("router_jitter_noise", 0.01)
        self.top_k = config["num_experts_per_tok"]
        self.norm_topk_prob = config.get("norm_topk_prob", False)
        self.gate = nn.Linear(h, e, bias=False)
        self.experts = nn.ModuleList(Expert(h, i) for _ in range(e))
        self.ambiguous = 0
        self.routing = []

    def route(self, scores):
        if self.router_type == "sparsemixer":
            idx, w, ambiguous = sparsemixer_top2(scores, self.eps)
            self.ambiguous += int(ambiguous.sum())
            return idx, w
        if self.router_type == "softmax_topk":
            p = torch.softmax(scores, -1)
            w, idx = p.topk(self.top_k, -1)
            if self.norm_topk_prob:
                w = w / w.sum(-1, keepdim=True)
            return idx, w
        raise ValueError(f"router_type {self.router_type!r} is not in the reference")

    def forward(self, x):
        shape = x.shape
        f = x.reshape(-1, shape[-1])
        idx, w = self.route(self.gate(f.float()))
        self.routing.append(idx.detach())
        y = torch.zeros_like(f)
        for e, expert in enumerate(self.experts):
            token, slot = (idx == e).nonzero(as_tuple=True)
            if token.numel():
                y = y.index_add(0, token, w[token, slot].unsqueeze(-1).to(f.dtype) * expert(f[token]))
        return y.reshape(shape)


class MoELayerAdapter(nn.Module):
    """Holds a layer's FFN under the checkpoint name `moe`."""

    def __init__(self, moe):
        super().__init__()
        self.moe = moe

    def forward(self, x):
        return self.moe(x)


def build(checkpoint):
    """The G3MoE of a G3MoE checkpoint directory (config.json + safetensors),
    in fp32, with its weights; parameter names are the checkpoint's."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    model = Gemma3ForCausalLM(Gemma3TextConfig(**fields, attn_implementation="eager")).float()
    for n, layer in enumerate(model.model.layers):
        moe = (Expert(config["hidden_size"], config["intermediate_size"])
               if n < config.get("first_k_dense_replace", 0) else MoEBlock(config))
        layer.mlp = MoELayerAdapter(moe)
    state = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        state.update(load_file(str(f)))
    named = {rename(n): n for n, _ in model.named_parameters()}
    missing = sorted(set(named) - set(state))
    if missing:
        raise KeyError(f"{checkpoint}: no tensors for {missing[:4]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for ours, theirs in named.items():
            params[theirs].copy_(state[ours].float())
    return model


def rename(name):
    """The checkpoint name of a reference parameter."""
    return name.replace(".mlp.moe.", ".moe.")


def moe_blocks(model):
    return [layer.mlp.moe for layer in model.model.layers if isinstance(layer.mlp.moe, MoEBlock)]
