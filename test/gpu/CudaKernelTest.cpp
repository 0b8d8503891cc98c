//===- CudaKernelTest.cpp - CUDA kernels against the CPU, call by call ---===//
//
// Differential tests of single CUDA kernels on shapes the tiny steps do not
// reach (several tiles, model-sized rows, many tensors): the LM head, the
// LoRA-rank and grouped expert products (with addends, low-rank terms and
// dropout masks), the norms, the random draws and AdamW, each against the
// CPU reference kernel with the same inputs. Part of G3MoECudaStepTests.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"
#include "test/gpu/GpuTesting.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

using namespace g3rt;
using namespace g3moe_test;

namespace {

/// The fused LM head + cross-entropy on shapes large enough for several row
/// blocks and vocabulary chunks (the tiny steps fit in one tile), against the
/// CPU reference kernel.
TEST(CudaKernels, FusedHeadLossAcrossTiles) {
  const int64_t rows = 2048, H = 64, V = 40000;
  std::vector<uint8_t> xb, tb, gb, nb, lb, dxb, dtb;
  TensorView x = hostTensor(DType::BF16, {rows, H}, xb),
             table = hostTensor(DType::BF16, {V, H}, tb),
             targets = hostTensor(DType::I32, {rows}, gb), n = hostTensor(DType::F32, {}, nb),
             loss = hostTensor(DType::F32, {}, lb), dx = hostTensor(DType::BF16, {rows, H}, dxb),
             dt = hostTensor(DType::F32, {V, H}, dtb);
  for (int64_t i = 0; i < x.numel(); ++i)
    x.store(i, 2 * uniformAt(1, 0, 0, uint64_t(i)) - 1);
  for (int64_t i = 0; i < table.numel(); ++i)
    table.store(i, 0.2f * (2 * uniformAt(1, 0, 1, uint64_t(i)) - 1));
  for (int64_t r = 0; r < rows; ++r)
    targets.i32()[r] = r % 7 == 0 ? -100 : int32_t(uniformAt(1, 0, 2, uint64_t(r)) * V);
  n.store(0, float(rows));
  KernelAttrs attrs;
  attrs.set("ignore_index", AttrValue::ofInt(-100));
  attrs.set("softcap", AttrValue::ofFloat(30.0));

  auto runBoth = [&](const char *name, std::vector<TensorView> in, std::vector<TensorView> out) {
    Status st;
    std::vector<double> ratios = gpuErrorsAgainstCpu(name, attrs, in, out, st);
    ASSERT_TRUE(st.ok()) << st.message();
    for (size_t i = 0; i < ratios.size(); ++i)
      EXPECT_LE(ratios[i], 1.0) << name << " output " << i;
  };
  runBoth("lm_head_cross_entropy", {x, table, targets, n}, {loss});
  std::vector<uint8_t> gradb;
  TensorView grad = hostTensor(DType::F32, {}, gradb);
  grad.store(0, 1.0f);
  runBoth("lm_head_cross_entropy_grad", {x, table, targets, n, grad}, {dx, dt});
  runBoth("lm_head_cross_entropy_grad", {x, table, targets, n, grad}, {dx});
  // With the forward's per-row logsumexp (the CPU's), which the backward
  // then takes instead of its own first sweep.
  std::vector<uint8_t> lseb;
  TensorView lse = hostTensor(DType::F32, {rows}, lseb);
  runBoth("lm_head_cross_entropy", {x, table, targets, n}, {loss, lse});
  runBoth("lm_head_cross_entropy_grad", {x, table, targets, n, grad, lse}, {dx, dt});
  runBoth("lm_head_cross_entropy_grad", {x, table, targets, n, grad, lse}, {dx});
  // Forward and input gradient in one pass (the running-max rescaling across
  // the chunks), with another seed, in bf16 and in fp32.
  grad.store(0, 0.5f);
  runBoth("lm_head_cross_entropy_and_grad", {x, table, targets, n, grad}, {loss, dx});
  std::vector<uint8_t> x32b, t32b, dx32b;
  TensorView x32 = hostTensor(DType::F32, {rows, H}, x32b),
             table32 = hostTensor(DType::F32, {V, H}, t32b),
             dx32 = hostTensor(DType::F32, {rows, H}, dx32b);
  for (int64_t i = 0; i < x.numel(); ++i)
    x32.store(i, x.load(i));
  for (int64_t i = 0; i < table.numel(); ++i)
    table32.store(i, table.load(i));
  runBoth("lm_head_cross_entropy_and_grad", {x32, table32, targets, n, grad}, {loss, dx32});
}

/// The LoRA-sized products (lowrank_products.cu) of the expert and dense
/// linear layers against the CPU: every rank the low-rank kernels take, both
/// weight layouts, an expert without rows, rows past the last expert, experts
/// spanning several row chunks, a wide side that is not a multiple of the
/// kernels' tiles, and addends (there and on the cuBLAS path).
TEST(CudaKernels, LowRankProductsMatchTheCPU) {
  const int64_t M = 1500, W = 264, E = 3;
  const std::vector<int32_t> offsets = {0, 700, 700, 1400};
  RandomTensors random(0);
  std::vector<uint8_t> ob;
  TensorView off = hostTensor(DType::I32, {E + 1}, ob);
  std::memcpy(off.data, offsets.data(), ob.size());
  KernelAttrs attrs;
  auto check = [&](const char *name, std::vector<TensorView> in, TensorView out, int64_t r) {
    Status st;
    std::vector<double> ratios = gpuErrorsAgainstCpu(name, attrs, in, {out}, st);
    ASSERT_TRUE(st.ok()) << name << ": " << st.message();
    EXPECT_LE(ratios[0], 1.0) << name << " with rank " << r << ", result of " << out.shape.size()
                              << " dims, last " << out.shape.back();
  };
  for (int64_t r : {int64_t(8), int64_t(16), int64_t(24), int64_t(32)}) {
    std::vector<uint8_t> b[12];
    TensorView xWide = random(DType::BF16, {M, W}, b[0]), xRank = random(DType::BF16, {M, r}, b[1]);
    TensorView wRankByWide = random(DType::BF16, {E, r, W}, b[2]),
               wWideByRank = random(DType::BF16, {E, W, r}, b[3]);
    TensorView yRank = hostTensor(DType::BF16, {M, r}, b[4]),
               yWide = hostTensor(DType::BF16, {M, W}, b[5]);
    // x·Aᵀ and u·Bᵀ, and their input gradients.
    check("expert_linear", {xWide, off, wRankByWide}, yRank, r);
    check("expert_linear", {xRank, off, wWideByRank}, yWide, r);
    check("expert_linear_grad_input", {xWide, off, wWideByRank}, yRank, r);
    check("expert_linear_grad_input", {xRank, off, wRankByWide}, yWide, r);
    // dA and dB.
    TensorView dA = hostTensor(DType::F32, {E, r, W}, b[6]),
               dB = hostTensor(DType::F32, {E, W, r}, b[7]);
    check("expert_linear_grad_weight", {xRank, off, xWide}, dA, r);
    check("expert_linear_grad_weight", {xWide, off, xRank}, dB, r);
    // The dense layers: one group of all rows, with a batch dimension.
    TensorView x3 = random(DType::BF16, {2, 750, W}, b[8]),
               u3 = random(DType::BF16, {2, 750, r}, b[9]);
    TensorView a = random(DType::BF16, {r, W}, b[10]), bw = random(DType::BF16, {W, r}, b[11]);
    std::vector<uint8_t> c[6];
    check("linear", {x3, a}, hostTensor(DType::BF16, {2, 750, r}, c[0]), r);
    check("linear", {u3, bw}, hostTensor(DType::BF16, {2, 750, W}, c[1]), r);
    check("linear_grad_input", {x3, bw}, hostTensor(DType::BF16, {2, 750, r}, c[2]), r);
    check("linear_grad_input", {u3, a}, hostTensor(DType::BF16, {2, 750, W}, c[3]), r);
    check("linear_grad_weight", {u3, x3}, hostTensor(DType::F32, {r, W}, c[4]), r);
    check("linear_grad_weight", {x3, u3}, hostTensor(DType::F32, {W, r}, c[5]), r);
    // With an addend (--g3moe-fuse-linear-add), which rows past the last
    // expert get as they are.
    std::vector<uint8_t> d[8];
    TensorView addWide = random(DType::BF16, {M, W}, d[0]),
               addRank = random(DType::BF16, {M, r}, d[1]);
    check("expert_linear", {xRank, off, wWideByRank, addWide}, yWide, r);
    check("expert_linear_grad_input", {xRank, off, wRankByWide, addWide}, yWide, r);
    check("expert_linear", {xWide, off, wRankByWide, addRank}, yRank, r);
    check("expert_linear_grad_input", {xWide, off, wWideByRank, addRank}, yRank, r);
    TensorView add3 = random(DType::BF16, {2, 750, W}, d[2]);
    check("linear", {u3, bw, add3}, hostTensor(DType::BF16, {2, 750, W}, d[3]), r);
    check("linear_grad_input", {u3, a, add3}, hostTensor(DType::BF16, {2, 750, W}, d[4]), r);
  }
  // Products cuBLAS takes (no rank-sized side), with an addend.
  std::vector<uint8_t> b[6];
  TensorView x = random(DType::BF16, {M, W}, b[0]), w = random(DType::BF16, {E, W, W}, b[1]),
             add = random(DType::BF16, {M, W}, b[2]), y = hostTensor(DType::BF16, {M, W}, b[3]);
  check("expert_linear", {x, off, w, add}, y, W);
  check("expert_linear_grad_input", {x, off, w, add}, y, W);
  TensorView wd = random(DType::BF16, {W, W}, b[4]);
  check("linear", {x, wd, add}, y, W);
  check("linear_grad_input", {x, wd, add}, y, W);
}

/// The LoRA products with a dropout inside (--g3moe-fuse-dropout): the A
/// product and the A gradients with the input masked as it is read, the
/// input gradients through A with the result masked as it is written, from
/// a dropout_mask's bits, on the low-rank kernels, give the bytes of
/// keyed_dropout and the plain product on the GPU, and the CPU's fused
/// products within tolerance; rows of no expert get zeros. The GPU's masks
/// are the CPU's, bit for bit.
TEST(CudaKernels, ProductsWithDropoutAreKeyedDropoutAndTheProduct) {
  const int64_t M = 1500, W = 264, E = 3;
  const std::vector<int32_t> offsets = {0, 700, 700, 1400};
  RandomTensors random(7);
  std::vector<uint8_t> ob, kb, mb, gb;
  TensorView off = hostTensor(DType::I32, {E + 1}, ob);
  std::memcpy(off.data, offsets.data(), ob.size());
  TensorView key = hostTensor(DType::I64, {2}, kb);
  key.i64()[0] = 0x5eed1234;
  key.i64()[1] = 11;
  KernelAttrs fused, draw, none;
  fused.set("dropout_p", AttrValue::ofFloat(0.1));
  draw.set("stream", AttrValue::ofInt(6));
  draw.set("p", AttrValue::ofFloat(0.1));
  // One mask covers every tensor below (M·W elements at most).
  const int64_t words = (M * W + 31) / 32;
  TensorView mask = hostTensor(DType::I32, {words}, mb);
  {
    Status st = runOnCpu("dropout_mask", draw, {key}, {mask});
    ASSERT_TRUE(st.ok()) << st.message();
    st = runOnGpu("dropout_mask", draw, {key}, {hostTensor(DType::I32, {words}, gb)});
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_EQ(mb, gb) << "dropout_mask";
  }
  auto keyedDropout = [&](const TensorView &x, const TensorView &y) {
    Status st = runOnCpu("keyed_dropout", draw, {x, key}, {y});
    ASSERT_TRUE(st.ok()) << st.message();
  };
  // `masked`: the input the dropout reads, or -1 for the result.
  auto expectUnfused = [&](const char *name, std::vector<TensorView> in, int masked,
                           const TensorView &out) {
    SCOPED_TRACE(std::string(name) + (masked < 0 ? ", result masked" : ", input masked"));
    std::vector<TensorView> withMask = in;
    withMask.push_back(mask);
    std::vector<uint8_t> fb, ub, db;
    Status st = runOnGpu(name, fused, withMask, {hostTensor(out.dtype, out.shape, fb)});
    ASSERT_TRUE(st.ok()) << st.message();
    TensorView unfused = hostTensor(out.dtype, out.shape, ub);
    if (masked >= 0) {
      TensorView dropped = hostTensor(in[size_t(masked)].dtype, in[size_t(masked)].shape, db);
      keyedDropout(in[size_t(masked)], dropped);
      in[size_t(masked)] = dropped;
    }
    st = runOnGpu(name, none, in, {unfused});
    ASSERT_TRUE(st.ok()) << st.message();
    if (masked < 0)
      keyedDropout(unfused, unfused);
    EXPECT_EQ(fb, ub);
    std::vector<double> ratios = gpuErrorsAgainstCpu(name, fused, withMask, {out}, st);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_LE(ratios[0], 1.0);
  };
  for (int64_t r : {int64_t(8), int64_t(16), int64_t(32)}) {
    SCOPED_TRACE("rank " + std::to_string(r));
    std::vector<uint8_t> b[12];
    TensorView x = random(DType::BF16, {M, W}, b[0]), dh = random(DType::BF16, {M, r}, b[1]);
    TensorView a = random(DType::BF16, {E, r, W}, b[2]);
    expectUnfused("expert_linear", {x, off, a}, 0, hostTensor(DType::BF16, {M, r}, b[3]));
    expectUnfused("expert_linear_grad_weight", {dh, off, x}, 2,
                  hostTensor(DType::F32, {E, r, W}, b[4]));
    expectUnfused("expert_linear_grad_input", {dh, off, a}, -1,
                  hostTensor(DType::BF16, {M, W}, b[5]));
    TensorView x3 = random(DType::BF16, {2, 750, W}, b[6]),
               dh3 = random(DType::BF16, {2, 750, r}, b[7]), a2 = random(DType::BF16, {r, W}, b[8]);
    expectUnfused("linear", {x3, a2}, 0, hostTensor(DType::BF16, {2, 750, r}, b[9]));
    expectUnfused("linear_grad_weight", {dh3, x3}, 1, hostTensor(DType::F32, {r, W}, b[10]));
    expectUnfused("linear_grad_input", {dh3, a2}, -1, hostTensor(DType::BF16, {2, 750, W}, b[11]));
  }
  // A product the low-rank kernels do not take refuses a dropout by name.
  std::vector<uint8_t> c[3];
  TensorView xf = random(DType::F32, {64, W}, c[0]), af = random(DType::F32, {8, W}, c[1]);
  Status st = runOnGpu("linear", fused, {xf, af, mask}, {hostTensor(DType::F32, {64, 8}, c[2])});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("needs the low-rank kernels"), std::string::npos) << st.message();
}

