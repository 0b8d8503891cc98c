//===- kernels_dense.cpp - embedding, norm, linear and loss CPU kernels ---===//
//
// The fp32 reference for the dense layers of a step: embedding, Gemma's
// RMSNorm, the linear layers (plain, grouped per expert, the tied LM head)
// and the token cross-entropy, each with its backward. Every matrix product
// is brought to one form, C = A·Bᵀ with A and B row-major so that each output
// is a contiguous dot product; the operands are widened to fp32 once and
// transposed where the product needs it. Outputs are split across threads by
// whole elements (or whole rows), and every reduction runs in an order fixed
// by the shapes alone, so results do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/parallel.h"
#include "runtime/kernels/kernel.h"
#include "runtime/kernels/dense_checks.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace g3rt {
namespace {

using namespace checks;

/// Multiply-adds below which a product runs on the calling thread: parallelFor
/// starts fresh threads per call, costing tens of microseconds.
constexpr int64_t kMinParallelFlops = int64_t(1) << 20;
/// Elements below which widening and narrowing run inline.
constexpr int64_t kElementGrain = int64_t(1) << 15;

//===----------------------------------------------------------------------===//
// Operand access
//===----------------------------------------------------------------------===//

/// Widens elements [begin, end) of a float tensor into out[begin, end).
void loadRange(const TensorView &t, int64_t begin, int64_t end, float *out) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(out + begin, t.f32() + begin, size_t(end - begin) * sizeof(float));
    return;
  case DType::BF16: {
    const uint16_t *p = static_cast<const uint16_t *>(t.data);
    for (int64_t i = begin; i < end; ++i)
      out[i] = bf16ToFloat(p[i]);
    return;
  }
  default:
    for (int64_t i = begin; i < end; ++i)
      out[i] = t.load(i);
    return;
  }
}

/// Rounds in[begin, end) into elements [begin, end) of a float tensor.
void storeRange(const TensorView &t, int64_t begin, int64_t end, const float *in) {
  switch (t.dtype) {
  case DType::F32:
    std::memcpy(t.f32() + begin, in + begin, size_t(end - begin) * sizeof(float));
    return;
  case DType::BF16: {
    uint16_t *p = static_cast<uint16_t *>(t.data);
    for (int64_t i = begin; i < end; ++i)
      p[i] = floatToBF16(in[i]);
    return;
  }
  default:
    for (int64_t i = begin; i < end; ++i)
      t.store(i, in[i]);
    return;
  }
}

/// All elements of a float tensor as fp32 (toFloat, but threaded: embedding
/// tables are large).
std::vector<float> widen(const TensorView &t) {
  std::vector<float> out(size_t(t.numel()));
  parallelFor(
      t.numel(), [&](int64_t b, int64_t e) { loadRange(t, b, e, out.data()); }, kElementGrain);
  return out;
}

/// An fp32 view of an output: the output itself when it is f32, else a
/// scratch buffer rounded into it by commit().
class FloatOutput {
public:
  explicit FloatOutput(const TensorView &t) : view_(t) {
    if (t.dtype == DType::F32) {
      ptr_ = t.f32();
    } else {
      scratch_.assign(size_t(t.numel()), 0.0f);
      ptr_ = scratch_.data();
    }
  }
  float *data() const { return ptr_; }
  void zero() const { std::fill(ptr_, ptr_ + view_.numel(), 0.0f); }
  void commit() const {
    if (view_.dtype == DType::F32)
      return;
    parallelFor(
        view_.numel(), [&](int64_t b, int64_t e) { storeRange(view_, b, e, ptr_); }, kElementGrain);
  }

private:
  TensorView view_;
  std::vector<float> scratch_;
  float *ptr_ = nullptr;
};

inline int64_t loadIndex(const TensorView &t, int64_t i) {
  return t.dtype == DType::I64 ? t.i64()[i] : int64_t(t.i32()[i]);
}

//===----------------------------------------------------------------------===//
// Checks
//===----------------------------------------------------------------------===//

