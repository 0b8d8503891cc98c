//===- kernels_lm_head.cu - LM head, cross-entropy and accuracy (CUDA) ----===//
//
// The CUDA versions of the output end of a step (docs/kernels.md, "LM head
// and loss"): the tied LM head, the token cross-entropy, the two fused so
// that the logits never exist in full, and the token accuracy, with the math
// and checks of runtime/cpu/kernels_lm_head.cpp. The products are gemm.h's;
// the row reductions (logsumexp, arg-max) are lm_head_rows.cuh's kernels,
// one block per row with the sums in double where the CPU sums in double, in
// a fixed shape-determined order, so results are reproducible run to run.
// This file checks the operands, plans the tiles and launches.
//
// Data-dependent errors (a target out of range, num_items <= 0) cannot be
// reported without a host round trip; these kernels never read or write out
// of bounds for them and poison the affected values with NaN instead, so
// that a bad input still shows.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/cuda_kernels.h"
#include "runtime/cuda/gemm.h"
#include "runtime/cuda/lm_head_rows.cuh"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <optional>
#include <string>

namespace g3rt::cuda {

using namespace checks;

namespace {

constexpr int kThreads = 256;
/// Threads of the blocks that reduce one vocabulary row (up to 262K logits).
constexpr int kRowThreads = 512;

} // namespace

//===----------------------------------------------------------------------===//
// LM head
//===----------------------------------------------------------------------===//

Status lmHeadKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  int64_t M, H, V;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", y, "result", M, H, V));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  CudaContext &ctx = contextOf(args);
  // logits[M, V] = x[M, H]·table[V, H]ᵀ, capped on the fp32 product.
  return gemm(args, ctx, scratchOf(ctx), M, V, H, operand(x, H, false), operand(table, H, true),
              output(y, V), 0.0f, softcap.value_or(0.0f));
}

namespace {

/// lm_head_grad's blocks of g': Mb rows (so that an fp32 accumulator for
/// them takes at most half of `own` bytes, unless dx is fp32 itself) by Vc
/// columns of `perElem` bytes each in the rest of `own`.
Status planGradBlocks(const KernelArgs &args, int64_t M, int64_t H, int64_t V, bool dxDirect,
                      size_t perElem, size_t own, int64_t &Mb, int64_t &Vc) {
  auto accBytes = [&](int64_t mb) { return dxDirect ? 0 : alignUp(size_t(mb) * size_t(H) * 4); };
  Mb = M;
  Vc = V;
  while (Mb > 1 && accBytes(Mb) > own / 2)
    Mb = (Mb + 1) / 2;
  for (;;) {
    size_t acc = accBytes(Mb), slack = 4 * kAlign;
    size_t left = own > acc + slack ? own - acc - slack : 0;
    Vc = perElem == 0 ? V : int64_t(std::min<size_t>(size_t(V), left / (size_t(Mb) * perElem)));
    if (Vc >= std::min<int64_t>(V, 256) || (Mb == 1 && Vc >= 1))
      break;
    if (Mb == 1)
      return args.fail("the workspace is too small for a vocabulary of " + std::to_string(V));
    Mb = (Mb + 1) / 2;
  }
  if (Vc < V && Vc > 256)
    Vc = Vc / 256 * 256;
  return Status();
}

} // namespace