/// Rows M split into experts by `offsets`, for products of K and N columns.
struct ExpertSplit {
  int64_t M, K, N;
  std::vector<int32_t> offsets;

  int64_t experts() const { return int64_t(offsets.size()) - 1; }
  std::string describe() const {
    return "M " + std::to_string(M) + ", K " + std::to_string(K) + ", N " + std::to_string(N);
  }
  /// A low-rank case of it, for SCOPED_TRACE: the expert path, the split,
  /// the rank and whether an addend joins.
  std::string describe(const char *experts, int64_t rank, bool withAddend) const {
    return std::string(experts) + ", " + describe() + ", rank " + std::to_string(rank) +
           (withAddend ? ", addend" : "");
  }
  /// The offsets as an i32 host tensor in `bytes`.
  TensorView offsetTensor(std::vector<uint8_t> &bytes) const {
    TensorView off = hostTensor(DType::I32, {experts() + 1}, bytes);
    std::memcpy(off.data, offsets.data(), bytes.size());
    return off;
  }
};

/// A LoRA dropout's mask (p = 0.1) over the input gradient [M, K] of split
/// `c`, drawn on the CPU under the key (seed, step) and `stream`, in `bytes`.
Status drawGradientMask(const ExpertSplit &c, int64_t seed, int64_t step, int64_t stream,
                        std::vector<uint8_t> &bytes, TensorView &mask) {
  std::vector<uint8_t> kb;
  TensorView key = hostTensor(DType::I64, {2}, kb);
  key.i64()[0] = seed;
  key.i64()[1] = step;
  KernelAttrs draw;
  draw.set("stream", AttrValue::ofInt(stream));
  draw.set("p", AttrValue::ofFloat(0.1));
  mask = hostTensor(DType::I32, {(c.M * c.K + 31) / 32}, bytes);
  return runOnCpu("dropout_mask", draw, {key}, {mask});
}

