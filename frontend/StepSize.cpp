//===- StepSize.cpp - the bound on the product of the sizes ---------------===//
//
// Each size is bounded on its own; their products must be too. Estimates the
// elements a step holds from the model's and the training options' sizes and
// refuses, naming the size that crosses it, a step past 2^52 elements, so
// that no byte count of the compiler or the runtime can overflow.
//
//===----------------------------------------------------------------------===//

#include "frontend/ConfigInternal.h"

#include "llvm/Support/FormatVariadic.h"

#include <algorithm>

using namespace llvm;

namespace g3moe::frontend::detail {

namespace {

/// The most elements a step may hold: its byte counts (up to 8 bytes an
/// element, summed over every buffer of the arena) then stay far inside
/// int64_t, whatever the planner adds up.
constexpr double kMaxStepElements = 4503599627370496.0; // 2^52

/// The sizes that decide how large a step's tensors are, as doubles so that
/// their products cannot overflow.
struct StepDims {
  double layers = 1, vocab = 1, hidden = 1, inter = 1, heads = 1, kvHeads = 1, headDim = 1,
         experts = 0, topK = 0, shared = 0, rank = 0, batch = 1, seq = 1;
};

/// An upper bound of the elements of the tensors a step holds: the weights
/// with their gradients and AdamW moments, LoRA adapters (on every expert
/// too) and one micro-batch's activations (a generous number per token and
/// layer, plus the fp32 logits and their gradient).
double stepElements(const StepDims &d) {
  double width = std::max(
      {d.inter * std::max(1.0, d.shared), d.heads * d.headDim, d.kvHeads * d.headDim, d.hidden});
  double perLayer = 2 * d.hidden * d.headDim * (d.heads + d.kvHeads) +
                    3 * d.inter * d.hidden * (1 + d.shared) +
                    d.experts * (3 * d.inter * d.hidden + d.hidden) + 4 * d.hidden + 2 * d.headDim;
  double weights = 2 * d.vocab * d.hidden + d.layers * perLayer;
  double adapters = 7 * d.rank * d.layers * (1 + d.experts) * (d.hidden + width);
  double tokens = d.batch * d.seq;
  double activations =
      tokens *
      (4 * d.vocab + 16 * d.layers * (d.hidden + width * (1 + d.topK) + d.experts + d.heads));
  return 4 * (weights + adapters) + activations;
}

} // namespace

/// Each size is bounded on its own; their products must be too, or the
/// compiler's and the runtime's size arithmetic (elements x bytes, arena
/// offsets) could overflow. The sizes are taken one at a time, in the order
/// below, the others at their least; the first that takes the estimate past
/// the limit is named.
Error checkStepSize(Ctx &c, const ModelConfig &m, const TrainingOptions &t) {
  struct Dim {
    const char *key;
    /// How a training option is named when it is absent.
    const char *spelled;
    bool model;
    double value;
    double StepDims::*field;
  };
  bool moe = m.isMoE();
  const Dim dims[] = {
      {"num_hidden_layers", nullptr, true, double(m.numLayers), &StepDims::layers},
      {"vocab_size", nullptr, true, double(m.vocabSize), &StepDims::vocab},
      {"hidden_size", nullptr, true, double(m.hiddenSize), &StepDims::hidden},
      {"intermediate_size", nullptr, true, double(m.intermediateSize), &StepDims::inter},
      {"num_attention_heads", nullptr, true, double(m.numHeads), &StepDims::heads},
      {"num_key_value_heads", nullptr, true, double(m.numKVHeads), &StepDims::kvHeads},
      {"head_dim", nullptr, true, double(m.headDim), &StepDims::headDim},
      {"n_routed_experts", nullptr, true, double(m.numExperts), &StepDims::experts},
      {"num_experts_per_tok", nullptr, true, moe ? double(m.topK) : 0.0, &StepDims::topK},
      {"n_shared_experts", nullptr, true, moe ? double(m.numSharedExperts) : 0.0,
       &StepDims::shared},
      {"lora_r", "lora_r", false, t.finetuning == "lora" ? double(t.lora.rank) : 0.0,
       &StepDims::rank},
      {"seq_len", "max_seq_length", false, double(t.seqLen), &StepDims::seq},
      {"micro_batch", "per_device_train_batch_size", false, double(t.microBatch), &StepDims::batch},
  };
  StepDims partial;
  for (const Dim &dim : dims) {
    partial.*dim.field = dim.value;
    if (stepElements(partial) <= kMaxStepElements)
      continue;
    StepDims all;
    for (const Dim &each : dims)
      all.*each.field = each.value;
    Reader r{c, dim.model ? c.model : c.train, dim.model};
    Origin o = r.origin(dim.key);
    if (!dim.model && !r.has(dim.key))
      o.path = dim.spelled;
    return fail(o, "is " + Twine(static_cast<int64_t>(dim.value)) + r.defaulted(dim.key) +
                       ", which makes the step too large: it would hold "
                       "about " +
                       formatv("{0:e1}", stepElements(all)).str() +
                       " elements (weights with their gradients and AdamW "
                       "moments, adapters, one micro-batch's activations), "
                       "more than the 2^52 g3moe allows so that its byte "
                       "counts fit in 64 bits");
  }
  return Error::success();
}

} // namespace g3moe::frontend::detail