// dx = g'·table and dtable = g'ᵀ·x, with g' the (capped) logit gradient.
//
// g' is [M, V] and, at Gemma's vocabulary, far larger than the workspace, so
// it is made a block at a time: M in blocks of Mb rows (so that an fp32
// accumulator for those rows of dx fits, when dx is not f32 itself), V in
// chunks of Vc within each. Per chunk: recompute the pre-cap logits (softcap
// only), form g', then dtable[chunk] += g'ᵀ·x[rows] and dx[rows] +=
// g'·table[chunk]; the accumulations run in fp32 (cuBLAS beta = 1 on fp32
// outputs), and dx is rounded once at the end of its row block.
//
// The usual operands are bf16 x and table with an fp32 g. cuBLAS cannot mix
// them, and fp32 GEMMs would run an order of magnitude slower than the bf16
// tensor cores on what is the largest product of the step; g' is therefore
// split into bf16 hi + lo (see lmHeadGradPrepDevice), two tensor-core GEMMs
// per product, which stays within fp32 tolerance of the CPU reference.
// Other type combinations keep g' in fp32 and go through gemm()'s staging.
Status lmHeadGradKernel(const KernelArgs &args) {
  std::optional<float> softcap;
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLmHeadGrad(args, softcap, shape));
  const int64_t M = shape.M, H = shape.in, V = shape.out;
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
  CudaContext &ctx = contextOf(args);
  if (M == 0 || V == 0 || H == 0) {
    G3RT_RETURN_IF_ERROR(memsetZero(args, dx.data, dx.bytes()));
    return memsetZero(args, dtable.data, dtable.bytes());
  }

  const bool split =
      x.dtype == DType::BF16 && table.dtype == DType::BF16 && dtable.dtype == DType::F32;
  const bool dxDirect = dx.dtype == DType::F32;
  // Without the cap, an fp32 gradient is g' itself, used in place.
  const bool gInPlace = !split && !softcap && dl.dtype == DType::F32;
  // Scratch bytes per element of a g' block: hi + lo (+ fp32 logits), or
  // one fp32 copy.
  const size_t perElem = split ? (softcap ? 8 : 4) : (gInPlace ? 0 : 4);
  Scratch scratch = scratchOf(ctx);
  // The fp32 path leaves half of the scratch to gemm() for staging.
  const size_t own = split ? scratch.bytes : scratch.bytes / 2;
  int64_t Mb, Vc;
  G3RT_RETURN_IF_ERROR(planGradBlocks(args, M, H, V, dxDirect, perElem, own, Mb, Vc));
  if (!split && dtable.dtype != DType::F32 && Mb < M)
    return args.fail("a " + std::string(dtypeName(dtable.dtype)) +
                     " table_grad needs all rows in one block; use an F32 table_grad");

  float *logits = nullptr, *gF32 = nullptr, *dxAcc = nullptr;
  __nv_bfloat16 *hi = nullptr, *lo = nullptr;
  if (split) {
    if (softcap)
      logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
    hi = static_cast<__nv_bfloat16 *>(scratch.take(size_t(Mb) * size_t(Vc) * 2));
    lo = static_cast<__nv_bfloat16 *>(scratch.take(size_t(Mb) * size_t(Vc) * 2));
  } else if (!gInPlace) {
    gF32 = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
    if (softcap)
      logits = gF32;
  }
  if (!dxDirect)
    dxAcc = static_cast<float *>(scratch.take(size_t(Mb) * size_t(H) * 4));
  Scratch inner = scratch; // what gemm() may stage in

  for (int64_t m0 = 0; m0 < M; m0 += Mb) {
    const int64_t mb = std::min(Mb, M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * H), x.dtype, H, false};
    const Output dxOut = dxDirect ? Output{offsetBytes(dx.data, dx.dtype, m0 * H), DType::F32, H}
                                  : Output{dxAcc, DType::F32, H};
    for (int64_t v0 = 0; v0 < V; v0 += Vc) {
      const int64_t vc = std::min(Vc, V - v0);
      const void *tableChunk = offsetBytes(table.data, table.dtype, v0 * H);
      if (softcap)
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, vc, H, xRows,
                                  Operand{tableChunk, table.dtype, H, true},
                                  Output{logits, DType::F32, vc}, 0.0f));
      // The g' block as one or two [mb, vc] operands whose products add up.
      Operand parts[2];
      int nParts = 1;
      if (gInPlace) {
        parts[0] = {offsetBytes(dl.data, dl.dtype, m0 * V + v0), DType::F32, V, false};
      } else {
        int threads = int(std::clamp<int64_t>((vc + 31) / 32 * 32, 32, kThreads));
        lmHeadGradPrepDevice<<<unsigned(std::min<int64_t>(mb, int64_t(1) << 20)), threads, 0,
                               ctx.stream>>>(dl.data, dl.dtype, V, m0, v0, mb, vc, logits,
                                             softcap.value_or(1.0f), gF32, hi, lo);
        G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_grad logit gradient");
        if (split) {
          parts[0] = {hi, DType::BF16, vc, false};
          parts[1] = {lo, DType::BF16, vc, false};
          nParts = 2;
        } else {
          parts[0] = {gF32, DType::F32, vc, false};
        }
      }
      for (int k = 0; k < nParts; ++k) {
        Operand g = parts[k], gT = parts[k];
        gT.trans = true;
        // dtable[v0.., H] (+)= g'[mb, vc]ᵀ·x[m0.., H]
        G3RT_RETURN_IF_ERROR(
            gemm(args, ctx, inner, vc, H, mb, gT, xRows,
                 Output{offsetBytes(dtable.data, dtable.dtype, v0 * H), dtable.dtype, H},
                 m0 == 0 && k == 0 ? 0.0f : 1.0f));
        // dx[m0.., H] (+)= g'[mb, vc]·table[v0.., H]
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, H, vc, g,
                                  Operand{tableChunk, table.dtype, H, false}, dxOut,
                                  v0 == 0 && k == 0 ? 0.0f : 1.0f));
      }
    }
    if (!dxDirect)
      G3RT_RETURN_IF_ERROR(copy2D(args, dxAcc, DType::F32, H,
                                  offsetBytes(dx.data, dx.dtype, m0 * H), dx.dtype, H, mb, H));
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Cross-entropy and token accuracy
//===----------------------------------------------------------------------===//

namespace {

struct CrossEntropyShape {
  int64_t rows, V, ignoreIndex;
};

Status prepareCrossEntropy(const KernelArgs &args, CrossEntropyShape &shape) {
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1], &n = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, n, "num_items"));
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", shape.ignoreIndex));
  shape.V = logits.dim(-1);
  shape.rows = leadingRows(logits);
  if (tv.numel() != shape.rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  return Status();
}

} // namespace