/// Random expert weights w [E, N, K] of split `c` and their e4m3 copies as
/// the CPU's quantize_fp8 makes them: q, s of w's rows, qt, st of its
/// transpose's.
struct E4M3Weights {
  std::vector<uint8_t> bytes[5];
  TensorView w, q, s, qt, st;
};
Status quantizedWeights(const ExpertSplit &c, RandomTensors &random, E4M3Weights &out) {
  const int64_t E = c.experts();
  out.w = random(DType::BF16, {E, c.N, c.K}, out.bytes[0]);
  out.q = hostTensor(DType::F8E4M3, {E, c.N, c.K}, out.bytes[1]);
  out.s = hostTensor(DType::F32, {E, c.N}, out.bytes[2]);
  out.qt = hostTensor(DType::F8E4M3, {E, c.K, c.N}, out.bytes[3]);
  out.st = hostTensor(DType::F32, {E, c.K}, out.bytes[4]);
  KernelAttrs plain, transposed;
  transposed.set("transpose", AttrValue::ofBool(true));
  Status st = runOnCpu("quantize_fp8", plain, {out.w}, {out.q, out.s});
  return st.ok() ? runOnCpu("quantize_fp8", transposed, {out.w}, {out.qt, out.st}) : st;
}

/// Splits of both expert-product tests: empty experts, experts smaller than
/// a tile, rows past the last expert, sizes not multiples of the tiles.
const ExpertSplit kEmptyExperts{600, 2560, 384, {0, 5, 5, 300, 599}};
const ExpertSplit kRowsPastTheLast{777, 200, 136, {0, 300, 300, 700}};
const ExpertSplit kEightExperts{2048, 512, 256, {0, 500, 628, 1300, 1301, 1500, 1750, 2000, 2048}};

