//===- Passes.td - g3moe training passes -------------------*- tablegen -*-===//
//
// The passes that turn the forward graph into a complete training step. Their
// descriptions are the user documentation of the flags.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TRANSFORMS_PASSES_TD
#define G3MOE_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def G3MoELoRAPass : Pass<"g3moe-lora", "mlir::ModuleOp"> {
  let summary = "insert LoRA adapters and choose the trainable parameters";
  let description = [{
    For every `g3moe.linear` and `g3moe.expert_linear` whose weight's module
    name ends in one of `targets` (PEFT's suffix rule: `gate_proj` matches
    `model.layers.3.moe.experts.{e}.gate_proj` but not `model.layers.3.moe.gate`),
    adds `scale(alpha / rank) * B(A(dropout(x)))` to its output, with fp32
    parameters `<module>.lora_A.weight` [rank, in] and `<module>.lora_B.weight`
    [out, rank] (stacked per expert for experts), cast to the activation type
    for the matmuls as under bf16 autocast. LoRA dropout draws its mask from a
    `g3moe.random_uniform` in training steps and is left out of eval steps.
    Everything else is frozen. With `full-finetune` there are no adapters and
    every weight becomes a trainable fp32 master, cast where it is used. With
    `train-router` the router weights (`*.moe.gate.weight`) are trainable too.
    Shared-expert weights stay frozen while `freeze-shared-experts` is set.
    A target that matches no module is an error naming it.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect", "::mlir::func::FuncDialect"];
  let options = [
    Option<"rank", "rank", "int64_t", "16", "LoRA rank r">,
    Option<"alpha", "alpha", "double", "32.0", "LoRA alpha (the update is scaled by alpha / r)">,
    Option<"dropout", "dropout", "double", "0.0", "LoRA dropout probability">,
    ListOption<"targets", "targets", "std::string",
               "module-name suffixes to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)">,
    Option<"fullFinetune", "full-finetune", "bool", "false",
           "train every weight instead of adding adapters">,
    Option<"trainRouter", "train-router", "bool", "false",
           "make the MoE router weights trainable">,
    Option<"freezeSharedExperts", "freeze-shared-experts", "bool", "true",
           "keep shared-expert weights frozen">,
  ];
}

def G3MoEAutodiffPass : Pass<"g3moe-autodiff", "mlir::ModuleOp"> {
  let summary = "reverse-mode differentiation of the step function";
  let description = [{
    Clones `@forward` into `@forward_backward`, which returns the loss, then
    `@forward`'s other results unchanged (statistics such as expert loads),
    then the gradient of every `trainable` `g3moe.param`, each tagged
    `g3moe.grad = "<param name>"` and typed like its parameter. Gradients are
    computed only along paths from trainable parameters to the loss: frozen
    weights get no weight gradient. Every op states its vector-Jacobian product
    through DifferentiableOpInterface; random draws are operands, so the
    backward sees the forward's values.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect", "::mlir::func::FuncDialect",
                           "::mlir::arith::ArithDialect"];
}

def G3MoEOptimizerPass : Pass<"g3moe-optimizer", "mlir::ModuleOp"> {
  let summary = "gradient accumulation, clipping, LR schedule and AdamW in IR";
  let description = [{
    Needs `@forward_backward`. Adds:
    * `@train_micro_step`: runs `@forward_backward`, returns its loss and
      statistics, and adds its gradients to the accumulators it takes and
      returns (`g3moe.grad_acc = "<name>"`).
      Because every micro-batch's loss is already divided by the label count
      of the whole accumulation window (HF semantics), the accumulated sum is
      the window's gradient.
    * `@optimizer_step`: takes the parameters (`g3moe.param`), accumulated
      gradients, Adam moments (`g3moe.exp_avg`, `g3moe.exp_avg_sq`), the count
      of updates already taken and the schedule's horizon and warmup, and
      returns the updated parameters and moments, the pre-clip global norm
      (`g3moe.output = "grad_norm"`) and the learning rate used
      (`g3moe.output = "learning_rate"`): global-norm clipping, the HF
      schedule with warmup (the first update uses lr 0) and torch AdamW.
      Weight decay skips parameters whose name contains `norm` or ends in
      `bias`, as HF does. The update is one multi-tensor `adamw` per weight
      decay group.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect", "::mlir::func::FuncDialect"];
  let options = [
    Option<"learningRate", "learning-rate", "double", "2e-5", "peak learning rate">,
    Option<"schedule", "schedule", "std::string", "\"cosine\"",
           "cosine, linear, constant or constant_with_warmup">,
    Option<"weightDecay", "weight-decay", "double", "0.01", "AdamW weight decay">,
    Option<"beta1", "beta1", "double", "0.9", "AdamW beta1">,
    Option<"beta2", "beta2", "double", "0.999", "AdamW beta2">,
    Option<"epsilon", "epsilon", "double", "1e-8", "AdamW epsilon">,
    Option<"maxGradNorm", "max-grad-norm", "double", "1.0",
           "global-norm clipping threshold (0 turns clipping off)">,
  ];
}

def G3MoEFuseLinearAddPass : Pass<"g3moe-fuse-linear-add", "mlir::ModuleOp"> {
  let summary = "fold adds into the linear products they add to";
  let description = [{
    Rewrites `add(a, p)`, where `p` is a `linear`, `expert_linear`,
    `linear_grad_input` or `expert_linear_grad_input` without an addend whose
    only user is the add, into `p` with `plus a`: the product adds `a` to its
    fp32 result before rounding, which saves the add's pass over both
    tensors (LoRA's `x·Wᵀ + (x·Aᵀ)·Bᵀ` forward and `dy·W + (dy·B)·A`
    backward). When both operands qualify, the product with the shorter
    contraction takes the addend: it is bound by memory traffic, where one
    more read costs least. Then an `expert_linear` (or
    `expert_linear_grad_input`) of rank at most 64 whose addend is the wide
    product of the same expert rows, read by nothing else, becomes that
    wide product with `lowrank h, B`: the LoRA term joins the wide product's
    accumulation. Where gate and up share an input, whose gradient autodiff
    sums in a chain, a rank-r term left in the addend chain of a wide product
    without one moves into it. Run again after --g3moe-fuse-dropout with
    `into-products`, the same moves take a rank-r input gradient with
    `dropout` (which takes no addend itself): the wide product gets the
    term and its mask, which then drops only the term. Runs after autodiff:
    a product with an addend or a low-rank term is not differentiated.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoEFuseNormsPass : Pass<"g3moe-fuse-norms", "mlir::ModuleOp"> {
  let summary = "fuse RMSNorm with the residual add and with RoPE";
  let description = [{
    Three rewrites, each saving a pass over an activation-sized tensor:
    * `rms_norm(add(a, b), w)` becomes `add_rms_norm(a, b, w)`, whose `sum`
      result replaces the add for its other users (the residual stream and
      the backward);
    * `add(rms_norm_grad(x, w, dy).input_grad, r)`, where the add is the
      gradient's only user, becomes `rms_norm_grad(x, w, dy) plus r`;
    * `rope(rms_norm(x, w), pos)` (QK-norm, then the rotary embedding),
      where the rope is the norm's only user, becomes `rms_norm_rope`, and
      `rms_norm_grad(x, w, rope(dy, pos) transposed)` with the same
      attributes becomes `rms_norm_rope_grad(x, w, pos, dy)`.
    Runs after autodiff: the fused ops are not differentiated.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoEShardPass : Pass<"g3moe-shard", "mlir::ModuleOp"> {
  let summary = "ZeRO sharding of the training step over data-parallel processes";
  let description = [{
    With `stage` 1 and `processes` N, gives each trainable tensor one owning
    process (largest tensors first, each to the process with the fewest
    elements so far; the lowest rank on ties) and splits every `adamw` of
    `@optimizer_step` into one per owner, marked `owner`: a process runs
    only its own updates and keeps only their Adam moments (about 1/N of
    them). One `g3moe.broadcast` per process then brings the parameters it
    updated to all processes before they are returned.

    Stage 2 also divides the gradients: in `@train_micro_step` one
    `g3moe.reduce` per owner sums the micro-batch's gradients of its tensors
    over the processes into that owner's accumulator (the `add` marked
    `owner`), and the global norm is the norm of the owners' partial norms,
    each broadcast from its owner.

    Stage 3 also divides the trainable parameters: the updated ones are not
    broadcast, and every other function reads each owned parameter through
    a `g3moe.broadcast` from its owner right after its `g3moe.param`, so
    that only the owner keeps it between steps. Frozen weights are not
    divided. Stage 0 leaves the step as it is.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
  let options = [
    Option<"processes", "processes", "int64_t", "1", "data-parallel processes (N)">,
    Option<"stage", "stage", "int64_t", "0", "ZeRO stage (0 to 3)">,
  ];
}

def G3MoEFuseLMHeadLossPass : Pass<"g3moe-fuse-lm-head-loss", "mlir::ModuleOp"> {
  let summary = "fuse the LM head with the cross-entropy and its gradient";
  let description = [{
    Rewrites `cross_entropy(lm_head(x, table))` into
    `lm_head_cross_entropy(x, table)` and
    `lm_head_grad(x, table, cross_entropy_grad(lm_head(x, table), ...))` into
    `lm_head_cross_entropy_grad(x, table, ...)`, whose table gradient is
    computed only when something uses it. Afterwards the [tokens, vocab]
    logits exist only where something else reads them (token accuracy in
    the evaluation forward). A fused backward whose forward (same operands
    and attributes) precedes it in its block takes the forward's per-row
    logsumexp (the forward's `lse` result) instead of recomputing it, or,
    when it computes no table gradient and its seed `grad` is defined
    before the forward (autodiff's constant seed is), joins the forward in one
    `lm_head_cross_entropy_and_grad` that computes the logits once (unless
    `one-pass` is off). Runs after autodiff: the fused ops have no gradient
    rule.
  }];
  let options = [
    Option<"onePass", "one-pass", "bool", "true",
           "join a forward and its input-only backward into one lm_head_cross_entropy_and_grad">,
  ];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoESaveAttentionStatsPass : Pass<"g3moe-save-attention-stats", "mlir::ModuleOp"> {
  let summary = "hand attention's output and softmax statistics to its gradient";
  let description = [{
    Gives each `attention_grad` whose forward (an `attention` of the same
    operands and attributes) precedes it in its block the forward's output
    and per-row logsumexp as its `saved` operands, adding the `lse` result
    to the forward. A backend then starts the backward from them instead of
    sweeping the keys once more to rebuild the softmax; the forward's output
    is kept until the backward. Runs after CSE, which merges autodiff's copy
    of the forward into the forward.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoETileTokensPass : Pass<"g3moe-tile-tokens", "mlir::ModuleOp"> {
  let summary = "run the feed-forward blocks on chunks of tokens";
  let description = [{
    In every entry point, each feed-forward block (ops under one module path
    ending in `mlp`, `moe` (a dense G3MoE layer), `moe.experts` or
    `moe.shared_experts`) whose ops read token rows runs once per chunk of
    `tokens` tokens (the last chunk takes the rest): `split_rows` cuts its
    row inputs (the normalised hidden states; for the experts also the
    router's indices and weights), the block's ops are cloned per chunk with
    the chunk's rows (an expert block dispatches and combines within its
    chunk), and `concat_rows` joins the outputs that the rest of the layer
    reads. Weights and their casts are shared by the chunks. Random draws
    of later chunks take fresh streams, so that no two chunks share a mask.
    Only one chunk's intermediates ([chunk * top_k, intermediate] for the
    experts) are alive at a time; autodiff, run afterwards, differentiates
    chunk by chunk, and recomputation (`--g3moe-recompute`) remakes a
    chunk's intermediates right before that chunk's backward. Runs after
    `--g3moe-lora`, so that the adapters are tiled with their layers.
    `tokens = 0`, or a chunk at least as long as the entry point's tokens,
    changes nothing.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
  let options = [
    Option<"tokens", "tokens", "int64_t", "0", "tokens per chunk (0: no tiling)">,
  ];
}

def G3MoERecomputePass : Pass<"g3moe-recompute", "mlir::ModuleOp"> {
  let summary = "recompute activations in the backward instead of keeping them";
  let description = [{
    In `@forward_backward`, every value that the forward computes inside one
    of the module scopes `scopes` (matched against the op's location, an HF
    module path such as `model.layers.8.moe.experts`) and that the backward
    reads is computed again just before its first backward use, from the
    values it depends on outside the scope, which are kept. The forward's copy
    then dies in the forward, and the memory planner reuses its bytes. Only
    cheap, pure ops are recomputed (linear layers, expert GEMMs, GeGLU,
    dropout with its keyed draw, casts and scales).

    A scope of `checkpoints` is recomputed whole: every op in it that has no
    memory effects (attention, norms, routing and dispatch included) is made
    again from the values that enter the scope, which alone are kept. With
    each decoder layer a checkpoint, only the layer boundaries live from the
    forward to the backward, plus one layer's recomputed activations at a
    time. Runs after CSE, which would otherwise merge the copies back.

    In a checkpoint scope that `keep-attention` also names, the attention
    stays as the forward ran it: its output and softmax statistics live until
    the backward (which --g3moe-save-attention-stats hands them to), and only
    the queries, keys and values are made again. A global layer's attention
    costs O(tokens^2) to run twice; its output costs tokens * heads * head_dim.
    `keep-attention` without `checkpoints` is an error.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
  let options = [
    ListOption<"scopes", "scopes", "std::string",
               "module-path substrings whose cheap activations are recomputed (default, "
               "when no checkpoints are given either: moe.experts)">,
    ListOption<"checkpoints", "checkpoints", "std::string",
               "module-path substrings (decoder layers: model.layers.3.) recomputed whole "
               "from what enters them">,
    ListOption<"keepAttention", "keep-attention", "std::string",
               "module-path substrings of checkpoints whose attention is kept, not "
               "recomputed">,
  ];
}

def G3MoEAccumulateEarlyPass : Pass<"g3moe-accumulate-early", "mlir::ModuleOp"> {
  let summary = "add each gradient into its accumulator as soon as the backward makes it";
  let description = [{
    Inlines the calls of `@train_micro_step` (its `@forward_backward`) and
    moves each `add` into a gradient accumulator (an argument tagged
    `g3moe.grad_acc`) right after the op that makes its gradient, so that no
    gradient lives to the end of the backward. The `g3moe.reduce`s of ZeRO
    stage 2 (--g3moe-shard) are remade per bucket: the gradients in the order
    the backward makes them, a bucket closing once it holds `bucket-bytes`,
    with one reduce per owner right after the bucket's last gradient, its
    adds after it. Runs after --g3moe-recompute, which works on
    `@forward_backward` itself.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
  let options = [
    Option<"bucketSize", "bucket-bytes", "int64_t", "16 << 20",
           "gradient bytes sent to their owners together (ZeRO stage 2)">,
  ];
}

def G3MoEPrefetchParametersPass : Pass<"g3moe-prefetch-parameters", "mlir::ModuleOp"> {
  let summary = "receive each ZeRO stage 3 parameter one receipt ahead of its reader";
  let description = [{
    A receipt is a `g3moe.broadcast` of one `g3moe.param` (--g3moe-shard at
    stage 3 puts one where each function first reads each trained
    parameter). Each receipt after the first of its function moves, with its
    `g3moe.param`, up to just before the first reader of the receipt before
    it, so that the exchange is in flight while that reader and what follows
    it compute; at most one more received parameter is alive at a time.
    Runs after --g3moe-accumulate-early, last before lowering, so that no
    later pass puts the receipts back.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoERegenerateRandomPass : Pass<"g3moe-regenerate-random", "mlir::ModuleOp"> {
  let summary = "draw the dropout and jitter masks again in the backward instead of keeping them";
  let description = [{
    In `@forward_backward`, every `g3moe.random_uniform` of the forward that
    the backward reads is drawn again right before its first backward reader
    (one copy for all of them), from the same key and stream, so the values
    are identical and the forward's draw dies in the forward. A draw is one
    elementwise kernel; kept, it is an fp32 buffer as large as the tensor it
    masks, alive from the forward to the backward. Runs after CSE, which
    would merge the copy back.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoEFuseDropoutPass : Pass<"g3moe-fuse-dropout", "mlir::ModuleOp"> {
  let summary = "dropouts and the input jitter draw their own random numbers instead of reading a uniform draw";
  let description = [{
    Every `g3moe.dropout` whose uniform operand is a `g3moe.random_uniform`
    on [0, 1) becomes a `g3moe.keyed_dropout` with that draw's key and
    stream: the same values, without the fp32 draw, as large as the input,
    being written and read. The draws left without readers are erased. Runs
    after --g3moe-regenerate-random, so that the backward's dropouts draw
    their masks too. Likewise every `g3moe.mul` by a (converted)
    `g3moe.random_uniform`, the router's input jitter, becomes a
    `g3moe.keyed_jitter` that draws, rounds and multiplies each factor where
    it uses it.

    With `into-products` a keyed_dropout then moves into the
    LoRA products around it, where the low-rank kernels take them (bf16
    operands, a rank of 8, 16, 24 or 32, a wide side of a multiple of 8):
    a `g3moe.dropout_mask` draws its keep-mask as bits, once (the backward's
    dropout of the same stream reads the forward's mask); the A product and
    the A gradient read the undropped input and apply the bits as they read
    it (`linear`, `expert_linear`, `linear_grad_weight`,
    `expert_linear_grad_weight` with `dropout`), and the input gradient
    through A applies them as it writes its result (`linear_grad_input`,
    `expert_linear_grad_input` with `dropout`). The dropped tensor, as large
    as the input, is then neither written nor kept for the backward; the
    mask is 1/16 of its bytes.
  }];
  let options = [
    Option<"intoProducts", "into-products", "bool", "false",
           "move each keyed_dropout into the LoRA products that read or write it">,
  ];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

def G3MoEFp8BasePass : Pass<"g3moe-fp8-base", "mlir::ModuleOp"> {
  let summary = "run the products of frozen weights in e4m3 (fp8_base)";
  let description = [{
    Every `linear`, `linear_grad_input`, `expert_linear` and
    `expert_linear_grad_input` whose weight is a frozen `g3moe.param` in the
    activation type, with both of its last dimensions multiples of 16,
    reads a `g3moe.frozen_e4m3` of that weight instead (transposed for an
    input gradient: state the runtime quantizes once, when it loads the
    weight) through a `g3moe.scaled_linear` or
    `g3moe.scaled_expert_linear` that quantizes its input's rows to e4m3 as
    it reads them. An expert product keeps its fused low-rank term
    (`lowrank`, `transposed` for the input gradient's A) and the term's
    mask, which the e4m3 product adds to its scaled accumulation. Products with a
    dropout of their own (LoRA's A), trainable weights and the fp32 router
    keep their types. Runs after the fusions and before recomputation, which
    then recomputes the e4m3 products too.
  }];
  let dependentDialects = ["::g3moe::G3MoEDialect"];
}

#endif // G3MOE_TRANSFORMS_PASSES_TD