Status crossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  CrossEntropyShape s;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, s));
  const TensorView &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  double *rowLoss = static_cast<double *>(scratch.take(size_t(s.rows) * 8 + 8));
  int *counted = static_cast<int *>(scratch.take(size_t(s.rows) * 4 + 4));
  if (!rowLoss || !counted)
    return args.fail("the workspace is too small for " + std::to_string(s.rows) + " rows");
  const TensorView &logits = args.inputs[0], &targets = args.inputs[1], &n = args.inputs[2];
  if (s.rows > 0) {
    crossEntropyRowsDevice<<<rowBlocks(s.rows), kRowThreads, 0, ctx.stream>>>(
        logits.data, logits.dtype, targets.data, targets.dtype, s.rows, s.V, s.ignoreIndex, rowLoss,
        counted);
    G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy rows");
  }
  crossEntropyFinishDevice<<<1, 1024, 0, ctx.stream>>>(rowLoss, counted, s.rows, n.data, n.dtype,
                                                       loss.data, loss.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy");
  return Status();
}

Status crossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 1));
  CrossEntropyShape s;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, s));
  const TensorView &dloss = args.inputs[3], &dl = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dl, "result"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dl, "result", s.rows, s.V));
  if (s.rows == 0 || s.V == 0)
    return Status();
  const TensorView &logits = args.inputs[0], &targets = args.inputs[1], &n = args.inputs[2];
  crossEntropyGradDevice<<<rowBlocks(s.rows), kRowThreads, 0, contextOf(args).stream>>>(
      logits.data, logits.dtype, targets.data, targets.dtype, n.data, n.dtype, dloss.data,
      dloss.dtype, s.rows, s.V, s.ignoreIndex, dl.data, dl.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "cross_entropy_grad");
  return Status();
}

namespace {

//===----------------------------------------------------------------------===//
// Fused LM head + cross-entropy
//===----------------------------------------------------------------------===//
//
// lm_head_cross_entropy(_grad) never hold the [M, V] logits: they are made a
// tile at a time in the workspace, M in row blocks of up to Mb rows, each
// swept over the vocabulary in chunks of up to Vc columns. The CPU takes
// chunks of whole rows; a whole row of a 262K vocabulary is 1 MB of fp32,
// which would leave ~100 rows to the 128 MB of scratch, and GEMMs that thin
// are memory-bound: every chunk rereads the 1.3 GB table for the logits and
// for dx, and rewrites the 2.7 GB fp32 table_grad (at M = 16K, ~0.6 s). Tiles
// of ~1024 rows keep every product on the tensor cores (the table is read
// M/Mb times), at the price of a logsumexp carried across the chunks of a
// row (an online logsumexp, merged in a fixed order, in double).
//
// Forward, per tile: logits = x·tableᵀ (cuBLAS, fp32 out), then one kernel
// per row caps them, takes the chunk's max and Σexp in one read and merges
// them into the row's running (max, sum); the last chunk writes the row's
// loss term, and the terms are summed in row order at the end.
//
// Backward, per row block: that sweep again for the rows' logsumexp (unless
// the forward's lse output is given), then a second sweep that recomputes
// each tile's logits (except the last chunk's, still in the buffer from the
// first sweep, which is why it goes backwards), turns them into the logit
// gradient in one kernel per row (cap, softmax, onehot, scale, cap
// derivative, bf16 split), and multiplies it back:
// dx[rows] += g'·table[chunk] (fp32, across the chunks) and table_grad[chunk]
// += g'ᵀ·x[rows] (beta = 1 after the first row block). Without the forward's
// lse, the first sweep is one more logit GEMM per row block than the CPU's
// scheme.
//
// With bf16 x and table (the model's case), g' goes into the products as the
// bf16 pair hi + lo (splitBf16), as in lm_head_grad, except that a bf16 dx
// takes hi alone (one product instead of two; what lo adds is of the order
// of dx's own bf16 rounding). For table_grad the pair
// is stacked along the contraction: [hi; lo]ᵀ·[x; x] is one GEMM with K =
// 2·rows, which reads and writes the fp32 table_grad chunk once instead of
// twice. Other types keep g' in fp32 (in place of the logits) and go through
// gemm()'s staging.
//
// Ignored rows cost their share of the GEMMs but no other work; bad targets
// and num_items <= 0 (errors on the CPU) give NaN, as in the unfused kernels.

/// Rows of a row block, at most: large enough for the tensor cores in every
/// product (table_grad's contracts over 2·rows), small enough to leave a wide
/// vocabulary chunk.
constexpr int64_t kHeadRowBlock = 1024;
/// Vocabulary columns below which the row block shrinks instead.
constexpr int64_t kHeadMinChunk = 1024;

/// A chunk size of at most maxChunk splitting n into as few, nearly equal
/// parts (a multiple of `granule` where it splits), so that the last part is
/// not a thin remainder (V = 262208 is 2^18 + 64).
int64_t balancedChunk(int64_t n, int64_t maxChunk, int64_t granule) {
  maxChunk = std::max<int64_t>(maxChunk, 1);
  if (n <= maxChunk)
    return std::max<int64_t>(n, 1);
  int64_t parts = (n + maxChunk - 1) / maxChunk;
  int64_t c = (n + parts - 1) / parts;
  c = (c + granule - 1) / granule * granule;
  return std::min(c, maxChunk);
}

/// The tiling of the [M, V] logits: Mb rows × Vc columns at most per tile,
/// with `perElem` scratch bytes per tile element and `perRow` per row of a
/// block, out of `bytes`.
Status planHeadTiles(const KernelArgs &args, int64_t M, int64_t V, size_t bytes, size_t perElem,
                     size_t perRow, int64_t &Mb, int64_t &Vc) {
  // Slack for the 256-byte alignment of each buffer taken.
  const size_t slack = 8 * kAlign;
  int64_t rows = std::clamp<int64_t>(M, 1, kHeadRowBlock);
  for (;;) {
    size_t fixed = size_t(rows) * perRow + slack;
    size_t left = bytes > fixed ? bytes - fixed : 0;
    int64_t cols =
        int64_t(std::min<size_t>(size_t(std::max<int64_t>(V, 1)), left / (size_t(rows) * perElem)));
    if (cols >= std::min<int64_t>(V, kHeadMinChunk) || (rows == 1 && cols >= 1)) {
      Mb = balancedChunk(M, rows, 64);
      Vc = balancedChunk(V, cols, 128);
      return Status();
    }
    if (rows == 1)
      return args.fail("the workspace (" + std::to_string(bytes) +
                       " bytes free) is too small for a vocabulary of " + std::to_string(V));
    rows = (rows + 1) / 2;
  }
}

/// The operands of the fused kernels, checked as the CPU's lm_head and
/// cross_entropy check them.
struct HeadLossShape {
  int64_t M, H, V, ignoreIndex;
  float softcap; // 0 when absent
};

Status prepareHeadLoss(const KernelArgs &args, HeadLossShape &s) {
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &tv = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, x, "input"));
  G3RT_RETURN_IF_ERROR(checkFloatMatrix(args, table, "table"));
  s.V = table.dim(0);
  s.H = table.dim(1);
  s.M = leadingRows(x);
  if (x.dim(-1) != s.H)
    return args.fail("input " + shapeString(x.shape) + " does not contract with table " +
                     shapeString(table.shape));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  if (tv.numel() != s.M)
    return args.fail("targets must have one entry per row of the input (" + std::to_string(s.M) +
                     "), got " + describe(tv));
  G3RT_RETURN_IF_ERROR(checkScalar(args, args.inputs[3], "num_items"));
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", s.ignoreIndex));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  s.softcap = softcap.value_or(0.0f);
  return Status();
}