/// Reads expert offsets [E + 1] and checks that they partition a prefix of
/// the M rows: start at 0, never decrease, end at most at M.
Status readOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                   std::vector<int64_t> &offsets) {
  offsets.resize(size_t(experts + 1));
  for (int64_t e = 0; e <= experts; ++e)
    offsets[size_t(e)] = loadIndex(t, e);
  if (offsets[0] != 0)
    return args.fail("expert offset " + std::to_string(offsets[0]) + " at position 0 must be 0");
  for (int64_t e = 1; e <= experts; ++e)
    if (offsets[size_t(e)] < offsets[size_t(e - 1)])
      return args.fail("expert offset " + std::to_string(offsets[size_t(e)]) + " at position " +
                       std::to_string(e) + " is below the previous offset " +
                       std::to_string(offsets[size_t(e - 1)]));
  if (offsets[size_t(experts)] > rows)
    return args.fail("expert offset " + std::to_string(offsets[size_t(experts)]) + " at position " +
                     std::to_string(experts) + " exceeds the row count " + std::to_string(rows));
  return Status();
}

//===----------------------------------------------------------------------===//
// C = A·Bᵀ
//===----------------------------------------------------------------------===//

/// Dot products of one row `a` with R rows `b[r]` over k < K. Eight
/// independent fp32 lanes let the compiler vectorise without reassociating;
/// the lanes are then summed in a fixed tree and the tail added in order. The
/// R = 1 and R = 4 instances do identical arithmetic per output, so how the
/// columns are grouped cannot change a value.
template <int R> inline void dotRows(const float *a, const float *const *b, int64_t K, float *out) {
  float acc[R][8] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < 8; ++l)
        acc[r][l] += a[k + l] * b[r][k + l];
  for (int r = 0; r < R; ++r) {
    const float *s = acc[r];
    float sum = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (int64_t j = k; j < K; ++j)
      sum += a[j] * b[r][j];
    out[r] = sum;
  }
}

/// C[i·ldc + j] = Σ_k A[i·lda + k]·B[j·ldb + k] for i < M, j < N. Threads
/// take whole tiles of C; a tile pairs a few rows of A with a block of B rows
/// sized to stay in L2 while the rows of A stream past it.
void gemmNT(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
            int64_t M, int64_t N, int64_t K) {
  if (M <= 0 || N <= 0)
    return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  const int64_t tileM = 16;
  const int64_t tileN = std::clamp<int64_t>((int64_t(1) << 16) / K, 16, 256);
  int64_t tilesM = (M + tileM - 1) / tileM, tilesN = (N + tileN - 1) / tileN;
  int64_t flopsPerTile = std::min(M, tileM) * std::min(N, tileN) * K;
  int64_t grain = std::max<int64_t>(1, kMinParallelFlops / std::max<int64_t>(flopsPerTile, 1));
  parallelFor(
      tilesM * tilesN,
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int64_t i0 = (t / tilesN) * tileM, j0 = (t % tilesN) * tileN;
          int64_t i1 = std::min(M, i0 + tileM), j1 = std::min(N, j0 + tileN);
          for (int64_t i = i0; i < i1; ++i) {
            const float *a = A + i * lda;
            float *c = C + i * ldc;
            int64_t j = j0;
            for (; j + 4 <= j1; j += 4) {
              const float *b[4] = {B + j * ldb, B + (j + 1) * ldb, B + (j + 2) * ldb,
                                   B + (j + 3) * ldb};
              dotRows<4>(a, b, K, c + j);
            }
            for (; j < j1; ++j) {
              const float *b[1] = {B + j * ldb};
              dotRows<1>(a, b, K, c + j);
            }
          }
        }
      },
      grain);
}

