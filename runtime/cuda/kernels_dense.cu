//===- kernels_dense.cu - embedding and linear CUDA kernels ---------------===//
//
// The CUDA versions of the dense layers of a step (docs/kernels.md, "Dense
// layers"): the embedding, the linear layers and the grouped expert layers,
// with the math and checks of runtime/cpu/kernels_dense.cpp. The products
// are gemm.h's; those with a LoRA rank on one side run on the kernels of
// lowrank_products.cu instead, and expert products, on request, on the
// grouped kernel of grouped_gemm.cu; both read the expert offsets on the
// device.
//
// Data-dependent errors (an id out of range) cannot be reported without a
// host round trip; these kernels never read or write out of bounds for them
// and poison the affected values with NaN instead, so that a bad input
// still shows. Only the per-expert cuBLAS products wait on the device: they
// need the row offsets on the host.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/expert_rows.h"
#include "runtime/cuda/gemm.h"
#include "runtime/cuda/grouped_gemm.h"
#include "runtime/cuda/lowrank_products.h"
#include "runtime/kernels/dense_checks.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

// One block per token. An id outside [0, V) (an error on the CPU) gives a
// row of NaN.
__global__ void embeddingDevice(const void *ids, DType idType, const void *table, DType tt, void *y,
                                DType yt, int64_t N, int64_t H, int64_t V, float scale) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x) {
    int64_t id = loadIndex(ids, idType, t);
    bool valid = id >= 0 && id < V;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float v = valid ? __fmul_rn(loadFloat(table, tt, id * H + h), scale) : NAN;
      storeFloat(y, yt, t * H + h, v);
    }
  }
}

} // namespace

Status embeddingKernel(const KernelArgs &args) {
  double scale;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbedding(args, scale, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  if (N == 0 || H == 0)
    return Status();
  embeddingDevice<<<rowBlocks(N), kThreads, 0, contextOf(args).stream>>>(
      ids.data, ids.dtype, table.data, table.dtype, y.data, y.dtype, N, H, V, float(scale));
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding");
  return Status();
}

namespace {

// Sort keys: the id, or V for an id outside [0, V), whose tokens are
// dropped (an error on the CPU).
__global__ void embeddingKeysDevice(const void *ids, DType idType, int64_t N, int64_t V,
                                    uint32_t *keys, int32_t *tokens) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < N;
       t += int64_t(gridDim.x) * blockDim.x) {
    int64_t id = loadIndex(ids, idType, t);
    keys[t] = id >= 0 && id < V ? uint32_t(id) : uint32_t(V);
    tokens[t] = int32_t(t);
  }
}

// One block per position of the sorted tokens; the block at the first token
// of an id sums that id's rows in token order (the radix sort is stable),
// exactly as the CPU's counting sort does, so the sums are deterministic.
__global__ void embeddingGradSumDevice(const uint32_t *keys, const int32_t *tokens, int64_t N,
                                       const void *dy, DType dyType, int64_t H, int64_t V,
                                       int64_t paddingIdx, float scale, void *dtable, DType dt) {
  for (int64_t p = blockIdx.x; p < N; p += gridDim.x) {
    uint32_t key = keys[p];
    if ((p > 0 && keys[p - 1] == key) || key >= uint32_t(V) || int64_t(key) == paddingIdx)
      continue;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
      float acc = 0.0f;
      for (int64_t q = p; q < N && keys[q] == key; ++q)
        acc = __fadd_rn(acc, __fmul_rn(loadFloat(dy, dyType, int64_t(tokens[q]) * H + h), scale));
      storeFloat(dtable, dt, int64_t(key) * H + h, acc);
    }
  }
}

} // namespace