/// Whether cuBLAS multiplies x and table as they are into fp32 logits, so
/// that gemm() stages nothing for them.
bool nativeLogits(const TensorView &x, const TensorView &table) {
  return x.dtype == table.dtype && nativeCombination(x.dtype, DType::F32);
}

/// logits[mb, vc] = x[rows]·table[v0.., H]ᵀ in fp32, before the cap: one tile.
Status tileLogits(const KernelArgs &args, CudaContext &ctx, Scratch &inner, const HeadLossShape &s,
                  const Operand &xRows, int64_t mb, int64_t v0, int64_t vc, float *logits) {
  const TensorView &table = args.inputs[1];
  return gemm(args, ctx, inner, mb, vc, s.H, xRows,
              Operand{offsetBytes(table.data, table.dtype, v0 * s.H), table.dtype, s.H, true},
              Output{logits, DType::F32, vc}, 0.0f);
}

/// The forward sweep of the fused head over tiles of rows and vocabulary:
/// the loss into `loss`, each row's logsumexp into `lseOut` when given, and
/// with `accuracy` (two device counters, zeroed) token_accuracy's counts.
Status headLossSweep(const KernelArgs &args, const HeadLossShape &s, const TensorView &loss,
                     float *lseOut, unsigned long long *accuracy, Scratch &scratch) {
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  const TensorView &n = args.inputs[3];
  CudaContext &ctx = contextOf(args);
  // Every row's term, summed in row order at the end.
  double *rowLoss = static_cast<double *>(scratch.take(size_t(s.M) * 8 + 8));
  int *counted = static_cast<int *>(scratch.take(size_t(s.M) * 4 + 4));
  if (!rowLoss || !counted)
    return args.fail("the workspace is too small for " + std::to_string(s.M) + " rows");

  // Types cuBLAS cannot take as they are leave half of the rest to gemm()
  // for staging.
  const size_t own = nativeLogits(x, table) ? scratch.bytes : scratch.bytes / 2;
  const size_t perRow = 4 + 8 + 4 + (accuracy ? 4 + 8 : 0);
  int64_t Mb, Vc;
  G3RT_RETURN_IF_ERROR(planHeadTiles(args, s.M, s.V, own, 4, perRow, Mb, Vc));
  float *runMax = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  double *runSum = static_cast<double *>(scratch.take(size_t(Mb) * 8));
  float *targetLogit = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  float *runBest = accuracy ? static_cast<float *>(scratch.take(size_t(Mb) * 4)) : nullptr;
  int64_t *runIdx = accuracy ? static_cast<int64_t *>(scratch.take(size_t(Mb) * 8)) : nullptr;
  float *logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
  if (!runMax || !runSum || !targetLogit || !logits || (accuracy && (!runBest || !runIdx)))
    return args.fail("the workspace is too small for the logits of " + std::to_string(Mb) +
                     " rows");
  Scratch inner = scratch; // what gemm() may stage in

  // At least one chunk, so that a row's term is written even when V = 0.
  const int64_t chunks = std::max<int64_t>(1, (s.V + Vc - 1) / Vc);
  for (int64_t m0 = 0; m0 < s.M; m0 += Mb) {
    const int64_t mb = std::min(Mb, s.M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * s.H), x.dtype, s.H, false};
    for (int64_t j = 0; j < chunks; ++j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      // Capped by the kernels below.
      G3RT_RETURN_IF_ERROR(tileLogits(args, ctx, inner, s, xRows, mb, v0, vc, logits));
      headLossStatsDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          j == 0, j == chunks - 1, runMax, runSum, targetLogit, nullptr, rowLoss, counted, lseOut);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy rows");
      if (accuracy && vc > 0) {
        headArgmaxDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
            logits, mb, vc, v0, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap, j == 0,
            j == chunks - 1, runBest, runIdx, accuracy);
        G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_eval argmax");
      }
    }
  }
  crossEntropyFinishDevice<<<1, 1024, 0, ctx.stream>>>(rowLoss, counted, s.M, n.data, n.dtype,
                                                       loss.data, loss.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy");
  return Status();
}

} // namespace

