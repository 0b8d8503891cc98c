//===- G3MoEDialect.td - the g3moe graph dialect -----------*- tablegen -*-===//
//
// The dialect declaration and the type constraints shared by its ops.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_DIALECT_TD
#define G3MOE_DIALECT_TD

include "mlir/IR/OpBase.td"

def G3MoE_Dialect : Dialect {
  let name = "g3moe";
  let cppNamespace = "::g3moe";
  let summary = "Graph-level ops of a G3MoE / Gemma-3 training step";
  let description = [{
    The `g3moe` dialect describes one micro-batch of a G3MoE or Gemma-3 decoder
    at the level of the model's math: embedding, Gemma RMSNorm, linear layers,
    RoPE, attention, GeGLU, routers, expert dispatch and combine, the tied LM
    head and the losses. Values are statically shaped tensors: activations are
    bf16, norms, softmax, routers and losses fp32, token data i32.

    Weights are `g3moe.param` ops named after their HF checkpoint tensors, so the
    graph is self-describing: the parameter table of a step is the set of its
    `g3moe.param` ops. Run-time data (token ids, shifted targets, positions,
    document ids, the label count of the accumulation window and the random
    key) are arguments of the step function.
  }];
}

class G3MoE_Op<string mnemonic, list<Trait> traits = []>
    : Op<G3MoE_Dialect, mnemonic, traits>;

def G3MoE_FloatTensor : RankedTensorOf<[BF16, F16, F32]>;
def G3MoE_IndexTensor : RankedTensorOf<[I32]>;
def G3MoE_Scalar : 0DTensorOf<[F32]>;
def G3MoE_RandomKey : 1DTensorOf<[I64]>;
// A keep-mask of g3moe.dropout_mask: bit i % 32 of word i / 32 for element i.
def G3MoE_DropoutMask : 1DTensorOf<[I32]>;

#endif // G3MOE_DIALECT_TD