/// The grouped expert products (one launch for all experts) on splits with
/// empty experts, experts smaller than a tile and rows past the last
/// expert, sizes that are not multiples of the tiles, bf16 and fp32
/// results, with and without an addend, on the tensor cores and on the
/// plain kernel; offsets that are not a valid split make every row NaN.
TEST(CudaKernels, GroupedExpertProductsMatchTheCPU) {
  ScopedEnv env("G3MOE_EXPERT_GEMM", "grouped");
  RandomTensors random(100);
  KernelAttrs attrs;
  const ExpertSplit cases[] = {kEmptyExperts,
                               kRowsPastTheLast,
                               {130, 64, 1024, {0, 0, 130}},
                               // the plain kernel (K not a multiple of 8)
                               {300, 12, 40, {0, 100, 300}},
                               kEightExperts};
  for (const ExpertSplit &c : cases)
    for (DType yt : {DType::BF16, DType::F32})
      for (bool withAddend : {false, true}) {
        SCOPED_TRACE(c.describe() + ", " + std::string(dtypeName(yt)) +
                     (withAddend ? ", addend" : ""));
        const int64_t E = c.experts();
        std::vector<uint8_t> b[8];
        TensorView off = c.offsetTensor(b[0]);
        TensorView x = random(DType::BF16, {c.M, c.K}, b[1]);
        TensorView wNK = random(DType::BF16, {E, c.N, c.K}, b[2]);
        TensorView dy = random(DType::BF16, {c.M, c.N}, b[3]);
        TensorView add = random(yt, {c.M, c.N}, b[4]), addK = random(yt, {c.M, c.K}, b[5]);
        TensorView y = hostTensor(yt, {c.M, c.N}, b[6]), dx = hostTensor(yt, {c.M, c.K}, b[7]);
        std::vector<TensorView> fwd = {x, off, wNK}, bwd = {dy, off, wNK};
        if (withAddend)
          fwd.push_back(add), bwd.push_back(addK);
        Status st;
        std::vector<double> r = gpuErrorsAgainstCpu("expert_linear", attrs, fwd, {y}, st);
        ASSERT_TRUE(st.ok()) << st.message();
        EXPECT_LE(r[0], 1.0) << "expert_linear";
        r = gpuErrorsAgainstCpu("expert_linear_grad_input", attrs, bwd, {dx}, st);
        ASSERT_TRUE(st.ok()) << st.message();
        EXPECT_LE(r[0], 1.0) << "expert_linear_grad_input";
      }
  // The weight gradient of a LoRA rank of 4 (the plain kernel; ranks of 8
  // to 32 take the low-rank kernels).
  {
    std::vector<uint8_t> b[4];
    const std::vector<int32_t> offsets = {0, 0, 37, 300};
    TensorView off = hostTensor(DType::I32, {4}, b[0]);
    std::memcpy(off.data, offsets.data(), b[0].size());
    TensorView dy = random(DType::BF16, {300, 4}, b[1]), x = random(DType::BF16, {300, 40}, b[2]);
    TensorView dw = hostTensor(DType::F32, {3, 4, 40}, b[3]);
    Status st;
    std::vector<double> r =
        gpuErrorsAgainstCpu("expert_linear_grad_weight", attrs, {dy, off, x}, {dw}, st);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_LE(r[0], 1.0) << "expert_linear_grad_weight";
  }
  // A split past the row count: every row NaN, nothing written out of bounds.
  std::vector<uint8_t> b[4];
  const int64_t M = 300, K = 64, N = 64;
  TensorView off = hostTensor(DType::I32, {3}, b[0]);
  const int32_t bad[3] = {0, 200, 400};
  std::memcpy(off.data, bad, sizeof(bad));
  TensorView x = random(DType::BF16, {M, K}, b[1]), w = random(DType::BF16, {2, N, K}, b[2]);
  std::unique_ptr<cuda::CudaExecutor> ex;
  static const StepProgram empty;
  ASSERT_TRUE(cuda::CudaExecutor::create(empty, 0, ex).ok());
  TensorView dx = x, doff = off, dw = w, dy = hostTensor(DType::BF16, {M, N}, b[3]);
  TensorView hy = dy;
  for (TensorView *t : {&dx, &doff, &dw, &dy})
    ASSERT_EQ(cudaMalloc(&t->data, t->bytes()), cudaSuccess);
  ASSERT_TRUE(ex->toDevice(dx, x.data).ok());
  ASSERT_TRUE(ex->toDevice(doff, off.data).ok());
  ASSERT_TRUE(ex->toDevice(dw, w.data).ok());
  Status st = ex->runKernel("expert_linear", attrs, {dx, doff, dw}, {dy});
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_TRUE(ex->toHost(dy, hy.data).ok());
  for (int64_t i = 0; i < hy.numel(); ++i)
    ASSERT_TRUE(std::isnan(hy.load(i))) << "element " << i;
  for (TensorView *t : {&dx, &doff, &dw, &dy})
    cudaFree(t->data);
}

/// fp8_base's kernels: quantize_fp8 gives the CPU's bytes (plain and
/// transposed, the same roundings), and the e4m3 products over those bytes
/// differ from the CPU's only in their summation order, forward ([N, K]
/// weights) and input gradient (the transposed ones), with and without an
/// addend, on splits with empty experts and rows past the last: the expert
/// products on the grouped e4m3 kernel (all rows at once and in windows of
/// 128 rows) and per expert on cuBLASLt (with its scales and scaled after).
TEST(CudaKernels, E4M3QuantizeAndProductsMatchTheCPU) {
  struct Path {
    const char *experts, *scales, *window;
  };
  for (const Path &path : {Path{"grouped", "cublaslt", "0"}, Path{"grouped", "cublaslt", "128"},
                           Path{"cublas", "cublaslt", "0"}, Path{"cublas", "after", "0"}}) {
    ScopedEnv experts("G3MOE_EXPERT_GEMM", path.experts), env("G3MOE_FP8_SCALES", path.scales),
        window("G3MOE_E4M3_WINDOW_ROWS", path.window);
    const std::string scales =
        std::string(path.experts) + ", " + path.scales + ", window " + path.window;
    RandomTensors random(300);
    KernelAttrs plain, transposed;
    transposed.set("transpose", AttrValue::ofBool(true));
    const ExpertSplit cases[] = {kEmptyExperts, kEightExperts, {640, 2560, 1024, {0, 100, 512}}};
    for (const ExpertSplit &c : cases)
      for (bool withAddend : {false, true}) {
        SCOPED_TRACE(scales + ", " + c.describe() + (withAddend ? ", addend" : ""));
        std::vector<uint8_t> b[16];
        TensorView off = c.offsetTensor(b[0]);
        E4M3Weights e4m3;
        ASSERT_TRUE(quantizedWeights(c, random, e4m3).ok());
        const TensorView &w = e4m3.w, &q = e4m3.q, &s = e4m3.s, &qt = e4m3.qt, &st = e4m3.st;
        for (const auto &[attrs, outs] :
             {std::pair{&plain, std::vector<TensorView>{q, s}},
              std::pair{&transposed, std::vector<TensorView>{qt, st}}}) {
          std::vector<uint8_t> gq, gs;
          std::vector<TensorView> got = {hostTensor(outs[0].dtype, outs[0].shape, gq),
                                         hostTensor(outs[1].dtype, outs[1].shape, gs)};
          Status gpu = runOnGpu("quantize_fp8", *attrs, {w}, got);
          ASSERT_TRUE(gpu.ok()) << gpu.message();
          EXPECT_EQ(0, std::memcmp(gq.data(), outs[0].data, gq.size())) << "e4m3 bytes";
          EXPECT_EQ(0, std::memcmp(gs.data(), outs[1].data, gs.size())) << "scales";
        }
        TensorView x = random(DType::BF16, {c.M, c.K}, b[6]);
        TensorView dy = random(DType::BF16, {c.M, c.N}, b[7]);
        TensorView add = random(DType::BF16, {c.M, c.N}, b[8]);
        TensorView addK = random(DType::BF16, {c.M, c.K}, b[9]);
        TensorView y = hostTensor(DType::BF16, {c.M, c.N}, b[10]);
        TensorView dx = hostTensor(DType::BF16, {c.M, c.K}, b[11]);
        std::vector<TensorView> fwd = {x, off, q, s}, bwd = {dy, off, qt, st};
        if (withAddend)
          fwd.push_back(add), bwd.push_back(addK);
        Status gpu;
        std::vector<double> r = gpuErrorsAgainstCpu("scaled_expert_linear", plain, fwd, {y}, gpu);
        ASSERT_TRUE(gpu.ok()) << gpu.message();
        EXPECT_LE(r[0], 1.0) << "forward";
        r = gpuErrorsAgainstCpu("scaled_expert_linear", plain, bwd, {dx}, gpu);
        ASSERT_TRUE(gpu.ok()) << gpu.message();
        EXPECT_LE(r[0], 1.0) << "input gradient";
        // scaled_linear: expert 0's weight over all rows.
        TensorView q0 = q, s0 = s, y0 = hostTensor(DType::BF16, {c.M, c.N}, b[12]);
        q0.shape = {c.N, c.K};
        s0.shape = {c.N};
        std::vector<TensorView> dense = {x, q0, s0};
        if (withAddend)
          dense.push_back(add);
        r = gpuErrorsAgainstCpu("scaled_linear", plain, dense, {y0}, gpu);
        ASSERT_TRUE(gpu.ok()) << gpu.message();
        EXPECT_LE(r[0], 1.0) << "scaled_linear";
      }
  }
}