Status lmHeadCrossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/false));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
  float *lseOut = nullptr;
  if (args.outputs.size() == 2) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.outputs[1], s.M));
    lseOut = static_cast<float *>(args.outputs[1].data);
  }
  Scratch scratch = scratchOf(contextOf(args));
  return headLossSweep(args, s, loss, lseOut, nullptr, scratch);
}

Status lmHeadEvalKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 3));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &loss = args.outputs[0], &correct = args.outputs[1], &total = args.outputs[2];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "loss"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, correct, "correct"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, total, "total"));
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  auto *counters = static_cast<unsigned long long *>(scratch.take(2 * sizeof(unsigned long long)));
  if (!counters)
    return args.fail("the workspace is too small for the accuracy counters");
  G3RT_RETURN_IF_ERROR(memsetZero(args, counters, 2 * sizeof(unsigned long long)));
  G3RT_RETURN_IF_ERROR(headLossSweep(args, s, loss, nullptr, counters, scratch));
  tokenAccuracyFinishDevice<<<1, 1, 0, ctx.stream>>>(counters, correct.data, correct.dtype,
                                                     total.data, total.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_eval counts");
  return Status();
}

namespace {

/// One call of lm_head_cross_entropy_grad past its checks: the operands, the
/// tiling of the logits, and the buffers in the scratch space (the scheme is
/// described above).
struct HeadLossGrad {
  const KernelArgs &args;
  CudaContext &ctx;
  const HeadLossShape &s;
  const TensorView &x, &table, &targets, &n, &dloss, &dx;
  const TensorView *dtable; // table_grad, when wanted
  const float *lseIn;       // the forward's per-row logsumexp, when given
  const bool wantTable, split, dxDirect, stackX;
  int64_t Mb = 0, Vc = 0, chunks = 0;
  float *runMax = nullptr, *dxAcc = nullptr, *logits = nullptr;
  double *runSum = nullptr, *lse = nullptr;
  __nv_bfloat16 *xStack = nullptr, *pair = nullptr;
  Scratch inner; // what gemm() may stage in

  HeadLossGrad(const KernelArgs &args, const HeadLossShape &s, const TensorView *dtable,
               const float *lseIn)
      : args(args), ctx(contextOf(args)), s(s), x(args.inputs[0]), table(args.inputs[1]),
        targets(args.inputs[2]), n(args.inputs[3]), dloss(args.inputs[4]), dx(args.outputs[0]),
        dtable(dtable), lseIn(lseIn), wantTable(dtable != nullptr),
        split(x.dtype == DType::BF16 && table.dtype == DType::BF16),
        dxDirect(dx.dtype == DType::F32), stackX(split && wantTable) {}

