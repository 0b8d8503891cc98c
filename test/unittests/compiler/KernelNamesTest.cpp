//===- KernelNamesTest.cpp - the kernel list against the g3moe ops --------===//
//
// runtime/kernels/kernel_names.def lists every kernel once, and the backends
// build their tables from it (KernelTableTest checks the CPU's,
// CudaChecksTest the CUDA one's). Here the list meets the compiler: a
// lowered step launches the kernel named after each g3moe op, so every op
// must have its kernel in the list and every listed kernel must be some op's
// (or one the lowering or the host offload launches by itself).
//
//===----------------------------------------------------------------------===//

#include "compiler/Conversion/Passes.h"
#include "dialects/G3MoE/IR/G3MoEOps.h"
#include "dialects/G3RT/IR/G3RTDialect.h"
#include "runtime/kernels/kernel_names.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"

#include "gtest/gtest.h"

#include <set>
#include <string>

namespace {

/// g3moe ops that --g3moe-lower-to-g3rt turns into buffers or views, not
/// launches.
const std::set<std::string> kNoKernel = {"param", "frozen_e4m3", "reshape", "stop_gradient"};
/// g3moe ops declared for what is not built yet, which no pass makes and the
/// lowering refuses (test/Conversion/lower-to-g3rt-invalid.mlir).
const std::set<std::string> kDeclaredOnly = {"all_to_all"};
/// Kernels the lowering launches for what is no g3moe op: splat constants
/// and returned values copied into their persistent buffer.
const std::set<std::string> kLoweringKernels = {"fill", "copy"};
/// Kernels --g3rt-offload-to-host launches: the copies to and from host
/// memory (test/Dialect/G3RT/offload-to-host.mlir).
const std::set<std::string> kOffloadKernels = {"copy_to_host", "copy_to_device", "wait_copy"};

class KernelNames : public ::testing::Test {
protected:
  KernelNames() {
    mlir::DialectRegistry registry;
    registry.insert<g3moe::G3MoEDialect, g3moe::lowered::G3RTDialect, mlir::func::FuncDialect,
                    mlir::arith::ArithDialect>();
    context.appendDialectRegistry(registry);
    context.loadAllAvailableDialects();
  }

  /// The mnemonics of the registered g3moe ops.
  std::set<std::string> g3moeOps() {
    std::set<std::string> ops;
    for (mlir::RegisteredOperationName op : context.getRegisteredOperations())
      if (op.getDialectNamespace() == "g3moe")
        ops.insert(op.stripDialect().str());
    return ops;
  }

  std::set<std::string> listed() {
    std::set<std::string> names;
    for (std::string_view name : g3rt::kKernelNames)
      names.insert(std::string(name));
    return names;
  }

  mlir::MLIRContext context;
};

TEST_F(KernelNames, TheDialectHasOps) {
  // Guards the comparisons below against an empty registry.
  EXPECT_GT(g3moeOps().size(), 40u);
}

TEST_F(KernelNames, EveryOpHasItsKernel) {
  std::set<std::string> names = listed();
  for (const std::string &op : g3moeOps())
    if (!kNoKernel.count(op) && !kDeclaredOnly.count(op))
      EXPECT_TRUE(names.count(op)) << "g3moe." << op << " lowers to a launch of \"" << op
                                   << "\", which runtime/kernels/kernel_names.def does not list";
}

TEST_F(KernelNames, EveryKernelBelongsToAnOp) {
  std::set<std::string> ops = g3moeOps();
  for (const std::string &name : listed())
    EXPECT_TRUE((ops.count(name) && !kNoKernel.count(name)) || kLoweringKernels.count(name) ||
                kOffloadKernels.count(name))
        << "kernel \"" << name << "\" of runtime/kernels/kernel_names.def is no g3moe op's";
}

TEST_F(KernelNames, NamesAreListedOnce) {
  EXPECT_EQ(listed().size(), std::size(g3rt::kKernelNames));
}

// The two sets above describe the lowering: a step with each of kNoKernel's
// ops, a splat constant and a value returned into another persistent buffer
// launches exactly the kernels of kLoweringKernels.
TEST_F(KernelNames, TheLoweringLaunchesWhatTheSetsSay) {
  const char *step = R"mlir(
    func.func @step(%x: tensor<2x4xf32> {g3moe.input = "x"},
                    %acc: tensor<2x4xf32> {g3moe.grad_acc = "w"})
        -> (tensor<f32> {g3moe.output = "loss"}, tensor<8xf32> {g3moe.output = "flat"},
            tensor<2x4xf32> {g3moe.grad_acc = "w"}, tensor<4xf32> {g3moe.output = "scales"}) {
      %w = g3moe.param "w" trainable : tensor<2x4xf32>
      %flat = g3moe.reshape %w : tensor<2x4xf32> -> tensor<8xf32>
      %kept = g3moe.stop_gradient %flat : tensor<8xf32>
      %one = arith.constant dense<1.0> : tensor<f32>
      %q, %s = g3moe.frozen_e4m3 "v" : tensor<4x16xbf16> -> tensor<4x16xf8E4M3FN>, tensor<4xf32>
      return %one, %kept, %x, %s : tensor<f32>, tensor<8xf32>, tensor<2x4xf32>, tensor<4xf32>
    }
  )mlir";
  mlir::OwningOpRef<mlir::ModuleOp> module =
      mlir::parseSourceString<mlir::ModuleOp>(step, &context);
  ASSERT_TRUE(module);
  std::set<std::string> before;
  module->walk([&](mlir::Operation *op) {
    if (op->getDialect() && op->getDialect()->getNamespace() == "g3moe")
      before.insert(op->getName().stripDialect().str());
  });
  EXPECT_EQ(before, kNoKernel);

  mlir::PassManager pm(&context);
  pm.addPass(g3moe::createG3MoELowerToG3RTPass());
  ASSERT_TRUE(mlir::succeeded(pm.run(*module)));
  std::set<std::string> launched;
  module->walk([&](g3moe::lowered::LaunchOp launch) { launched.insert(launch.getKernel().str()); });
  EXPECT_EQ(launched, kLoweringKernels);
}

} // namespace
