//===- G3MoEInterfaces.td - g3moe op interfaces ------------*- tablegen -*-===//
//
// The interface through which every differentiable g3moe op states its
// vector-Jacobian product, so that the autodiff pass is a graph walk and not
// one large switch over op kinds.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_INTERFACES_TD
#define G3MOE_INTERFACES_TD

include "mlir/IR/OpBase.td"

def G3MoE_DifferentiableOpInterface : OpInterface<"DifferentiableOpInterface"> {
  let cppNamespace = "::g3moe";
  let description = [{
    An op that can propagate gradients from its results to its operands.
    `buildGradient` emits, at the builder's insertion point, the ops computing
    the gradient of the loss with respect to each operand whose entry in
    `needsGrad` is true, given the gradients of its results (`resultGrads`,
    null where a result does not reach the loss). It returns one value per
    operand in `operandGrads`: the gradient, or null where none is needed or
    defined (integer operands, random draws, frozen weights). Random values the
    forward used are operands, so the backward reuses them exactly.
  }];
  let methods = [
    InterfaceMethod<
      "Emits the gradients of the operands that need one.",
      "::mlir::LogicalResult", "buildGradient",
      (ins "::mlir::OpBuilder &":$builder,
           "::mlir::ArrayRef<::mlir::Value>":$resultGrads,
           "::mlir::ArrayRef<bool>":$needsGrad,
           "::llvm::SmallVectorImpl<::mlir::Value> &":$operandGrads)>,
  ];
}

#endif // G3MOE_INTERFACES_TD