/// The [cols, rows] transpose of a row-major [rows, cols] matrix whose rows
/// are `ld` apart.
std::vector<float> transpose(const float *src, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<float> out(size_t(rows * cols));
  const int64_t tile = 32;
  int64_t tilesC = (cols + tile - 1) / tile;
  parallelFor(
      tilesC,
      [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          int64_t c0 = t * tile, c1 = std::min(cols, c0 + tile);
          for (int64_t r0 = 0; r0 < rows; r0 += tile) {
            int64_t r1 = std::min(rows, r0 + tile);
            for (int64_t c = c0; c < c1; ++c)
              for (int64_t r = r0; r < r1; ++r)
                out[size_t(c * rows + r)] = src[r * ld + c];
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(rows * tile, 1)));
  return out;
}

//===----------------------------------------------------------------------===//
// Embedding
//===----------------------------------------------------------------------===//

/// Every id lies in [0, V).
Status checkIds(const KernelArgs &args, const TensorView &ids, int64_t vocab) {
  for (int64_t i = 0, n = ids.numel(); i < n; ++i) {
    int64_t id = loadIndex(ids, i);
    if (id < 0 || id >= vocab)
      return args.fail("id " + std::to_string(id) + " at position " + std::to_string(i) +
                       " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  return Status();
}

Status embeddingKernel(const KernelArgs &args) {
  double scale;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbedding(args, scale, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &ids = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIds(args, ids, V));
  float s = float(scale);
  // Only the looked-up rows are widened: the table may be far larger than
  // the batch.
  parallelFor(
      N,
      [&](int64_t t0, int64_t t1) {
        std::vector<float> row(static_cast<size_t>(H));
        for (int64_t t = t0; t < t1; ++t) {
          TensorView src = table;
          src.data = static_cast<char *>(table.data) +
                     size_t(loadIndex(ids, t) * H) * dtypeSize(table.dtype);
          loadRange(src, 0, H, row.data());
          for (float &v : row)
            v *= s;
          TensorView out = y;
          out.data = static_cast<char *>(y.data) + size_t(t * H) * dtypeSize(y.dtype);
          storeRange(out, 0, H, row.data());
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(H, 1)));
  return Status();
}

Status embeddingGradKernel(const KernelArgs &args) {
  double scale;
  int64_t paddingIdx;
  EmbeddingShape shape;
  G3RT_RETURN_IF_ERROR(checkEmbeddingGrad(args, scale, paddingIdx, shape));
  const int64_t V = shape.V, H = shape.H, N = shape.N;
  const TensorView &dy = args.inputs[0], &ids = args.inputs[1], &dtable = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkIds(args, ids, V));

  // A counting sort groups the tokens by id, keeping token order within an
  // id, so that each table row is summed by one thread in a fixed order.
  std::vector<int64_t> start(static_cast<size_t>(V + 1), 0);
  std::vector<int64_t> order(static_cast<size_t>(N));
  for (int64_t t = 0; t < N; ++t)
    ++start[size_t(loadIndex(ids, t) + 1)];
  for (int64_t v = 0; v < V; ++v)
    start[size_t(v + 1)] += start[size_t(v)];
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < N; ++t)
      order[size_t(next[size_t(loadIndex(ids, t))]++)] = t;
  }
  std::vector<float> g = widen(dy);
  FloatOutput out(dtable);
  float s = float(scale);
  parallelFor(
      V,
      [&](int64_t v0, int64_t v1) {
        for (int64_t v = v0; v < v1; ++v) {
          float *row = out.data() + v * H;
          std::fill(row, row + H, 0.0f);
          if (v == paddingIdx)
            continue;
          for (int64_t k = start[size_t(v)]; k < start[size_t(v + 1)]; ++k) {
            const float *src = g.data() + order[size_t(k)] * H;
            for (int64_t h = 0; h < H; ++h)
              row[h] += src[h] * s;
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(H, 1)));
  out.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// RMSNorm
//===----------------------------------------------------------------------===//

/// 1 / sqrt(mean(x²) + eps) of one row, the sum of squares in double.
inline float inverseRms(const float *x, int64_t D, double eps) {
  double ss = 0;
  for (int64_t d = 0; d < D; ++d)
    ss += double(x[d]) * x[d];
  return float(1.0 / std::sqrt(ss / double(D) + eps));
}

Status rmsNormKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNorm(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  std::vector<float> X = widen(x), gain = widen(w);
  for (float &g : gain)
    g += 1.0f;
  FloatOutput out(y);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const float *xr = X.data() + r * D;
          float *yr = out.data() + r * D;
          float inv = inverseRms(xr, D, eps);
          for (int64_t d = 0; d < D; ++d)
            yr[d] = (xr[d] * inv) * gain[size_t(d)];
        }
      },
      std::max<int64_t>(1, kElementGrain / D));
  out.commit();
  return Status();
}

Status rmsNormGradKernel(const KernelArgs &args) {
  double eps;
  NormShape shape;
  G3RT_RETURN_IF_ERROR(checkRmsNormGrad(args, eps, shape));
  const int64_t D = shape.D, rows = shape.rows;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &dy = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dw = args.outputs[1];
  std::vector<float> X = widen(x), G = widen(dy), gain = widen(w);
  for (float &g : gain)
    g += 1.0f;
  // Read before input_grad is written: the two may share a buffer.
  const std::vector<float> addend = shape.addend ? widen(*shape.addend) : std::vector<float>();

  // The weight gradient sums over rows: each fixed block of rows gets its
  // own partial sum, and the blocks are added in order afterwards, so the
  // result is the same for any thread count.
  const int64_t blockRows = 64;
  int64_t blocks = (rows + blockRows - 1) / blockRows;
  std::vector<double> partial(size_t(blocks * D), 0.0);
  FloatOutput dxOut(dx);
  parallelFor(
      blocks,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          double *dwPart = partial.data() + b * D;
          for (int64_t r = b * blockRows, rEnd = std::min(rows, r + blockRows); r < rEnd; ++r) {
            const float *xr = X.data() + r * D, *gr = G.data() + r * D;
            float *dxr = dxOut.data() + r * D;
            float inv = inverseRms(xr, D, eps);
            double dotGX = 0;
            for (int64_t d = 0; d < D; ++d) {
              float xhat = xr[d] * inv;
              dotGX += double(gr[d] * gain[size_t(d)]) * xhat;
              dwPart[d] += double(gr[d]) * xhat;
            }
            float mean = float(dotGX / double(D));
            for (int64_t d = 0; d < D; ++d) {
              float xhat = xr[d] * inv;
              float v = (gr[d] * gain[size_t(d)] - xhat * mean) * inv;
              dxr[d] = addend.empty() ? v : addend[size_t(r * D + d)] + v;
            }
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / (blockRows * D)));
  dxOut.commit();
  for (int64_t d = 0; d < D; ++d) {
    double sum = 0;
    for (int64_t b = 0; b < blocks; ++b)
      sum += partial[size_t(b * D + d)];
    dw.store(d, float(sum));
  }
  return Status();
}

//===----------------------------------------------------------------------===//
// Linear layers and the LM head
//===----------------------------------------------------------------------===//

/// The product's addend in fp32, read before the product is written (the
/// two may share a buffer); empty when there is none.
std::vector<float> readAddend(const MatmulShape &s) {
  return s.addend ? widen(*s.addend) : std::vector<float>();
}

/// Adds the addend to the fp32 result, which is then rounded once.
void addAddend(const std::vector<float> &a, const FloatOutput &y) {
  float *p = y.data();
  for (size_t i = 0; i < a.size(); ++i)
    p[i] += a[i];
}

Status linearKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearProduct(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &x = args.inputs[0], &w = args.inputs[1], &y = args.outputs[0];
  std::vector<float> X = widen(x), W = widen(w), A = readAddend(shape);
  FloatOutput Y(y);
  gemmNT(X.data(), in, W.data(), in, Y.data(), out, M, out, in);
  addAddend(A, Y);
  Y.commit();
  return Status();
}

Status linearGradInputKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradInput(args, shape));
  const int64_t out = shape.out, in = shape.in, M = shape.M;
  const TensorView &dy = args.inputs[0], &w = args.inputs[1], &dx = args.outputs[0];
  std::vector<float> G = widen(dy), W = widen(w), A = readAddend(shape);
  std::vector<float> Wt = transpose(W.data(), out, in, in);
  FloatOutput DX(dx);
  gemmNT(G.data(), out, Wt.data(), out, DX.data(), in, M, in, out);
  addAddend(A, DX);
  DX.commit();
  return Status();
}

