//===- G3RTDialect.td - the lowered g3rt dialect -----------*- tablegen -*-===//
//
// The lowered step: kernel launches on statically shaped buffers. After
// memory planning every arena buffer carries its byte offset, and the IR maps
// one to one onto step.bin.
//
//===----------------------------------------------------------------------===//

#ifndef G3RT_DIALECT_TD
#define G3RT_DIALECT_TD

include "mlir/IR/OpBase.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

def G3RT_Dialect : Dialect {
  let name = "g3rt";
  // Not ::g3rt, the namespace of the runtime that executes these ops.
  let cppNamespace = "::g3moe::lowered";
  let summary = "Kernel launches on buffers: the program the g3moe runtime executes";
  let description = [{
    A g3rt function is a straight-line list of `g3rt.launch` ops over buffers
    declared with `g3rt.buffer`. Buffers are either persistent, bound by name
    to state the runtime keeps across calls (parameters, gradient
    accumulators, Adam moments, inputs), or live in the arena, one allocation
    per step whose layout the memory planner fixes at compile time.
    `g3rt.view` reinterprets a buffer with another shape without copying.
    `g3rt.output` names the buffers the runtime reads after the call.
  }];
}

class G3RT_Op<string mnemonic, list<Trait> traits = []>
    : Op<G3RT_Dialect, mnemonic, traits>;

def G3RT_Buffer : StaticShapeMemRefOf<[AnyType]>;

def G3RT_BufferOp : G3RT_Op<"buffer"> {
  let summary = "declare a buffer";
  let description = [{
    `kind` is one of `arena`, `host`, `param`, `grad_acc`, `exp_avg`,
    `exp_avg_sq`, `input`. Persistent kinds carry the `name` the runtime
    binds them by (the HF tensor name, or the input's name); arena buffers
    get an `offset` in bytes from the memory planner, and so do host buffers
    (activations offloaded to host memory, in a host arena of their own).

    A parameter the runtime derives from another when it loads it (the e4m3
    copies of a frozen weight, `g3moe.frozen_e4m3`) names that weight in
    `derived_from`, its type in `source_type`, and what it holds in
    `derivation`: `e4m3` or `e4m3_scales` (the weight's rows), or
    `e4m3_transposed` or `e4m3_transposed_scales` (its transpose's rows).

    ```mlir
    %w = g3rt.buffer "param" {name = "model.norm.weight"} : memref<64xbf16>
    %t = g3rt.buffer "arena" {offset = 512 : i64} : memref<2x16x64xbf16>
    %q = g3rt.buffer "param" {name = "model.layers.0.mlp.up_proj.weight@e4m3",
        derived_from = "model.layers.0.mlp.up_proj.weight", derivation = "e4m3",
        source_type = tensor<128x64xbf16>} : memref<128x64xf8E4M3FN>
    ```
  }];
  let arguments = (ins StrAttr:$kind, OptionalAttr<StrAttr>:$name,
                       OptionalAttr<I64Attr>:$offset, OptionalAttr<StrAttr>:$derived_from,
                       OptionalAttr<StrAttr>:$derivation,
                       OptionalAttr<TypeAttrOf<AnyRankedTensor>>:$source_type);
  let results = (outs G3RT_Buffer:$result);
  let builders = [
    OpBuilder<(ins "::mlir::Type":$type, "::mlir::StringAttr":$kind, "::mlir::StringAttr":$name,
                   "::mlir::IntegerAttr":$offset), [{
      build($_builder, $_state, type, kind, name, offset, nullptr, nullptr, nullptr);
    }]>
  ];
  let assemblyFormat = "$kind attr-dict `:` type($result)";
  let hasVerifier = 1;
}

def G3RT_ViewOp : G3RT_Op<"view", [Pure]> {
  let summary = "the same bytes with another static shape";
  let description = [{
    ```mlir
    %v = g3rt.view %t : memref<2x16x64xbf16> to memref<32x64xbf16>
    ```
  }];
  let arguments = (ins G3RT_Buffer:$source);
  let results = (outs G3RT_Buffer:$result);
  let assemblyFormat = "$source attr-dict `:` type($source) `to` type($result)";
  let hasVerifier = 1;
}

def G3RT_LaunchOp : G3RT_Op<"launch", [AttrSizedOperandSegments]> {
  let summary = "run a kernel on buffers";
  let description = [{
    `kernel` names the g3moe op the kernel implements (docs/kernels.md);
    `attrs` are that op's attributes. Reads `ins`, writes `outs`.

    ```mlir
    g3rt.launch "rms_norm" ins(%x, %w : memref<32x64xbf16>, memref<64xbf16>)
        outs(%y : memref<32x64xbf16>) {attrs = {eps = 1.0e-06 : f64}}
    ```
  }];
  let arguments = (ins StrAttr:$kernel, Variadic<G3RT_Buffer>:$ins,
                       Variadic<G3RT_Buffer>:$outs, DictionaryAttr:$attrs);
  let assemblyFormat = [{
    $kernel (`ins` `(` $ins^ `:` type($ins) `)`)? `outs` `(` $outs `:` type($outs) `)` attr-dict
  }];
  let hasVerifier = 1;
}

def G3RT_OutputOp : G3RT_Op<"output"> {
  let summary = "name a buffer the runtime reads after the call";
  let description = [{
    ```mlir
    g3rt.output "loss" %l : memref<f32>
    ```
  }];
  let arguments = (ins StrAttr:$name, G3RT_Buffer:$buffer);
  let assemblyFormat = "$name $buffer attr-dict `:` type($buffer)";
}

#endif // G3RT_DIALECT_TD