/// scaled_expert_linear with the LoRA term fp8_base keeps from a fused
/// expert product: the forward's h·B_eᵀ and the input gradient's dh·A_e
/// (`lowrank_transposed`) dropped by a mask. On the grouped e4m3 kernel (all
/// rows at once and in windows of 128 rows) the term joins the scaled fp32
/// accumulation, against the CPU's kernel; per expert on cuBLASLt the scaled
/// product is rounded and a second product adds the term, so against the
/// same roundings on the CPU (the term computed by the bf16 expert
/// products), within a tolerance of the parts' sizes: where the term
/// cancels the product, one rounding of the product apart is more than the
/// result's tolerance. Ranks 8 and 16, with and without an addend.
TEST(CudaKernels, E4M3ExpertProductsWithLowRankTermsMatchTheCPU) {
  RandomTensors random(500);
  KernelAttrs plain, gradient, dropped;
  gradient.set("lowrank_transposed", AttrValue::ofBool(true));
  gradient.set("dropout_p", AttrValue::ofFloat(0.1));
  dropped.set("dropout_p", AttrValue::ofFloat(0.1));
  struct Path {
    const char *experts, *window;
  };
  for (const Path &path : {Path{"grouped", "0"}, Path{"grouped", "128"}, Path{"cublas", "0"}}) {
    ScopedEnv experts("G3MOE_EXPERT_GEMM", path.experts),
        window("G3MOE_E4M3_WINDOW_ROWS", path.window);
    const bool split = std::string(path.experts) == "cublas";
    for (const ExpertSplit &c : {kEmptyExperts, kEightExperts}) {
      std::vector<uint8_t> mb;
      TensorView mask;
      ASSERT_TRUE(drawGradientMask(c, 0x4321, 7, 3, mb, mask).ok());
      const int64_t E = c.experts();
      std::vector<uint8_t> ob;
      TensorView off = c.offsetTensor(ob);
      E4M3Weights e4m3;
      ASSERT_TRUE(quantizedWeights(c, random, e4m3).ok());
      const TensorView &q = e4m3.q, &s = e4m3.s, &qt = e4m3.qt, &st = e4m3.st;
      for (int64_t r : {int64_t(8), int64_t(16)})
        for (bool withAddend : {false, true}) {
          SCOPED_TRACE(std::string(path.window) + " window, " +
                       c.describe(path.experts, r, withAddend));
          std::vector<uint8_t> b[12];
          TensorView x = random(DType::BF16, {c.M, c.K}, b[0]);
          TensorView dy = random(DType::BF16, {c.M, c.N}, b[1]);
          TensorView h = random(DType::BF16, {c.M, r}, b[2]);
          TensorView loraB = random(DType::BF16, {E, c.N, r}, b[3]);
          TensorView loraA = random(DType::BF16, {E, r, c.K}, b[4]);
          TensorView add = random(DType::BF16, {c.M, c.N}, b[5]);
          TensorView addK = random(DType::BF16, {c.M, c.K}, b[6]);
          std::vector<TensorView> fwd = {x, off, q, s}, bwd = {dy, off, qt, st};
          if (withAddend)
            fwd.push_back(add), bwd.push_back(addK);
          struct Product {
            const char *what;
            std::vector<TensorView> wide, in;
            const KernelAttrs *attrs;
            TensorView want;
            int64_t cols;
          };
          std::vector<Product> products = {
              {"forward", fwd, fwd, &plain, hostTensor(DType::BF16, {c.M, c.N}, b[7]), c.N},
              {"input gradient", bwd, bwd, &gradient, hostTensor(DType::BF16, {c.M, c.K}, b[8]),
               c.K}};
          products[0].in.insert(products[0].in.end(), {h, loraB});
          products[1].in.insert(products[1].in.end(), {h, loraA, mask});
          for (Product &p : products) {
            std::vector<double> sizes; // the rounded parts' sizes (split)
            if (!split) {
              ASSERT_TRUE(runOnCpu("scaled_expert_linear", *p.attrs, p.in, {p.want}).ok());
            } else {
              // The rounded e4m3 product, plus the rounded term.
              std::vector<uint8_t> termBytes;
              TensorView term = hostTensor(DType::BF16, {c.M, p.cols}, termBytes);
              ASSERT_TRUE(runOnCpu("scaled_expert_linear", plain, p.wide, {p.want}).ok());
              const bool isForward = p.cols == c.N;
              Status cpu = isForward ? runOnCpu("expert_linear", plain, {h, off, loraB}, {term})
                                     : runOnCpu("expert_linear_grad_input", dropped,
                                                {h, off, loraA, mask}, {term});
              ASSERT_TRUE(cpu.ok()) << cpu.message();
              for (int64_t i = 0; i < p.want.numel(); ++i) {
                sizes.push_back(std::fabs(p.want.load(i)) + std::fabs(term.load(i)));
                p.want.store(i, p.want.load(i) + term.load(i));
              }
            }
            std::vector<uint8_t> got;
            TensorView y = hostTensor(DType::BF16, p.want.shape, got);
            Status gpu = runOnGpu("scaled_expert_linear", *p.attrs, p.in, {y});
            ASSERT_TRUE(gpu.ok()) << gpu.message();
            EXPECT_LE(errorRatio(p.want, got, sizes), 1.0) << p.what;
          }
        }
    }
  }
}

