//===- CudaChecksTest.cpp - CUDA kernels reject bad calls as the CPU does -===//
//
// The CPU and CUDA kernels share their argument checks (kernel_checks.h,
// dense_checks.h, moe_checks.h). A call those checks refuse fails before any
// device work, so this runs without a GPU: each bad call below gets the same
// message from the CUDA kernel as from the CPU kernel. The CUDA kernel table
// holds every kernel of runtime/kernels/kernel_names.def.
//
//===----------------------------------------------------------------------===//

#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/lowrank_products.h"
#include "runtime/kernels/kernel_names.h"
#include "test/unittests/runtime/KernelTesting.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

using namespace g3rt;
using g3rt::testing::Tensor;

namespace {

struct BadCall {
  const char *kernel;
  KernelAttrs attrs;
  std::vector<Tensor> in, out;
};

Tensor f32(std::vector<int64_t> shape) { return Tensor::f32(std::move(shape)); }
Tensor i32(std::vector<int64_t> shape) { return Tensor::i32(std::move(shape)); }

KernelAttrs attrs(std::initializer_list<std::pair<const char *, AttrValue>> list) {
  KernelAttrs a;
  for (const auto &[name, value] : list)
    a.set(name, value);
  return a;
}

std::vector<BadCall> badCalls() {
  const auto I = AttrValue::ofInt;
  const auto F = AttrValue::ofFloat;
  KernelAttrs sigmoid = attrs(
      {{"top_k", I(2)}, {"n_group", I(3)}, {"topk_group", I(1)}, {"routed_scaling_factor", F(1)}});
  return {
      {"sparsemixer_router",
       attrs({{"epsilon", F(0.1)}}),
       {f32({4, 3})},
       {f32({4, 3}), i32({4, 2})}},
      {"sparsemixer_router_grad",
       attrs({{"epsilon", F(0.1)}}),
       {f32({4, 3}), i32({4, 2}), f32({4, 2})},
       {f32({4, 2})}},
      {"softmax_topk_router", attrs({{"top_k", I(4)}}), {f32({4, 3})}, {f32({4, 2}), i32({4, 2})}},
      {"softmax_topk_router_grad", {}, {f32({4, 3}), i32({4, 2}), f32({4, 3})}, {f32({4, 3})}},
      {"sigmoid_grouped_router", sigmoid, {f32({4, 4}), f32({4})}, {f32({4, 2}), i32({4, 2})}},
      {"sigmoid_grouped_router_grad",
       sigmoid,
       {f32({4, 4}), i32({4, 2}), f32({4, 2})},
       {f32({4, 3})}},
      {"moe_dispatch",
       attrs({{"num_experts", I(3)}}),
       {f32({4, 8}), i32({4, 2})},
       {f32({8, 8}), i32({3}), i32({4, 2})}},
      {"moe_dispatch_grad", {}, {f32({8, 7}), i32({4, 2})}, {f32({4, 8})}},
      {"moe_combine", {}, {f32({8, 8}), i32({4, 2}), f32({4, 3})}, {f32({4, 8})}},
      {"moe_combine_grad",
       {},
       {f32({8, 8}), i32({4, 2}), f32({4, 2}), f32({4, 8})},
       {f32({7, 8}), f32({4, 2})}},
      {"embedding", attrs({{"scale", F(2)}}), {i32({4}), f32({5, 8})}, {f32({4, 7})}},
      {"embedding_grad",
       attrs({{"scale", F(2)}, {"padding_idx", I(0)}}),
       {f32({3, 8}), i32({4})},
       {f32({5, 8})}},
      {"rms_norm", attrs({{"eps", F(1e-6)}}), {f32({4, 8}), f32({7})}, {f32({4, 8})}},
      {"rms_norm_grad",
       attrs({{"eps", F(1e-6)}}),
       {f32({4, 8}), f32({8}), f32({4, 8})},
       {f32({4, 8}), f32({7})}},
      {"linear_grad_input", {}, {f32({4, 6}), f32({6, 8})}, {f32({4, 7})}},
      {"linear_grad_weight", {}, {f32({4, 6}), f32({4, 8})}, {f32({8, 6})}},
      {"lm_head_grad", {}, {f32({4, 8}), f32({5, 8}), f32({4, 5})}, {f32({4, 8}), f32({5, 7})}},
      {"expert_linear", {}, {f32({4, 8}), i32({4}), f32({3, 6, 7})}, {f32({4, 6})}},
      {"expert_linear_grad_input", {}, {f32({4, 6}), i32({4}), f32({3, 6, 8})}, {f32({3, 8})}},
      {"expert_linear_grad_weight", {}, {f32({4, 6}), i32({4}), f32({4, 8})}, {f32({3, 8, 6})}},
      // An addend unlike the result; an lse of the wrong length.
      {"linear", {}, {f32({4, 8}), f32({6, 8}), f32({4, 5})}, {f32({4, 6})}},
      {"expert_linear", {}, {f32({4, 8}), i32({4}), f32({3, 6, 8}), f32({4, 7})}, {f32({4, 6})}},
      {"lm_head_cross_entropy",
       attrs({{"ignore_index", I(-100)}}),
       {f32({4, 8}), f32({5, 8}), i32({4}), f32({})},
       {f32({}), f32({5})}},
      {"lm_head_cross_entropy_grad",
       attrs({{"ignore_index", I(-100)}}),
       {f32({4, 8}), f32({5, 8}), i32({4}), f32({})},
       {f32({4, 8})}},
      {"lm_head_cross_entropy_and_grad",
       attrs({{"ignore_index", I(-100)}}),
       {f32({4, 8}), f32({5, 8}), i32({4}), f32({}), f32({})},
       {f32({}), f32({4, 7})}},
      {"random_uniform",
       attrs({{"stream", I(3)}, {"low", F(0)}, {"high", F(1)}}),
       {i32({2})},
       {f32({16})}},
      {"dropout", attrs({{"p", F(1.5)}}), {f32({4, 8}), f32({4, 8})}, {f32({4, 8})}},
      {"rope",
       attrs({{"theta", F(1e4)}, {"scaling_factor", F(1)}}),
       {f32({1, 4, 2, 7}), i32({1, 4})},
       {f32({1, 4, 2, 7})}},
      {"adamw",
       {},
       {f32({4, 8}), f32({4, 8}), f32({4, 7}), f32({4, 8}), Tensor(DType::I64, {}), f32({}),
        f32({})},
       {f32({4, 8}), f32({4, 8}), f32({4, 8})}},
      // Two tensors, the second's exp_avg_sq of another shape.
      {"adamw",
       {},
       {f32({4}), f32({8}), f32({4}), f32({8}), f32({4}), f32({8}), f32({4}), f32({7}),
        Tensor(DType::I64, {}), f32({}), f32({})},
       {f32({4}), f32({8}), f32({4}), f32({8}), f32({4}), f32({8})}},
      {"add_rms_norm",
       attrs({{"eps", F(1e-6)}}),
       {f32({4, 8}), f32({4, 8}), f32({7})},
       {f32({4, 8}), f32({4, 8})}},
      {"rms_norm_grad",
       attrs({{"eps", F(1e-6)}}),
       {f32({4, 8}), f32({8}), f32({4, 8}), Tensor(DType::BF16, {4, 8})},
       {f32({4, 8}), f32({8})}},
      {"rms_norm_rope",
       attrs({{"eps", F(1e-6)}, {"theta", F(1e4)}, {"scaling_factor", F(1)}}),
       {f32({1, 4, 2, 8}), f32({8}), i32({1, 3})},
       {f32({1, 4, 2, 8})}},
      {"rms_norm_rope_grad",
       attrs({{"eps", F(1e-6)}, {"theta", F(1e4)}, {"scaling_factor", F(1)}}),
       {f32({1, 4, 2, 8}), f32({8}), i32({1, 4}), f32({1, 4, 2, 6})},
       {f32({1, 4, 2, 8}), f32({8})}},
  };
}

TEST(CudaKernelChecks, BadCallsFailAsOnTheCpu) {
  cuda::CudaContext context; // never reached: the checks come first
  for (const BadCall &call : badCalls()) {
    KernelArgs args;
    args.name = call.kernel;
    args.attrs = &call.attrs;
    for (const Tensor &t : call.in)
      args.inputs.push_back(t.view);
    for (const Tensor &t : call.out)
      args.outputs.push_back(t.view);
    Status cpu = cpu::findCpuKernel(call.kernel)(args);
    ASSERT_FALSE(cpu.ok()) << call.kernel << ": the CPU accepts the bad call";
    args.backend = &context;
    KernelFn cudaKernel = cuda::findCudaKernel(call.kernel);
    ASSERT_NE(cudaKernel, nullptr) << call.kernel;
    Status gpu = cudaKernel(args);
    EXPECT_EQ(gpu.message(), cpu.message()) << call.kernel;
  }
}

// The rank-r weight gradients keep partial sums per chunk of rows and at
// least one chunk per expert; where those would not fit the scratch space
// (many experts, a wide side), the kernels leave the product to cuBLAS.
TEST(CudaLowRankPlan, WeightGradientFallsBackWhenPartialsDoNotFit) {
  const size_t scratch = size_t(128) << 20;
  cuda::RowGroups few{nullptr, DType::I32, 3, 16384}, many{nullptr, DType::I32, 256, 16384};
  EXPECT_TRUE(cuda::lowRankWeightGradFits(few, 16, 10240, scratch));
  EXPECT_TRUE(cuda::lowRankWeightGradFits(few, 10240, 32, scratch));
  EXPECT_TRUE(cuda::lowRankWeightGradFits(many, 16, 2560, scratch));
  EXPECT_FALSE(cuda::lowRankWeightGradFits(many, 32, 10240, scratch));
  // Long row counts take longer chunks instead of failing.
  cuda::RowGroups longRows{nullptr, DType::I32, 3, int64_t(1) << 21};
  EXPECT_TRUE(cuda::lowRankWeightGradFits(longRows, 32, 10240, scratch));
}

TEST(CudaKernelTable, HoldsEveryListedKernel) {
  std::vector<std::string> listed(std::begin(kKernelNames), std::end(kKernelNames));
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(cuda::cudaKernelNames(), listed);
  for (const std::string &name : listed)
    EXPECT_NE(cuda::findCudaKernel(name), nullptr) << name;
  EXPECT_EQ(cuda::findCudaKernel("no_such_kernel"), nullptr);
}

} // namespace