  Status plan() {
    // Per tile element: the fp32 logits, plus the bf16 pair when split (the
    // fp32 g' otherwise replaces the logits in place). Per row: the running
    // (max, sum), the lse, an fp32 dx accumulator unless dx is fp32, and the
    // stacked [x; x] for table_grad.
    const size_t perElem = split ? 8 : 4;
    const size_t perRow =
        4 + 8 + 8 + (dxDirect ? 0 : size_t(s.H) * 4) + (stackX ? 2 * size_t(s.H) * 2 : 0);
    Scratch scratch = scratchOf(ctx);
    const bool native = split || (x.dtype == DType::F32 && table.dtype == DType::F32);
    const size_t own = native ? scratch.bytes : scratch.bytes / 2;
    G3RT_RETURN_IF_ERROR(planHeadTiles(args, s.M, s.V, own, perElem, perRow, Mb, Vc));
    runMax = static_cast<float *>(scratch.take(size_t(Mb) * 4));
    runSum = static_cast<double *>(scratch.take(size_t(Mb) * 8));
    lse = static_cast<double *>(scratch.take(size_t(Mb) * 8));
    dxAcc = dxDirect ? nullptr : static_cast<float *>(scratch.take(size_t(Mb) * size_t(s.H) * 4));
    xStack = stackX ? static_cast<__nv_bfloat16 *>(scratch.take(2 * size_t(Mb) * size_t(s.H) * 2))
                    : nullptr;
    logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
    pair = split ? static_cast<__nv_bfloat16 *>(scratch.take(2 * size_t(Mb) * size_t(Vc) * 2))
                 : nullptr;
    if (!runMax || !runSum || !lse || (!dxDirect && !dxAcc) || (stackX && !xStack) || !logits ||
        (split && !pair))
      return args.fail("the workspace is too small for the logits of " + std::to_string(Mb) +
                       " rows");
    inner = scratch;
    chunks = (s.V + Vc - 1) / Vc;
    return Status();
  }

  Operand tableRows(int64_t v0, bool trans) const {
    return Operand{offsetBytes(table.data, table.dtype, v0 * s.H), table.dtype, s.H, trans};
  }

  /// The pre-cap logits of rows m0.. (mb of them) and vocabulary v0..
  Status computeLogits(const Operand &xRows, int64_t mb, int64_t v0, int64_t vc) {
    return tileLogits(args, ctx, inner, s, xRows, mb, v0, vc, logits);
  }

  /// The gradients of rows m0.. (mb of them): both sweeps.
  Status rowBlock(int64_t m0) {
    const int64_t mb = std::min(Mb, s.M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * s.H), x.dtype, s.H, false};

    // Sweep 1: the rows' logsumexp, unless the forward gave it.
    if (lseIn) {
      widenDevice<<<cappedGrid(mb), kThreads, 0, ctx.stream>>>(lseIn + m0, mb, lse);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logsumexp");
    }
    for (int64_t j = 0; !lseIn && j < chunks; ++j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      G3RT_RETURN_IF_ERROR(computeLogits(xRows, mb, v0, vc));
      headLossStatsDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          j == 0, j == chunks - 1, runMax, runSum, nullptr, lse, nullptr, nullptr, nullptr);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logsumexp");
    }

    if (stackX) {
      // [x; x] for the stacked table_grad product (see above).
      size_t rowBytes = size_t(mb) * size_t(s.H) * 2;
      const void *src = offsetBytes(x.data, x.dtype, m0 * s.H);
      cudaError_t e = cudaMemcpyAsync(xStack, src, rowBytes, cudaMemcpyDeviceToDevice, ctx.stream);
      if (e == cudaSuccess)
        e = cudaMemcpyAsync(reinterpret_cast<char *>(xStack) + rowBytes, src, rowBytes,
                            cudaMemcpyDeviceToDevice, ctx.stream);
      if (e != cudaSuccess)
        return cudaFailure(args, e, "stacking the input rows");
    }
    const Output dxOut = dxDirect
                             ? Output{offsetBytes(dx.data, dx.dtype, m0 * s.H), DType::F32, s.H}
                             : Output{dxAcc, DType::F32, s.H};