/// Expert products with a LoRA term (--g3moe-fuse-linear-add): on the tensor
/// cores the term joins the grouped kernel's accumulation (ranks 8 to 32,
/// zeros past the rank), elsewhere (per-expert cuBLAS, a rank of 4) it is a
/// second product adding into the result; both against the CPU, forward
/// and input gradient, with and without an addend, on splits with empty
/// experts, rows past the last expert and sizes that are not multiples of
/// the tiles.
TEST(CudaKernels, ExpertProductsWithLowRankTermsMatchTheCPU) {
  RandomTensors random(200);
  KernelAttrs attrs;
  for (const char *experts : {"grouped", "cublas"}) {
    ScopedEnv env("G3MOE_EXPERT_GEMM", experts);
    for (const ExpertSplit &c : {kEmptyExperts, kRowsPastTheLast, kEightExperts})
      for (int64_t r : {int64_t(4), int64_t(8), int64_t(16), int64_t(24), int64_t(32)})
        for (bool withAddend : {false, true}) {
          SCOPED_TRACE(c.describe(experts, r, withAddend));
          const int64_t E = c.experts();
          std::vector<uint8_t> b[11];
          TensorView off = c.offsetTensor(b[0]);
          TensorView x = random(DType::BF16, {c.M, c.K}, b[1]);
          TensorView w = random(DType::BF16, {E, c.N, c.K}, b[2]);
          TensorView dy = random(DType::BF16, {c.M, c.N}, b[3]);
          TensorView h = random(DType::BF16, {c.M, r}, b[4]);
          TensorView loraB = random(DType::BF16, {E, c.N, r}, b[5]);
          TensorView loraA = random(DType::BF16, {E, r, c.K}, b[6]);
          TensorView add = random(DType::BF16, {c.M, c.N}, b[7]);
          TensorView addK = random(DType::BF16, {c.M, c.K}, b[8]);
          TensorView y = hostTensor(DType::BF16, {c.M, c.N}, b[9]);
          TensorView dx = hostTensor(DType::BF16, {c.M, c.K}, b[10]);
          std::vector<TensorView> fwd = {x, off, w}, bwd = {dy, off, w};
          if (withAddend)
            fwd.push_back(add), bwd.push_back(addK);
          fwd.insert(fwd.end(), {h, loraB});
          bwd.insert(bwd.end(), {h, loraA});
          Status st;
          std::vector<double> e = gpuErrorsAgainstCpu("expert_linear", attrs, fwd, {y}, st);
          ASSERT_TRUE(st.ok()) << st.message();
          EXPECT_LE(e[0], 1.0) << "expert_linear";
          e = gpuErrorsAgainstCpu("expert_linear_grad_input", attrs, bwd, {dx}, st);
          ASSERT_TRUE(st.ok()) << st.message();
          EXPECT_LE(e[0], 1.0) << "expert_linear_grad_input";
        }
  }
}

/// The expert input gradient whose LoRA term is the dropped input gradient
/// through A (--g3moe-fuse-linear-add after --g3moe-fuse-dropout): the mask
/// drops the term alone. In the grouped kernel's accumulation where the
/// result's columns are a multiple of 32 (2560 and 512 here), against the
/// CPU's kernel; else (136 columns, and per-expert cuBLAS) the wide product
/// is rounded and then the masked low-rank kernel adds the term into it, so
/// against the same two roundings on the CPU (the wide product, plus the
/// masked rank-r product), which one rounding would miss by an ulp of the
/// wide product where the term cancels it. With and without an addend.
TEST(CudaKernels, ExpertInputGradientsWithDroppedTermsMatchTheCPU) {
  RandomTensors random(300);
  KernelAttrs fused;
  fused.set("dropout_p", AttrValue::ofFloat(0.1));
  for (const char *experts : {"grouped", "cublas"}) {
    ScopedEnv env("G3MOE_EXPERT_GEMM", experts);
    for (const ExpertSplit &c : {kEmptyExperts, kRowsPastTheLast, kEightExperts}) {
      // The mask over the result [M, K], drawn on the CPU.
      std::vector<uint8_t> mb;
      TensorView mask;
      Status st = drawGradientMask(c, 0x1234, 5, 2, mb, mask);
      ASSERT_TRUE(st.ok()) << st.message();
      for (int64_t r : {int64_t(8), int64_t(16), int64_t(32)})
        for (bool withAddend : {false, true}) {
          SCOPED_TRACE(c.describe(experts, r, withAddend));
          const int64_t E = c.experts();
          std::vector<uint8_t> b[9];
          TensorView off = c.offsetTensor(b[0]);
          TensorView w = random(DType::BF16, {E, c.N, c.K}, b[1]);
          TensorView dy = random(DType::BF16, {c.M, c.N}, b[2]);
          TensorView dh = random(DType::BF16, {c.M, r}, b[3]);
          TensorView loraA = random(DType::BF16, {E, r, c.K}, b[4]);
          TensorView add = random(DType::BF16, {c.M, c.K}, b[5]);
          TensorView want = hostTensor(DType::BF16, {c.M, c.K}, b[6]);
          std::vector<TensorView> in = {dy, off, w};
          if (withAddend)
            in.push_back(add);
          std::vector<TensorView> wide = in;
          in.insert(in.end(), {dh, loraA, mask});
          if (std::string(experts) == "grouped" && c.K % 32 == 0) {
            ASSERT_TRUE(runOnCpu("expert_linear_grad_input", fused, in, {want}).ok());
          } else {
            TensorView term = hostTensor(DType::BF16, {c.M, c.K}, b[7]);
            ASSERT_TRUE(runOnCpu("expert_linear_grad_input", {}, wide, {want}).ok());
            ASSERT_TRUE(
                runOnCpu("expert_linear_grad_input", fused, {dh, off, loraA, mask}, {term}).ok());
            for (int64_t i = 0; i < want.numel(); ++i)
              want.store(i, want.load(i) + term.load(i));
          }
          TensorView got = hostTensor(DType::BF16, {c.M, c.K}, b[8]);
          st = runOnGpu("expert_linear_grad_input", fused, in, {got});
          ASSERT_TRUE(st.ok()) << st.message();
          EXPECT_LE(errorRatio(want, b[8]), 1.0);
        }
    }
  }
}