Status embeddingGradKernel(const KernelArgs &args) {
  double scale;
  int64_t paddingIdx;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbeddingGrad(args, scale, paddingIdx, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
  if (V >= int64_t(UINT32_MAX) || N > INT_MAX)
    return args.fail("vocabulary of " + std::to_string(V) + " or " + std::to_string(N) +
                     " tokens too large");
  CudaContext &ctx = contextOf(args);
  // Rows no token touches (and the padding row) stay 0.
  G3RT_RETURN_IF_ERROR(memsetZero(args, dtable.data, dtable.bytes()));
  if (N == 0 || H == 0)
    return Status();

  Scratch scratch = scratchOf(ctx);
  uint32_t *keysIn = static_cast<uint32_t *>(scratch.take(size_t(N) * 4));
  uint32_t *keysOut = static_cast<uint32_t *>(scratch.take(size_t(N) * 4));
  int32_t *tokensIn = static_cast<int32_t *>(scratch.take(size_t(N) * 4));
  int32_t *tokensOut = static_cast<int32_t *>(scratch.take(size_t(N) * 4));
  int endBit = 1;
  while (endBit < 32 && (uint64_t(1) << endBit) <= uint64_t(V))
    ++endBit;
  size_t tempBytes = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, tempBytes, keysIn, keysOut, tokensIn,
                                                  tokensOut, int(N), 0, endBit, ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "sizing the token sort");
  void *temp = scratch.take(std::max<size_t>(tempBytes, 1));
  if (!keysIn || !keysOut || !tokensIn || !tokensOut || !temp)
    return args.fail("the workspace is too small to sort " + std::to_string(N) + " tokens");

  embeddingKeysDevice<<<cappedGrid(N), kThreads, 0, ctx.stream>>>(ids.data, ids.dtype, N, V, keysIn,
                                                                  tokensIn);
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding_grad keys");
  e = cub::DeviceRadixSort::SortPairs(temp, tempBytes, keysIn, keysOut, tokensIn, tokensOut, int(N),
                                      0, endBit, ctx.stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "sorting tokens by id");
  embeddingGradSumDevice<<<rowBlocks(N), kThreads, 0, ctx.stream>>>(
      keysOut, tokensOut, N, dy.data, dy.dtype, H, V, paddingIdx, float(scale), dtable.data,
      dtable.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "embedding_grad");
  return Status();
}

//===----------------------------------------------------------------------===//
// Linear layers
//===----------------------------------------------------------------------===//

namespace {

// Products with a LoRA rank on one side go to the low-rank kernels
// (lowrank_products.h) when they take the operands; each helper sets `done`.
// A product with a fused dropout (dense_checks.h's ProductDropout) runs
// only there, where the mask's bits apply as the masked operand is read or
// the result written.

/// The error of a product with a dropout the low-rank kernels do not take
/// (g3moe-compile fuses only those they take).
Status noMaskedPath(const KernelArgs &args) {
  return args.fail("a dropout inside this product needs the low-rank kernels: bf16 operands, a "
                   "rank of 8, 16, 24 or 32 and a wide side of a multiple of 8");
}

/// The products of the linear layers' forward and input gradient per row
/// group: y[M, yCols] = x[M, xCols]·W_eᵀ with W_e [yCols, xCols]
/// (`transposed`, the forward) or x·W_e with W_e [xCols, yCols] (the input
/// gradient), plus s.addend. `inputMask` drops elements of x (a forward
/// x·Aᵀ), `resultMask` those of y (an input gradient through A).
Status lowRankProduct(const KernelArgs &args, const RowGroups &g, const TensorView &x,
                      int64_t xCols, const TensorView &w, bool transposed, int64_t yCols,
                      const TensorView &y, const MatmulShape &s, const DropMask &inputMask,
                      const DropMask &resultMask, bool &done) {
  cudaStream_t stream = contextOf(args).stream;
  const void *a = s.addend ? s.addend->data : nullptr;
  cudaError_t e = cudaSuccess;
  if ((done = lowRankFits(x.dtype, w.dtype, yCols, xCols) && !resultMask.bits))
    e = lowRankNarrowOutput(stream, g, x.data, xCols, w.data, transposed, yCols, a, y.data, y.dtype,
                            inputMask);
  else if ((done = lowRankFits(x.dtype, w.dtype, xCols, yCols) && !inputMask.bits))
    e = lowRankNarrowInner(stream, g, x.data, xCols, w.data, transposed, yCols, a, y.data, y.dtype,
                           resultMask);
  if (!done && (inputMask.bits || resultMask.bits))
    return noMaskedPath(args);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "low-rank product");
}

