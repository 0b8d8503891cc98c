//===- dense_ops.cpp - C = A·Bᵀ for the CPU kernels -----------------------===//

#include "runtime/cpu/dense_ops.h"
#include "runtime/kernels/dense_checks.h"

namespace g3rt::cpu {
namespace {

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

} // namespace

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

/// Reads expert offsets [E + 1] and checks that they partition a prefix of
/// the M rows: start at 0, never decrease, end at most at M.
Status readExpertOffsets(const KernelArgs &args, const TensorView &t, int64_t experts, int64_t rows,
                         std::vector<int64_t> &offsets) {
  offsets.resize(size_t(experts + 1));
  for (int64_t e = 0; e <= experts; ++e)
    offsets[size_t(e)] = loadIndex(t, e);
  return checks::checkExpertOffsetValues(args, offsets, rows);
}

void addLowRank(const checks::MatmulShape &s, const std::vector<int64_t> &offsets, bool rankLast,
                const FloatOutput &y, int64_t cols, const checks::ProductDropout &drop,
                DType type) {
  if (!s.lowInput)
    return;
  const int64_t r = s.rank;
  std::vector<float> H = widen(*s.lowInput), L = widen(*s.lowWeight);
  for (int64_t e = 0; e < s.E; ++e) {
    const int64_t r0 = offsets[size_t(e)], rows = offsets[size_t(e + 1)] - r0;
    if (rows == 0)
      continue;
    std::vector<float> Le =
        rankLast ? std::vector<float>(L.begin() + e * cols * r, L.begin() + (e + 1) * cols * r)
                 : transpose(L.data() + e * r * cols, r, cols, cols);
    std::vector<float> term(size_t(rows * cols));
    gemmNT(H.data() + r0 * r, r, Le.data(), r, term.data(), cols, rows, cols, r);
    if (drop.mask) {
      const KeepMask keep(drop);
      for (int64_t i = 0, at = r0 * cols; i < rows * cols; ++i, ++at)
        term[size_t(i)] = keep(at, roundedAs(type, term[size_t(i)]), type);
    }
    float *p = y.data() + r0 * cols;
    for (size_t i = 0; i < term.size(); ++i)
      p[i] += term[i];
  }
}

} // namespace g3rt::cpu