Status linearGradWeightKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out;
  const TensorView &dy = args.inputs[0], &x = args.inputs[1], &dw = args.outputs[0];
  // dW = dyᵀ·x contracts over tokens: transposing both makes every output a
  // contiguous dot product over the token dimension.
  std::vector<float> G = widen(dy), X = widen(x);
  std::vector<float> Gt = transpose(G.data(), M, out, out), Xt = transpose(X.data(), M, in, in);
  FloatOutput DW(dw);
  gemmNT(Gt.data(), M, Xt.data(), M, DW.data(), in, out, in, M);
  DW.commit();
  return Status();
}

Status lmHeadKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 1));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &y = args.outputs[0];
  int64_t M, H, V;
  G3RT_RETURN_IF_ERROR(checkLinear(args, x, table, "table", y, "result", M, H, V));
  std::optional<float> softcap;
  G3RT_RETURN_IF_ERROR(readSoftcap(args, softcap));
  std::vector<float> X = widen(x), T = widen(table);
  FloatOutput L(y);
  gemmNT(X.data(), H, T.data(), H, L.data(), V, M, V, H);
  if (softcap) {
    float c = *softcap;
    float *l = L.data();
    parallelFor(
        M * V,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i)
            l[i] = c * std::tanh(l[i] / c);
        },
        kElementGrain);
  }
  L.commit();
  return Status();
}