    // Sweep 2, last chunk first: after sweep 1 its logits are still in the
    // buffer.
    for (int64_t j = chunks - 1; j >= 0; --j)
      G3RT_RETURN_IF_ERROR(chunkGradients(m0, mb, j, xRows, dxOut));
    if (!dxDirect)
      G3RT_RETURN_IF_ERROR(copy2D(args, dxAcc, DType::F32, s.H,
                                  offsetBytes(dx.data, dx.dtype, m0 * s.H), dx.dtype, s.H, mb,
                                  s.H));
    return Status();
  }

  /// Sweep 2 on chunk j of rows m0..: the logit gradient, and its products
  /// into table_grad and dx.
  Status chunkGradients(int64_t m0, int64_t mb, int64_t j, const Operand &xRows,
                        const Output &dxOut) {
    const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
    const bool dxFirst = j == chunks - 1; // dx accumulates from this chunk on
    if (!dxFirst || lseIn)
      G3RT_RETURN_IF_ERROR(computeLogits(xRows, mb, v0, vc));
    __nv_bfloat16 *hi = pair, *lo = split ? pair + mb * vc : nullptr;
    headLossGradDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
        logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap, lse,
        n.data, n.dtype, dloss.data, dloss.dtype, split ? nullptr : logits, hi, lo);
    G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_grad logit gradient");
    const float tableBeta = m0 == 0 ? 0.0f : 1.0f;
    const Output tableOut{wantTable ? offsetBytes(dtable->data, DType::F32, v0 * s.H) : nullptr,
                          DType::F32, s.H};
    if (split) {
      // table_grad[v0.., H] (+)= [hi; lo][2mb, vc]ᵀ·[x; x][2mb, H]
      if (wantTable)
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, vc, s.H, 2 * mb,
                                  Operand{pair, DType::BF16, vc, true},
                                  Operand{xStack, DType::BF16, s.H, false}, tableOut, tableBeta));
      // dx[m0.., H] (+)= hi·table[v0.., H] + lo·table[v0.., H]
      G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, s.H, vc, Operand{hi, DType::BF16, vc, false},
                                tableRows(v0, false), dxOut, dxFirst ? 0.0f : 1.0f));
      // lo carries the part of g' below bf16's 8 bits: about as much as a
      // bf16 dx rounds away itself, so the product is left out there.
      if (dx.dtype != DType::BF16)
        G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, mb, s.H, vc,
                                  Operand{lo, DType::BF16, vc, false}, tableRows(v0, false), dxOut,
                                  1.0f));
      return Status();
    }
    // The fp32 g' replaced the logits.
    if (wantTable)
      G3RT_RETURN_IF_ERROR(gemm(args, ctx, inner, vc, s.H, mb,
                                Operand{logits, DType::F32, vc, true}, xRows, tableOut, tableBeta));
    return gemm(args, ctx, inner, mb, s.H, vc, Operand{logits, DType::F32, vc, false},
                tableRows(v0, false), dxOut, dxFirst ? 0.0f : 1.0f);
  }
};

} // namespace

Status lmHeadCrossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/true));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &dloss = args.inputs[4], &dx = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dx, "input_grad"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dx, "input_grad", s.M, s.H));
  // The forward's per-row logsumexp, when given, replaces sweep 1.
  const float *lseIn = nullptr;
  if (args.inputs.size() == 6) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.inputs[5], s.M));
    lseIn = static_cast<const float *>(args.inputs[5].data);
  }
  const bool wantTable = args.outputs.size() == 2;
  const TensorView *dtable = wantTable ? &args.outputs[1] : nullptr;
  if (wantTable) {
    G3RT_RETURN_IF_ERROR(checkShape(args, *dtable, "table_grad", {s.V, s.H}));
    // Accumulated across row blocks by cuBLAS (beta = 1), which must not
    // round between blocks; the op's table_grad is f32.
    if (dtable->dtype != DType::F32)
      return args.fail("table_grad must be f32, got " + describe(*dtable));
  }
  if (s.M == 0 || s.V == 0 || s.H == 0) {
    // Nothing to contract: zero gradients. (With V = 0 a counted target is
    // an error on the CPU; it goes unnoticed here.)
    G3RT_RETURN_IF_ERROR(memsetZero(args, dx.data, dx.bytes()));
    return wantTable ? memsetZero(args, dtable->data, dtable->bytes()) : Status();
  }
  HeadLossGrad call(args, s, dtable, lseIn);
  G3RT_RETURN_IF_ERROR(call.plan());
  for (int64_t m0 = 0; m0 < s.M; m0 += call.Mb)
    G3RT_RETURN_IF_ERROR(call.rowBlock(m0));
  return Status();
}

