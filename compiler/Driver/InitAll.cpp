//===- InitAll.cpp - register g3moe dialects and passes -------------------===//

#include "compiler/Driver/InitAll.h"

#include "compiler/Conversion/Passes.h"
#include "compiler/Pipelines/TrainingPipeline.h"
#include "dialects/G3MoE/IR/G3MoEDialect.h"
#include "dialects/G3MoE/Transforms/Passes.h"
#include "dialects/G3RT/IR/G3RTDialect.h"
#include "dialects/G3RT/Transforms/Passes.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Transforms/Passes.h"

void g3moe::registerAllDialects(mlir::DialectRegistry &registry) {
  registry.insert<g3moe::G3MoEDialect, g3moe::lowered::G3RTDialect, mlir::func::FuncDialect,
                  mlir::arith::ArithDialect>();
}

void g3moe::registerAllPasses() {
  g3moe::registerG3MoEPasses();
  g3moe::registerG3MoEConversionPasses();
  g3moe::lowered::registerG3RTPasses();
  g3moe::registerTrainingPipeline();
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
}