Status lmHeadGradKernel(const KernelArgs &args) {
  std::optional<float> softcap;
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkLmHeadGrad(args, softcap, shape));
  const int64_t M = shape.M, H = shape.in, V = shape.out;
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &dl = args.inputs[2];
  const TensorView &dx = args.outputs[0], &dtable = args.outputs[1];
  std::vector<float> X = widen(x), T = widen(table), G = widen(dl);
  if (softcap) {
    // The capped logits are not an operand, so the pre-cap logits are
    // recomputed for the derivative 1 - tanh²(l / c).
    std::vector<float> L(size_t(M * V));
    gemmNT(X.data(), H, T.data(), H, L.data(), V, M, V, H);
    float c = *softcap;
    parallelFor(
        M * V,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            float t = std::tanh(L[size_t(i)] / c);
            G[size_t(i)] *= 1.0f - t * t;
          }
        },
        kElementGrain);
  }
  std::vector<float> Tt = transpose(T.data(), V, H, H);
  FloatOutput DX(dx);
  gemmNT(G.data(), V, Tt.data(), V, DX.data(), H, M, H, V);
  DX.commit();
  Tt = {};
  std::vector<float> Gt = transpose(G.data(), M, V, V), Xt = transpose(X.data(), M, H, H);
  FloatOutput DT(dtable);
  gemmNT(Gt.data(), M, Xt.data(), M, DT.data(), H, V, H, M);
  DT.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Expert (grouped) linear layers
//===----------------------------------------------------------------------===//

Status expertLinearKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinear(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &x = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &y = args.outputs[0];
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  std::vector<float> X = widen(x), W = widen(w), A = readAddend(shape);
  FloatOutput Y(y);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    gemmNT(X.data() + r0 * in, in, W.data() + e * out * in, in, Y.data() + r0 * out, out, rows, out,
           in);
  }
  std::fill(Y.data() + offsets[size_t(E)] * out, Y.data() + M * out, 0.0f);
  addAddend(A, Y);
  Y.commit();
  return Status();
}

Status expertLinearGradInputKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradInput(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &w = args.inputs[2];
  const TensorView &dx = args.outputs[0];
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  std::vector<float> G = widen(dy), W = widen(w), A = readAddend(shape);
  FloatOutput DX(dx);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    if (rows == 0)
      continue;
    std::vector<float> Wt = transpose(W.data() + e * out * in, out, in, in);
    gemmNT(G.data() + r0 * out, out, Wt.data(), out, DX.data() + r0 * in, in, rows, in, out);
  }
  std::fill(DX.data() + offsets[size_t(E)] * in, DX.data() + M * in, 0.0f);
  addAddend(A, DX);
  DX.commit();
  return Status();
}