/// dW_e[out, in] = dy[rows of e, out]ᵀ·x[rows of e, in], `mask` dropping
/// elements of x.
Status lowRankLinearGradWeight(const KernelArgs &args, const RowGroups &g, const TensorView &dy,
                               const TensorView &x, const TensorView &dw, int64_t in, int64_t out,
                               const DropMask &mask, bool &done) {
  Scratch scratch = scratchOf(contextOf(args));
  done = lowRankFits(dy.dtype, x.dtype, std::min(in, out), std::max(in, out)) &&
         lowRankWeightGradFits(g, out, in, scratch.bytes) && (!mask.bits || out <= kMaxLowRank);
  if (!done)
    return mask.bits ? noMaskedPath(args) : Status();
  cudaError_t e = lowRankWeightGrad(contextOf(args).stream, g, dy.data, out, x.data, in, dw.data,
                                    dw.dtype, scratch.ptr, scratch.bytes, mask);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "low-rank weight gradient");
}

RowGroups expertGroups(const TensorView &offsets, int64_t experts, int64_t rows) {
  return {offsets.data, offsets.dtype, experts, rows};
}

} // namespace

Status linearKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearProduct(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, x.numel(), mask));
  bool done = false;
  G3RT_RETURN_IF_ERROR(lowRankProduct(args, {nullptr, DType::I32, 1, M}, x, in, w, true, out, y,
                                      shape, mask, {}, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // y[M, out] = x[M, in]·W[out, in]ᵀ (+ addend)
  return gemm(args, ctx, scratchOf(ctx), M, out, in, operand(x, in, false), operand(w, in, true),
              output(y, out, shape.addend), shape.addend ? 1.0f : 0.0f);
}

Status linearGradInputKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradInput(args, shape));
  G3RT_RETURN_IF_ERROR(checkResultDropout(args, split.drop, shape));
  const int64_t out = shape.out, in = shape.in, M = shape.M;
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, dx.numel(), mask));
  bool done = false;
  G3RT_RETURN_IF_ERROR(lowRankProduct(args, {nullptr, DType::I32, 1, M}, dy, out, w, false, in, dx,
                                      shape, {}, mask, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // dx[M, in] = dy[M, out]·W[out, in] (+ addend)
  return gemm(args, ctx, scratchOf(ctx), M, in, out, operand(dy, out, false), operand(w, in, false),
              output(dx, in, shape.addend), shape.addend ? 1.0f : 0.0f);
}

Status linearGradWeightKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, x.numel(), mask));
  bool done = false;
  G3RT_RETURN_IF_ERROR(
      lowRankLinearGradWeight(args, {nullptr, DType::I32, 1, M}, dy, x, dw, in, out, mask, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  // dW[out, in] = dy[M, out]ᵀ·x[M, in]
  return gemm(args, ctx, scratchOf(ctx), out, in, M, operand(dy, out, true), operand(x, in, false),
              output(dw, in), 0.0f);
}

//===----------------------------------------------------------------------===//
// Expert (grouped) linear layers
//===----------------------------------------------------------------------===//

Status readExpertOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                         std::vector<int64_t> &offsets) {
  cudaStream_t stream = contextOf(args).stream;
  std::vector<uint8_t> raw(t.bytes());
  cudaError_t e = cudaMemcpyAsync(raw.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess)
    e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess)
    return cudaFailure(args, e, "reading expert_offsets");
  TensorView host = t;
  host.data = raw.data();
  offsets.resize(size_t(experts + 1));
  for (int64_t i = 0; i <= experts; ++i)
    offsets[size_t(i)] = t.dtype == DType::I64 ? host.i64()[i] : int64_t(host.i32()[i]);
  return checkExpertOffsetValues(args, offsets, rows);
}

Status fillTailRows(const KernelArgs &args, const TensorView &t, int64_t from, int64_t cols,
                    const TensorView *addend) {
  int64_t M = t.dim(0);
  if (from >= M)
    return Status();
  void *dst = offsetBytes(t.data, t.dtype, from * cols);
  size_t bytes = size_t((M - from) * cols) * dtypeSize(t.dtype);
  if (!addend)
    return memsetZero(args, dst, bytes);
  if (addend->data == t.data)
    return Status();
  cudaError_t e = cudaMemcpyAsync(dst, offsetBytes(addend->data, t.dtype, from * cols), bytes,
                                  cudaMemcpyDeviceToDevice, contextOf(args).stream);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "copying the addend's tail rows");
}

Status dropMaskOf(const KernelArgs &args, const ProductDropout &d, int64_t elements,
                  DropMask &mask) {
  mask = {};
  if (!d.mask)
    return Status();
  G3RT_RETURN_IF_ERROR(checkMaskCovers(args, d, elements));
  mask = {static_cast<const uint32_t *>(d.mask->data), dropoutScale(d.p)};
  return Status();
}