/// The MoE permutations on model-sized rows (2560, four elements per
/// thread) and odd ones (6, one): moe_dispatch's rows, slots and offsets,
/// and moe_combine_grad both on dispatch's slots (every row of one user, the
/// one-pass path) and on slots where rows have two users or none (the
/// per-row sums), all against the CPU.
TEST(CudaKernels, MoEPermutationsMatchTheCPU) {
  RandomTensors random(400);
  const int64_t N = 1000, k = 2, E = 8, M = N * k;
  KernelAttrs none, dispatch;
  dispatch.set("num_experts", AttrValue::ofInt(E));
  for (int64_t H : {int64_t(2560), int64_t(6)}) {
    SCOPED_TRACE("H " + std::to_string(H));
    std::vector<uint8_t> b[12];
    TensorView x = random(DType::BF16, {N, H}, b[0]), idx = hostTensor(DType::I32, {N, k}, b[1]);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j) // two distinct experts per token
        idx.i32()[n * k + j] = int32_t((n * 3 + j * 5) % E);
    TensorView permuted = hostTensor(DType::BF16, {M, H}, b[2]),
               off = hostTensor(DType::I32, {E + 1}, b[3]),
               slots = hostTensor(DType::I32, {N, k}, b[4]);
    Status st;
    for (double r :
         gpuErrorsAgainstCpu("moe_dispatch", dispatch, {x, idx}, {permuted, off, slots}, st))
      EXPECT_LE(r, 1.0) << "moe_dispatch";
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_TRUE(runOnCpu("moe_dispatch", dispatch, {x, idx}, {permuted, off, slots}).ok());
    TensorView y = random(DType::BF16, {M, H}, b[5]), w = random(DType::F32, {N, k}, b[6]);
    TensorView dout = random(DType::BF16, {N, H}, b[7]);
    TensorView dy = hostTensor(DType::BF16, {M, H}, b[8]),
               dw = hostTensor(DType::F32, {N, k}, b[9]);
    for (double r :
         gpuErrorsAgainstCpu("moe_combine_grad", none, {y, slots, w, dout}, {dy, dw}, st))
      EXPECT_LE(r, 1.0) << "moe_combine_grad, dispatch's slots";
    ASSERT_TRUE(st.ok()) << st.message();
    // Rows below M - 300 used by one item or two, the last 300 by none.
    TensorView shared = hostTensor(DType::I32, {N, k}, b[10]);
    for (int64_t i = 0; i < M; ++i)
      shared.i32()[i] = int32_t((i * 7) % (M - 300));
    for (double r :
         gpuErrorsAgainstCpu("moe_combine_grad", none, {y, shared, w, dout}, {dy, dw}, st))
      EXPECT_LE(r, 1.0) << "moe_combine_grad, shared and unused rows";
    ASSERT_TRUE(st.ok()) << st.message();
  }
}

/// rms_norm and its gradient on rows wider than the tiny steps' (a block per
/// row) and on QK-norm-sized rows (a warp per row), bf16 activations. 3001
/// rows: the last block of the gradient's (eight rows each) has one.
TEST(CudaKernels, RmsNormOnWideAndNarrowRows) {
  for (int64_t D : {int64_t(2560), int64_t(256), int64_t(40)}) {
    const int64_t rows = 3001;
    std::vector<uint8_t> xb, wb, gb, yb, dxb, dwb;
    TensorView x = hostTensor(DType::BF16, {rows, D}, xb), w = hostTensor(DType::F32, {D}, wb),
               g = hostTensor(DType::BF16, {rows, D}, gb),
               y = hostTensor(DType::BF16, {rows, D}, yb),
               dx = hostTensor(DType::BF16, {rows, D}, dxb), dw = hostTensor(DType::F32, {D}, dwb);
    for (int64_t i = 0; i < x.numel(); ++i) {
      x.store(i, 4 * uniformAt(5, 0, 0, uint64_t(i)) - 2);
      g.store(i, 2 * uniformAt(5, 0, 1, uint64_t(i)) - 1);
    }
    for (int64_t i = 0; i < D; ++i)
      w.store(i, 0.5f * uniformAt(5, 0, 2, uint64_t(i)) - 0.25f);
    KernelAttrs attrs;
    attrs.set("eps", AttrValue::ofFloat(1e-6));
    Status st;
    for (double r : gpuErrorsAgainstCpu("rms_norm", attrs, {x, w}, {y}, st))
      EXPECT_LE(r, 1.0) << "rms_norm, D " << D;
    ASSERT_TRUE(st.ok()) << st.message();
    std::vector<double> ratios =
        gpuErrorsAgainstCpu("rms_norm_grad", attrs, {x, w, g}, {dx, dw}, st);
    ASSERT_TRUE(st.ok()) << st.message();
    EXPECT_LE(ratios[0], 1.0) << "rms_norm_grad dx, D " << D;
    EXPECT_LE(ratios[1], 1.0) << "rms_norm_grad dw, D " << D;
  }
}

/// Runs kernel `name`, whose one output is `outType` [n], on the CPU and on
/// the GPU; `cpu` and `gpu` receive the output bytes of each.
void runOnBoth(const char *name, const KernelAttrs &attrs, const std::vector<TensorView> &in,
               DType outType, int64_t n, std::vector<uint8_t> &cpu, std::vector<uint8_t> &gpu) {
  KernelArgs args;
  args.name = name;
  args.attrs = &attrs;
  args.inputs = in;
  args.outputs = {hostTensor(outType, {n}, cpu)};
  Status s = cpu::findCpuKernel(name)(args);
  ASSERT_TRUE(s.ok()) << name << ": " << s.message();
  s = runOnGpu(name, attrs, in, {hostTensor(outType, {n}, gpu)});
  ASSERT_TRUE(s.ok()) << name << ": " << s.message();
}

/// keyed_dropout's masks on the GPU are the CPU's, bit for bit: the vector
/// kernel (bf16 and f32, sizes with a partial last Philox block) and the
/// generic one (an f32 input into a bf16 output); random_uniform (the vector
/// kernel for f32 outputs of 4k elements) and convert (four at a time where
/// both sides allow it) likewise, and keyed_jitter (bf16 and f32).
TEST(CudaKernels, RandomDrawsAndConversionsAreTheCPUs) {
  const std::vector<uint8_t> keyBytes = [] {
    std::vector<uint8_t> b(16);
    int64_t k[2] = {0x5eed5eed1234, 7};
    std::memcpy(b.data(), k, 16);
    return b;
  }();
  TensorView key;
  key.dtype = DType::I64;
  key.shape = {2};
  key.data = const_cast<uint8_t *>(keyBytes.data());
  KernelAttrs dropout, draw, none;
  dropout.set("stream", AttrValue::ofInt(9));
  dropout.set("p", AttrValue::ofFloat(0.05));
  draw.set("stream", AttrValue::ofInt(4));
  draw.set("low", AttrValue::ofFloat(0.99));
  draw.set("high", AttrValue::ofFloat(1.01));
  struct Case {
    DType in, out;
    int64_t n;
  };
  for (Case c : {Case{DType::BF16, DType::BF16, 16384 * 40 + 3}, Case{DType::F32, DType::F32, 4099},
                 Case{DType::F32, DType::BF16, 1001}, Case{DType::F32, DType::BF16, 16384 * 40},
                 Case{DType::BF16, DType::F32, 4096}}) {
    SCOPED_TRACE(std::string(dtypeName(c.in)) + " -> " + std::string(dtypeName(c.out)) + ", " +
                 std::to_string(c.n));
    std::vector<uint8_t> xb, cpu, gpu;
    TensorView x = hostTensor(c.in, {c.n}, xb);
    for (int64_t i = 0; i < c.n; ++i)
      x.store(i, 4 * uniformAt(3, 0, 0, uint64_t(i)) - 2);

    runOnBoth("keyed_dropout", dropout, {x, key}, c.out, c.n, cpu, gpu);
    TensorView y;
    y.dtype = c.out;
    y.shape = {c.n};
    y.data = cpu.data();
    int64_t dropped = 0;
    for (int64_t i = 0; i < c.n; ++i)
      dropped += y.load(i) == 0.0f;
    EXPECT_GT(dropped, c.n / 40) << "about 5 % of the elements are dropped";
    EXPECT_EQ(cpu, gpu) << "keyed_dropout";

    runOnBoth("random_uniform", draw, {key}, DType::F32, c.n, cpu, gpu);
    EXPECT_EQ(cpu, gpu) << "random_uniform";
    runOnBoth("convert", none, {x}, c.out, c.n, cpu, gpu);
    EXPECT_EQ(cpu, gpu) << "convert";
    if (c.in == c.out) {
      runOnBoth("keyed_jitter", draw, {x, key}, c.out, c.n, cpu, gpu);
      EXPECT_EQ(cpu, gpu) << "keyed_jitter";
    }
  }
}