Status expertLinearGradWeightKernel(const KernelArgs &args) {
  MatmulShape shape;
  G3RT_RETURN_IF_ERROR(checkExpertLinearGradWeight(args, shape));
  const int64_t M = shape.M, in = shape.in, out = shape.out, E = shape.E;
  const TensorView &dy = args.inputs[0], &off = args.inputs[1], &x = args.inputs[2];
  const TensorView &dw = args.outputs[0];
  std::vector<int64_t> offsets;
  G3RT_RETURN_IF_ERROR(readOffsets(args, off, E, M, offsets));
  // Transposed once for all experts: expert e's rows are then the columns
  // offsets[e]..offsets[e+1] of every row, a contiguous run of each.
  std::vector<float> G = widen(dy), X = widen(x);
  std::vector<float> Gt = transpose(G.data(), M, out, out), Xt = transpose(X.data(), M, in, in);
  FloatOutput DW(dw);
  for (int64_t e = 0; e < E; ++e) {
    int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    gemmNT(Gt.data() + r0, M, Xt.data() + r0, M, DW.data() + e * out * in, in, out, in, rows);
  }
  DW.commit();
  return Status();
}

//===----------------------------------------------------------------------===//
// Cross-entropy
//===----------------------------------------------------------------------===//

/// The checks shared by cross_entropy and its gradient; sets the row count,
/// the vocabulary size, whether each row counts, and num_items.
Status prepareCrossEntropy(const KernelArgs &args, int64_t &rows, int64_t &V,
                           std::vector<int64_t> &targets, double &numItems, bool &anyCounted) {
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1], &n = args.inputs[2];
  G3RT_RETURN_IF_ERROR(checkFloat(args, logits, "logits"));
  G3RT_RETURN_IF_ERROR(checkIndex(args, tv, "targets"));
  G3RT_RETURN_IF_ERROR(checkScalar(args, n, "num_items"));
  int64_t ignoreIndex;
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  V = logits.dim(-1);
  rows = leadingRows(logits);
  if (tv.numel() != rows)
    return args.fail("targets " + shapeString(tv.shape) + " do not match the rows of logits " +
                     shapeString(logits.shape));
  targets.resize(size_t(rows));
  anyCounted = false;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t t = loadIndex(tv, r);
    if (t == ignoreIndex) {
      t = -1;
    } else if (t < 0 || t >= V) {
      return args.fail("target " + std::to_string(t) + " at position " + std::to_string(r) +
                       " is outside [0, " + std::to_string(V) + ") and is not ignore_index (" +
                       std::to_string(ignoreIndex) + ")");
    } else {
      anyCounted = true;
    }
    targets[size_t(r)] = t;
  }
  numItems = n.load(0);
  // num_items counts the labels of the whole accumulation window, this
  // micro-batch's included, so it is positive whenever a row counts.
  if (anyCounted && !(numItems > 0))
    return args.fail("num_items is " + std::to_string(numItems) +
                     " but the targets hold counted labels");
  return Status();
}

/// logsumexp of one row, in double.
inline double logSumExp(const float *l, int64_t V) {
  float m = -INFINITY;
  for (int64_t v = 0; v < V; ++v)
    m = std::max(m, l[v]);
  double s = 0;
  for (int64_t v = 0; v < V; ++v)
    s += std::exp(double(l[v]) - double(m));
  return double(m) + std::log(s);
}

Status crossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 3, 1));
  int64_t rows, V;
  std::vector<int64_t> targets;
  double numItems;
  bool anyCounted;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, rows, V, targets, numItems, anyCounted));
  const TensorView &loss = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, loss, "result"));
  std::vector<float> L = widen(args.inputs[0]);
  std::vector<double> rowLoss(size_t(rows), 0.0);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          int64_t t = targets[size_t(r)];
          if (t < 0)
            continue;
          const float *l = L.data() + r * V;
          rowLoss[size_t(r)] = logSumExp(l, V) - double(l[t]);
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(V, 1)));
  // Summed in row order after the parallel part, so independent of threads.
  double sum = 0;
  for (double v : rowLoss)
    sum += v;
  loss.store(0, anyCounted ? float(sum / numItems) : 0.0f);
  return Status();
}