namespace {

/// The low-rank term of `shape`, dropped by `termMask`, when the grouped
/// kernel can add it in its accumulation (a null term otherwise).
LowRankTerm fusedLowRank(const MatmulShape &shape, const TensorView &x, const TensorView &w,
                         int64_t K, int64_t N, const TensorView &y, const DropMask &termMask) {
  const TensorView *h = shape.lowInput, *l = shape.lowWeight;
  if (!h ||
      !groupedLowRankFits(x.dtype, w.dtype, y.dtype, K, N, h->dtype, l->dtype, shape.rank,
                          termMask.bits != nullptr) ||
      !aligned16(*h) || !aligned16(*l))
    return {};
  return {h->data, l->data, shape.rank, termMask};
}

/// The product of one call as a grouped kernel (grouped_gemm.h), when the
/// context asks for it and the operands suit it; `done` says whether it ran.
Status groupedProduct(const KernelArgs &args, const RowGroups &groups, const TensorView &x,
                      int64_t K, const TensorView &w, bool weightNK, int64_t N, const TensorView &y,
                      const TensorView *addend, const LowRankTerm &low, bool &done) {
  CudaContext &ctx = contextOf(args);
  done = ctx.groupedExperts && groupedProductFits(x.dtype, w.dtype, y.dtype, groups.rows, K, N) &&
         aligned16(x) && aligned16(w) && aligned16(y) && (!addend || aligned16(*addend));
  if (!done)
    return Status();
  cudaError_t e =
      groupedExpertProduct(ctx.stream, groups, x.data, x.dtype, K, w.data, w.dtype, weightNK, N,
                           addend ? addend->data : nullptr, y.data, y.dtype, low);
  return e == cudaSuccess ? Status() : cudaFailure(args, e, "the grouped expert product");
}

/// expertProduct's product as one cuBLAS product per expert (the low-rank
/// term left out).
Status perExpertProduct(const KernelArgs &args, const MatmulShape &shape, const TensorView &x,
                        int64_t xCols, const TensorView &off, const TensorView &w, bool transposed,
                        int64_t yCols, const TensorView &y) {
  const int64_t M = shape.M, E = shape.E;
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, E, M, offsets));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  const TensorView *add = shape.addend;
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // y[r0.., yCols] = x[r0.., xCols]·W_e (+ addend[r0..])
    G3RT_RETURN_IF_ERROR(
        gemm(args, ctx, scratch, rows, yCols, xCols,
             Operand{offsetBytes(x.data, x.dtype, r0 * xCols), x.dtype, xCols, false},
             Operand{offsetBytes(w.data, w.dtype, e * xCols * yCols), w.dtype,
                     transposed ? xCols : yCols, transposed},
             Output{offsetBytes(y.data, y.dtype, r0 * yCols), y.dtype, yCols,
                    add ? offsetBytes(add->data, y.dtype, r0 * yCols) : nullptr},
             add ? 1.0f : 0.0f));
  }
  // Rows past the last expert: the addend, or zeros.
  return fillTailRows(args, y, offsets[size_t(E)], yCols, add);
}

/// The expert products of the forward and the input gradient: per expert e,
/// y[rows of e, yCols] = x[rows of e, xCols]·W_e (+ h·L_e) (+ the addend),
/// W_e the transpose of W[e] [yCols, xCols] (`transposed`, the forward) or
/// W[e] [xCols, yCols] itself (the input gradient), L_e likewise; rows past
/// the last expert get the addend, or zeros. On the low-rank kernels or the
/// grouped kernel when they take the call, else one cuBLAS product per
/// expert after reading the offsets on the host. A low-rank term the
/// grouped kernel does not add in its accumulation is a second product
/// that adds into y. The masks as for lowRankProduct, which alone takes
/// them; `termMask` drops the low-rank term alone.
Status expertProduct(const KernelArgs &args, const MatmulShape &shape, const TensorView &x,
                     int64_t xCols, const TensorView &off, const TensorView &w, bool transposed,
                     int64_t yCols, const TensorView &y, const DropMask &inputMask = {},
                     const DropMask &resultMask = {}, const DropMask &termMask = {}) {
  const int64_t M = shape.M, E = shape.E;
  const LowRankTerm low = fusedLowRank(shape, x, w, xCols, yCols, y, termMask);
  bool done = false, fused = false;
  G3RT_RETURN_IF_ERROR(lowRankProduct(args, expertGroups(off, E, M), x, xCols, w, transposed, yCols,
                                      y, shape, inputMask, resultMask, done));
  if (!done) {
    G3RT_RETURN_IF_ERROR(groupedProduct(args, expertGroups(off, E, M), x, xCols, w, transposed,
                                        yCols, y, shape.addend, low, done));
    fused = done && low.h;
  }
  if (!done)
    G3RT_RETURN_IF_ERROR(perExpertProduct(args, shape, x, xCols, off, w, transposed, yCols, y));
  if (!shape.lowInput || fused)
    return Status();
  return addExpertLowRankTerm(args, off, E, *shape.lowInput, *shape.lowWeight, transposed, yCols, y,
                              termMask);
}

} // namespace