/// The fused norms on G3MoE-4B's shapes (a block per 2560-wide row; QK-norm
/// heads of 256 on the register kernels) and on shapes only the unfused
/// kernels take (heads of 40, fp32), against the CPU.
TEST(CudaKernels, FusedNormsMatchTheCPU) {
  KernelAttrs attrs;
  attrs.set("eps", AttrValue::ofFloat(1e-6));
  attrs.set("theta", AttrValue::ofFloat(1e6));
  attrs.set("scaling_factor", AttrValue::ofFloat(8));
  uint64_t stream = 0;
  auto filled = [&](DType t, std::vector<int64_t> shape, std::vector<uint8_t> &b, float scale) {
    TensorView v = hostTensor(t, std::move(shape), b);
    ++stream;
    for (int64_t i = 0; i < v.numel(); ++i)
      v.store(i, scale * (2 * uniformAt(7, 0, stream, uint64_t(i)) - 1));
    return v;
  };
  for (int64_t H : {int64_t(2560), int64_t(64)}) {
    std::vector<uint8_t> b[8];
    TensorView a = filled(DType::BF16, {700, H}, b[0], 2),
               r = filled(DType::BF16, {700, H}, b[1], 2),
               w = filled(DType::BF16, {H}, b[2], 0.25f),
               sum = hostTensor(DType::BF16, {700, H}, b[3]),
               y = hostTensor(DType::BF16, {700, H}, b[4]),
               dx = hostTensor(DType::BF16, {700, H}, b[5]), dw = hostTensor(DType::F32, {H}, b[6]);
    Status st;
    for (double e : gpuErrorsAgainstCpu("add_rms_norm", attrs, {a, r, w}, {sum, y}, st))
      EXPECT_LE(e, 1.0) << "add_rms_norm, H " << H;
    ASSERT_TRUE(st.ok()) << st.message();
    for (double e : gpuErrorsAgainstCpu("rms_norm_grad", attrs, {a, w, r, sum}, {dx, dw}, st))
      EXPECT_LE(e, 1.0) << "rms_norm_grad with an addend, H " << H;
    ASSERT_TRUE(st.ok()) << st.message();
  }
  struct Heads {
    DType type;
    int64_t n, d;
  };
  // Heads narrower than a warp's 256 columns leave lanes idle.
  for (Heads h :
       {Heads{DType::BF16, 8, 256}, Heads{DType::BF16, 4, 256}, Heads{DType::BF16, 4, 16},
        Heads{DType::BF16, 2, 128}, Heads{DType::BF16, 3, 40}, Heads{DType::F32, 2, 32}}) {
    const int64_t B = 2, T = 300;
    std::vector<uint8_t> b[7];
    TensorView x = filled(h.type, {B, T, h.n, h.d}, b[0], 3),
               g = filled(h.type, {B, T, h.n, h.d}, b[1], 1),
               w = filled(DType::BF16, {h.d}, b[2], 0.25f),
               pos = hostTensor(DType::I32, {B, T}, b[3]),
               y = hostTensor(h.type, {B, T, h.n, h.d}, b[4]),
               dx = hostTensor(h.type, {B, T, h.n, h.d}, b[5]),
               dw = hostTensor(DType::F32, {h.d}, b[6]);
    for (int64_t i = 0; i < B * T; ++i)
      pos.i32()[i] = int32_t(i % T * 37); // positions up to ~11K
    Status st;
    for (double e : gpuErrorsAgainstCpu("rms_norm_rope", attrs, {x, w, pos}, {y}, st))
      EXPECT_LE(e, 1.0) << "rms_norm_rope, heads " << h.n << " x " << h.d;
    ASSERT_TRUE(st.ok()) << st.message();
    for (double e : gpuErrorsAgainstCpu("rms_norm_rope_grad", attrs, {x, w, pos, g}, {dx, dw}, st))
      EXPECT_LE(e, 1.0) << "rms_norm_rope_grad, heads " << h.n << " x " << h.d;
    ASSERT_TRUE(st.ok()) << st.message();
  }
}

/// The multi-tensor AdamW over more tensors than one launch takes (LoRA's
/// 204 at G3MoE-4B scale): every element as the CPU computes it.
TEST(CudaKernels, AdamWOverManyTensorsMatchesTheCPU) {
  const int n = 97;
  std::vector<std::vector<uint8_t>> storage(size_t(4 * n + 3 + 3 * n));
  std::vector<TensorView> in, out;
  for (int role = 0; role < 4; ++role)
    for (int k = 0; k < n; ++k) {
      TensorView t = hostTensor(DType::F32, {int64_t(1 + 517 * (k % 13))}, storage[in.size()]);
      for (int64_t i = 0; i < t.numel(); ++i) {
        float u = uniformAt(9, uint64_t(role), uint64_t(k), uint64_t(i));
        t.store(i, role == 3 ? 0.01f * u : 2 * u - 1);
      }
      in.push_back(t);
    }
  TensorView step = hostTensor(DType::I64, {}, storage[in.size()]);
  step.i64()[0] = 7;
  in.push_back(step);
  for (float v : {1e-3f, 0.5f}) {
    TensorView s = hostTensor(DType::F32, {}, storage[in.size()]);
    s.store(0, v);
    in.push_back(s);
  }
  for (int role = 0; role < 3; ++role)
    for (int k = 0; k < n; ++k)
      out.push_back(hostTensor(DType::F32, in[size_t(k)].shape, storage[in.size() + out.size()]));
  KernelAttrs attrs;
  attrs.set("beta1", AttrValue::ofFloat(0.9));
  attrs.set("beta2", AttrValue::ofFloat(0.999));
  attrs.set("epsilon", AttrValue::ofFloat(1e-8));
  attrs.set("weight_decay", AttrValue::ofFloat(0.01));
  Status st;
  std::vector<double> errors = gpuErrorsAgainstCpu("adamw", attrs, in, out, st);
  ASSERT_TRUE(st.ok()) << st.message();
  ASSERT_EQ(errors.size(), out.size());
  for (size_t i = 0; i < errors.size(); ++i)
    EXPECT_LE(errors[i], 1.0) << "output " << i;
}

} // namespace