Status crossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 4, 1));
  int64_t rows, V;
  std::vector<int64_t> targets;
  double numItems;
  bool anyCounted;
  G3RT_RETURN_IF_ERROR(prepareCrossEntropy(args, rows, V, targets, numItems, anyCounted));
  const TensorView &dloss = args.inputs[3], &dl = args.outputs[0];
  G3RT_RETURN_IF_ERROR(checkScalar(args, dloss, "grad"));
  G3RT_RETURN_IF_ERROR(checkFloat(args, dl, "result"));
  G3RT_RETURN_IF_ERROR(checkRowsCols(args, dl, "result", rows, V));
  double coef = anyCounted ? double(dloss.load(0)) / numItems : 0.0;
  std::vector<float> L = widen(args.inputs[0]);
  FloatOutput D(dl);
  parallelFor(
      rows,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          float *d = D.data() + r * V;
          int64_t t = targets[size_t(r)];
          if (t < 0) {
            std::fill(d, d + V, 0.0f);
            continue;
          }
          const float *l = L.data() + r * V;
          double lse = logSumExp(l, V);
          for (int64_t v = 0; v < V; ++v) {
            double p = std::exp(double(l[v]) - lse);
            d[v] = float((p - (v == t ? 1.0 : 0.0)) * coef);
          }
        }
      },
      std::max<int64_t>(1, kElementGrain / std::max<int64_t>(V, 1)));
  D.commit();
  return Status();
}

} // namespace

/// Rows of the fused LM-head loss kernels handled at a time: the logits of a
/// chunk are [kHeadChunkRows, vocab] fp32.
constexpr int64_t kHeadChunkRows = 256;

/// Owned fp32 scratch shaped as a TensorView.
struct Scratch {
  std::vector<float> data;
  TensorView view;
  explicit Scratch(std::vector<int64_t> shape) {
    view.shape = std::move(shape);
    view.dtype = DType::F32;
    data.assign(size_t(view.numel()), 0.0f);
    view.data = data.data();
  }
};

/// Rows [begin, begin + count) of a tensor seen as [rows, last dim] (targets:
/// last dim 1).
TensorView rowSlice(const TensorView &t, int64_t begin, int64_t count, bool flat) {
  TensorView v = t;
  int64_t width = flat ? 1 : t.dim(-1);
  v.shape = flat ? std::vector<int64_t>{count} : std::vector<int64_t>{count, width};
  v.data = static_cast<uint8_t *>(t.data) + size_t(begin * width) * dtypeSize(t.dtype);
  return v;
}

/// lm_head + cross_entropy over chunks of rows: the full logits never exist.
/// With a second output, each row's logsumexp (0 on ignored rows) for
/// lm_head_cross_entropy_grad.
Status lmHeadCrossEntropyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/false));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  int64_t rows = leadingRows(x), V = table.dim(0);
  if (targets.numel() != rows)
    return args.fail("targets must have one entry per row of the input (" +
                     std::to_string(rows) + ")");
  const bool wantLse = args.outputs.size() == 2;
  int64_t ignoreIndex = 0;
  if (wantLse) {
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.outputs[1], rows));
    G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  }
  double total = 0;
  Scratch chunkLoss({});
  for (int64_t r0 = 0; r0 < rows; r0 += kHeadChunkRows) {
    int64_t n = std::min(kHeadChunkRows, rows - r0);
    Scratch logits({n, V});
    G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadKernel, "lm_head",
                                   {rowSlice(x, r0, n, false), table}, {logits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, crossEntropyKernel, "cross_entropy",
                                   {logits.view, rowSlice(targets, r0, n, true), args.inputs[3]},
                                   {chunkLoss.view}, args.attrs));
    total += chunkLoss.data[0];
    for (int64_t r = 0; wantLse && r < n; ++r) {
      int64_t t = loadIndex(targets, r0 + r);
      // (cross_entropy has refused targets out of range.)
      double lse = t == ignoreIndex ? 0.0 : logSumExp(logits.data.data() + r * V, V);
      args.outputs[1].store(r0 + r, float(lse));
    }
  }
  args.outputs[0].store(0, float(total));
  return Status();
}