Status addExpertLowRankTerm(const KernelArgs &args, const TensorView &off, int64_t experts,
                            const TensorView &h, const TensorView &l, bool rankLast, int64_t cols,
                            const TensorView &y, const DropMask &termMask) {
  MatmulShape term{h.dim(0), h.dim(1), cols, experts};
  term.addend = &y;
  // The mask drops the term's product before y joins it: a result mask.
  return expertProduct(args, term, h, h.dim(1), off, l, /*transposed=*/rankLast, cols, y, {},
                       termMask);
}

Status expertLinearKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinear(args, shape));
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, x.numel(), mask));
  // y[M, out] = x[M, in]·W[e]ᵀ per expert
  return expertProduct(args, shape, x, shape.in, off, w, /*transposed=*/true, shape.out,
                       args.outputs[0], mask);
}

Status expertLinearGradInputKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradInput(args, shape));
  G3RT_RETURN_IF_ERROR(checkResultDropout(args, split.drop, shape));
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, args.outputs[0].numel(), mask));
  // dx[M, in] = dy[M, out]·W[e] per expert; with a low-rank term the mask
  // drops that term alone.
  const bool termOnly = shape.lowInput != nullptr;
  return expertProduct(args, shape, dy, shape.out, off, w, /*transposed=*/false, shape.in,
                       args.outputs[0], {}, termOnly ? DropMask() : mask,
                       termOnly ? mask : DropMask());
}

Status expertLinearGradWeightKernel(const KernelArgs &call) {
  SplitProduct split;
  G3RT_RETURN_IF_ERROR(splitProductDropout(call, split));
  const KernelArgs &args = split.args(call);
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &x = args.inputs[2];
  const TensorView &dw = args.outputs[0];
  DropMask mask;
  G3RT_RETURN_IF_ERROR(dropMaskOf(args, split.drop, x.numel(), mask));
  bool done = false;
  G3RT_RETURN_IF_ERROR(
      lowRankLinearGradWeight(args, expertGroups(off, E, M), dy, x, dw, in, out, mask, done));
  if (done)
    return Status();
  CudaContext &ctx = contextOf(args);
  if (ctx.groupedExperts && groupedWeightGradFits(dy.dtype, x.dtype, dw.dtype, M, out, in)) {
    cudaError_t e = groupedWeightGrad(ctx.stream, expertGroups(off, E, M), dy.data, dy.dtype, out,
                                      x.data, x.dtype, in, dw.data, dw.dtype);
    return e == cudaSuccess ? Status() : cudaFailure(args, e, "the grouped weight gradient");
  }
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readExpertOffsets(args, off, E, M, offsets));
  Scratch scratch = scratchOf(ctx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    // dW[e][out, in] = dy[r0.., out]ᵀ·x[r0.., in]; an expert without rows
    // gets zeros (gemm() with K = 0).
    G3RT_RETURN_IF_ERROR(
        gemm(args, ctx, scratch, out, in, rows,
             Operand{offsetBytes(dy.data, dy.dtype, r0 * out), dy.dtype, out, true},
             Operand{offsetBytes(x.data, x.dtype, r0 * in), x.dtype, in, false},
             Output{offsetBytes(dw.data, dw.dtype, e * out * in), dw.dtype, in}, 0.0f));
  }
  return Status();
}

} // namespace g3rt::cuda