// Fused LM head + cross-entropy with its input gradient, in one sweep: per
// row block and vocabulary chunk, logits = x·tableᵀ (fp32), then one kernel
// per row turns the tile into p = exp(l - M)·cap' against the row's running
// max M (bf16 with bf16 operands, as the bf16 dx of the backward above takes
// its g' hi alone), rescales the row's fp32 accumulator to the new M, and
// acc (+)= p·table[chunk]. The target's term is left out of p and added
// exactly at the end, where acc/S + (softmax_t - 1)·cap'_t·table_t, scaled
// by dloss/num_items, is the row's dx. Each tile of logits is computed once
// instead of twice (forward, then backward with the forward's lse).
Status lmHeadCrossEntropyAndGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossAndGrad(args));
  HeadLossShape s;
  G3RT_RETURN_IF_ERROR(prepareHeadLoss(args, s));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  const TensorView &n = args.inputs[3], &dloss = args.inputs[4];
  const TensorView &loss = args.outputs[0], &dx = args.outputs[1];
  if (s.M == 0 || s.V == 0 || s.H == 0) {
    // Nothing to sweep: the two kernels' own handling of empty shapes.
    G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadCrossEntropyKernel, "lm_head_cross_entropy",
                                   {x, table, targets, n}, {loss}, args.attrs));
    return runAsPart(args, lmHeadCrossEntropyGradKernel, "lm_head_cross_entropy_grad", args.inputs,
                     {dx}, args.attrs);
  }
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  double *rowLoss = static_cast<double *>(scratch.take(size_t(s.M) * 8));
  int *counted = static_cast<int *>(scratch.take(size_t(s.M) * 4));
  if (!rowLoss || !counted)
    return args.fail("the workspace is too small for " + std::to_string(s.M) + " rows");
  const bool split = x.dtype == DType::BF16 && table.dtype == DType::BF16;
  const bool native = split || (x.dtype == DType::F32 && table.dtype == DType::F32);
  const size_t own = native ? scratch.bytes : scratch.bytes / 2;
  const size_t perElem = split ? 6 : 4, perRow = 4 + 8 + 4 + size_t(s.H) * 4;
  int64_t Mb, Vc;
  G3RT_RETURN_IF_ERROR(planHeadTiles(args, s.M, s.V, own, perElem, perRow, Mb, Vc));
  auto *runMax = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  auto *runSum = static_cast<double *>(scratch.take(size_t(Mb) * 8));
  auto *targetLogit = static_cast<float *>(scratch.take(size_t(Mb) * 4));
  auto *acc = static_cast<float *>(scratch.take(size_t(Mb) * size_t(s.H) * 4));
  auto *logits = static_cast<float *>(scratch.take(size_t(Mb) * size_t(Vc) * 4));
  auto *pb =
      split ? static_cast<__nv_bfloat16 *>(scratch.take(size_t(Mb) * size_t(Vc) * 2)) : nullptr;
  if (!runMax || !runSum || !targetLogit || !acc || !logits || (split && !pb))
    return args.fail("the workspace is too small for the logits of " + std::to_string(Mb) +
                     " rows");
  Scratch inner = scratch; // what gemm() may stage in
  const int64_t chunks = (s.V + Vc - 1) / Vc;
  for (int64_t m0 = 0; m0 < s.M; m0 += Mb) {
    const int64_t mb = std::min(Mb, s.M - m0);
    const Operand xRows{offsetBytes(x.data, x.dtype, m0 * s.H), x.dtype, s.H, false};
    for (int64_t j = 0; j < chunks; ++j) {
      const int64_t v0 = j * Vc, vc = std::min(Vc, s.V - v0);
      G3RT_RETURN_IF_ERROR(tileLogits(args, ctx, inner, s, xRows, mb, v0, vc, logits));
      headOnePassTileDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
          logits, mb, vc, v0, s.V, targets.data, targets.dtype, m0, s.ignoreIndex, s.softcap,
          j == 0, runMax, runSum, targetLogit, acc, s.H, pb);
      G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_and_grad tile");
      // acc[mb, H] (+)= p[mb, vc]·table[v0.., H]
      const Operand p =
          split ? Operand{pb, DType::BF16, vc, false} : Operand{logits, DType::F32, vc, false};
      G3RT_RETURN_IF_ERROR(
          gemm(args, ctx, inner, mb, s.H, vc, p,
               Operand{offsetBytes(table.data, table.dtype, v0 * s.H), table.dtype, s.H, false},
               Output{acc, DType::F32, s.H}, j == 0 ? 0.0f : 1.0f));
    }
    headOnePassFinishDevice<<<rowBlocks(mb), kRowThreads, 0, ctx.stream>>>(
        acc, mb, s.H, s.V, m0, targets.data, targets.dtype, s.ignoreIndex, s.softcap, runMax,
        runSum, targetLogit, table.data, table.dtype, n.data, n.dtype, dloss.data, dloss.dtype,
        dx.data, dx.dtype, rowLoss, counted);
    G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_and_grad rows");
  }
  crossEntropyFinishDevice<<<1, 1024, 0, ctx.stream>>>(rowLoss, counted, s.M, n.data, n.dtype,
                                                       loss.data, loss.dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "lm_head_cross_entropy_and_grad loss");
  return Status();
}

/// TRL's mean token accuracy, as two counts the caller sums over batches.
Status tokenAccuracyKernel(const KernelArgs &args) {
  int64_t ignoreIndex, rows, V;
  G3RT_RETURN_IF_ERROR(checkTokenAccuracy(args, ignoreIndex, rows, V));
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1];
  CudaContext &ctx = contextOf(args);
  Scratch scratch = scratchOf(ctx);
  auto *counters = static_cast<unsigned long long *>(scratch.take(2 * sizeof(unsigned long long)));
  G3RT_RETURN_IF_ERROR(memsetZero(args, counters, 2 * sizeof(unsigned long long)));
  if (rows > 0 && V > 0) {
    tokenAccuracyDevice<<<rowBlocks(rows), kRowThreads, 0, ctx.stream>>>(
        logits.data, logits.dtype, tv.data, tv.dtype, rows, V, ignoreIndex, counters);
    G3RT_CUDA_CHECK_LAUNCH(args, "token_accuracy");
  }
  tokenAccuracyFinishDevice<<<1, 1, 0, ctx.stream>>>(counters, args.outputs[0].data,
                                                     args.outputs[0].dtype, args.outputs[1].data,
                                                     args.outputs[1].dtype);
  G3RT_CUDA_CHECK_LAUNCH(args, "token_accuracy counts");
  return Status();
}

} // namespace g3rt::cuda