/// The gradient of lmHeadCrossEntropyKernel, chunk by chunk; the table
/// gradient only when its output is present. The reference recomputes the
/// rows' logsumexp; a sixth input (the forward's lse, which the CUDA kernels
/// use instead) holds the same values and is only checked.
Status lmHeadCrossEntropyGradKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkHeadLossCounts(args, /*backward=*/true));
  const TensorView &x = args.inputs[0], &table = args.inputs[1], &targets = args.inputs[2];
  int64_t rows = leadingRows(x), V = table.dim(0), H = table.dim(1);
  if (targets.numel() != rows)
    return args.fail("targets must have one entry per row of the input (" +
                     std::to_string(rows) + ")");
  if (args.inputs.size() == 6)
    G3RT_RETURN_IF_ERROR(checkHeadLse(args, args.inputs[5], rows));
  bool wantTable = args.outputs.size() == 2;
  Scratch tableGrad({V, H}), chunkTableGrad({V, H});
  for (int64_t r0 = 0; r0 < rows; r0 += kHeadChunkRows) {
    int64_t n = std::min(kHeadChunkRows, rows - r0);
    Scratch logits({n, V}), dlogits({n, V});
    TensorView xs = rowSlice(x, r0, n, false);
    G3RT_RETURN_IF_ERROR(
        runAsPart(args, lmHeadKernel, "lm_head", {xs, table}, {logits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, crossEntropyGradKernel, "cross_entropy_grad",
                                   {logits.view, rowSlice(targets, r0, n, true), args.inputs[3],
                                    args.inputs[4]},
                                   {dlogits.view}, args.attrs));
    G3RT_RETURN_IF_ERROR(runAsPart(args, lmHeadGradKernel, "lm_head_grad",
                                   {xs, table, dlogits.view},
                                   {rowSlice(args.outputs[0], r0, n, false), chunkTableGrad.view},
                                   args.attrs));
    if (wantTable)
      for (size_t i = 0; i < tableGrad.data.size(); ++i)
        tableGrad.data[i] += chunkTableGrad.data[i];
  }
  if (wantTable)
    fromFloat(args.outputs[1], tableGrad.data);
  return Status();
}

/// TRL's mean token accuracy, as two counts the caller sums over batches.
Status tokenAccuracyKernel(const KernelArgs &args) {
  G3RT_RETURN_IF_ERROR(checkCounts(args, 2, 2));
  const TensorView &logits = args.inputs[0], &tv = args.inputs[1];
  int64_t ignoreIndex;
  G3RT_RETURN_IF_ERROR(args.requireInt("ignore_index", ignoreIndex));
  int64_t V = logits.dim(-1), rows = leadingRows(logits);
  if (tv.numel() != rows)
    return args.fail("targets " + shapeString(tv.shape) +
                     " do not match the rows of logits " + shapeString(logits.shape));
  std::vector<float> L = widen(logits);
  int64_t correct = 0, total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t t = loadIndex(tv, r);
    if (t == ignoreIndex)
      continue;
    const float *l = L.data() + r * V;
    int64_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (l[v] > l[best])
        best = v;
    correct += best == t;
    ++total;
  }
  args.outputs[0].store(0, float(correct));
  args.outputs[1].store(0, float(total));
  return Status();
}

void registerDenseKernels(KernelTable &table) {
  table.emplace_back("token_accuracy", tokenAccuracyKernel);
  table.emplace_back("lm_head_cross_entropy", lmHeadCrossEntropyKernel);
  table.emplace_back("lm_head_cross_entropy_grad", lmHeadCrossEntropyGradKernel);
  table.emplace_back("embedding", embeddingKernel);
  table.emplace_back("embedding_grad", embeddingGradKernel);
  table.emplace_back("rms_norm", rmsNormKernel);
  table.emplace_back("rms_norm_grad", rmsNormGradKernel);
  table.emplace_back("linear", linearKernel);
  table.emplace_back("linear_grad_input", linearGradInputKernel);
  table.emplace_back("linear_grad_weight", linearGradWeightKernel);
  table.emplace_back("lm_head", lmHeadKernel);
  table.emplace_back("lm_head_grad", lmHeadGradKernel);
  table.emplace_back("cross_entropy", crossEntropyKernel);
  table.emplace_back("cross_entropy_grad", crossEntropyGradKernel);
  table.emplace_back("expert_linear", expertLinearKernel);
  table.emplace_back("expert_linear_grad_input", expertLinearGradInputKernel);
  table.emplace_back("expert_linear_grad_weight", expertLinearGradWeightKernel);
}

} // namespace g3rt
