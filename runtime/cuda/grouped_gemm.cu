//===- grouped_gemm.cu - all experts' products in one launch --------------===//
//
// Tensor-core path (bf16 operands, Hopper's wgmma and tensor memory copies,
// built for sm_90a): a block of two warpgroups computes a 128x256 tile of
// one expert's rows, each warpgroup 64 rows with m64n256k16 instructions
// reading both operands from shared memory. One thread keeps four stages
// (64 of K each) filled with tensor copies, which write the 128-byte swizzle
// wgmma reads, up to three tiles ahead; an mbarrier per stage says when its bytes
// arrived and another when both warpgroups are done with it. The weight
// stage is K-major for W_e [N, K] (the forward product) and N-major for
// W_e [K, N] (the input gradient), which wgmma reads transposed. The copies
// zero what lies outside the tensors; rows past the expert's last are read
// but not written. Consecutive blocks walk bands of eight row tiles across
// the columns so that a band's rows and the weight columns it needs stay in
// L2.
//
// A LoRA term h·L_eᵀ (h [rows, r], r at most 32) joins the accumulation as
// one more K tile of 32 (zeros past r): its two operands are copied into
// shared memory of their own with the 64-byte swizzle (the 128-byte one for
// the N-major A of the input gradient) when the block starts, and the
// warpgroups multiply them after the main loop, so the term costs two more
// wgmma and no pass over the [rows, N] result. A term with a dropout mask
// (the input gradient through A of a dropped input) is multiplied into the
// accumulators again zeroed once the main product is staged in shared
// memory; each thread drops its elements of the term with the mask words it
// loaded before the main loop and adds them to its staged elements. (Dropped
// in the accumulators and then accumulated on, the term made ptxas keep the
// accumulators in local memory.)
//
// fp8_base's expert products run on the same kernel with e4m3 operands
// (groupedE4M3Product): a stage's 128-byte rows hold 128 values of K, so the
// copies and descriptors are the bf16 ones; both operands are K-major (the
// input gradient reads the transposed e4m3 copy of its weight). The tensor
// cores sum e4m3 products in fewer bits than fp32, so each stage is summed
// on its own, per half of the tile (m64n128k32 instructions), and added to
// the fp32 accumulators. After the main loop each accumulator is multiplied
// by its row's and its column's scale, and only then does the LoRA term
// (bf16, either layout of L) join it.
//
// Shapes the tensor-core path does not take (other types, sizes that are not
// multiples of 8, such as a LoRA rank of 4) run on plain fp32 kernels when
// they are small; that keeps every expert product of such steps off the
// host as well.
//
//===----------------------------------------------------------------------===//

#include "runtime/cuda/grouped_gemm.h"

#include "runtime/cuda/row_groups.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

namespace g3rt::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kBM = 128, kBN = 256, kBK = 64, kStages = 4, kThreads = 256;
constexpr int kBandRows = 8;                                    // row tiles per band
constexpr int kStageA = kBM * kBK * 2, kStageB = kBN * kBK * 2; // bytes
constexpr int kStageBytes = kStageA + kStageB;
// The low-rank tiles: h [kBM, kLowK] and L [kBN, kLowK], after the stages.
constexpr int kLowK = 32, kLowA = kBM * kLowK * 2, kLowB = kBN * kLowK * 2;
constexpr int kLowBytes = kLowA + kLowB;
// The stages start on a 1024-byte boundary, as the swizzle requires; the
// low-rank tiles follow them, then two mbarriers per stage and one for the
// low-rank tiles.
constexpr size_t kSmemBytes =
    size_t(kStages) * kStageBytes + kLowBytes + 1024 + (2 * kStages + 1) * 8;
// The output tile staged in fp32 over the stages, rows padded.
constexpr int kStageRow = kBN + 8;
static_assert(kBM * kStageRow * 4 <= kStages * kStageBytes, "the staged tile must fit");

__device__ __forceinline__ uint32_t sharedAddr(const void *p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void initBarrier(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void waitBarrier(uint32_t bar, uint32_t parity) {
  asm volatile("{\n.reg .pred done;\nwait:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra wait;\n}\n" ::"r"(bar),
               "r"(parity)
               : "memory");
}
__device__ __forceinline__ void arriveBarrier(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void expectBytes(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
/// A tensor copy of the box at (c0, c1, c2) of `map` into shared memory at
/// `dst`, completing on `bar`.
__device__ __forceinline__ void copyBox(uint32_t dst, const CUtensorMap &map, int c0, int c1,
                                        int c2, uint32_t bar) {
  asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes "
               "[%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
               : "memory");
}

/// wgmma's codes for the shared-memory swizzles.
constexpr uint64_t kSwizzle128 = 1, kSwizzle64 = 2;

/// A shared-memory matrix descriptor: start address, leading and stride
/// byte offsets (all in 16-byte units) and the swizzle.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t leading, uint32_t stride,
                                               uint64_t swizzle = kSwizzle128) {
  return uint64_t((addr & 0x3ffff) >> 4) | uint64_t((leading & 0x3ffff) >> 4) << 16 |
         uint64_t((stride & 0x3ffff) >> 4) << 32 | swizzle << 62;
}

/// The 128 accumulator registers of a 64x256 warpgroup tile as asm operands.
#define G3RT_ACCUMULATORS(d) G3RT_ACCUMULATORS_FROM(d, 0), G3RT_ACCUMULATORS_FROM(d, 64)
/// The 64 accumulator registers d[o], ..., d[o + 63] as asm operands.
#define G3RT_ACCUMULATORS_FROM(d, o)                                                               \
  "+f"(d[o + 0]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3]), "+f"(d[o + 4]), "+f"(d[o + 5]),  \
      "+f"(d[o + 6]), "+f"(d[o + 7]), "+f"(d[o + 8]), "+f"(d[o + 9]), "+f"(d[o + 10]),             \
      "+f"(d[o + 11]), "+f"(d[o + 12]), "+f"(d[o + 13]), "+f"(d[o + 14]), "+f"(d[o + 15]),         \
      "+f"(d[o + 16]), "+f"(d[o + 17]), "+f"(d[o + 18]), "+f"(d[o + 19]), "+f"(d[o + 20]),         \
      "+f"(d[o + 21]), "+f"(d[o + 22]), "+f"(d[o + 23]), "+f"(d[o + 24]), "+f"(d[o + 25]),         \
      "+f"(d[o + 26]), "+f"(d[o + 27]), "+f"(d[o + 28]), "+f"(d[o + 29]), "+f"(d[o + 30]),         \
      "+f"(d[o + 31]), "+f"(d[o + 32]), "+f"(d[o + 33]), "+f"(d[o + 34]), "+f"(d[o + 35]),         \
      "+f"(d[o + 36]), "+f"(d[o + 37]), "+f"(d[o + 38]), "+f"(d[o + 39]), "+f"(d[o + 40]),         \
      "+f"(d[o + 41]), "+f"(d[o + 42]), "+f"(d[o + 43]), "+f"(d[o + 44]), "+f"(d[o + 45]),         \
      "+f"(d[o + 46]), "+f"(d[o + 47]), "+f"(d[o + 48]), "+f"(d[o + 49]), "+f"(d[o + 50]),         \
      "+f"(d[o + 51]), "+f"(d[o + 52]), "+f"(d[o + 53]), "+f"(d[o + 54]), "+f"(d[o + 55]),         \
      "+f"(d[o + 56]), "+f"(d[o + 57]), "+f"(d[o + 58]), "+f"(d[o + 59]), "+f"(d[o + 60]),         \
      "+f"(d[o + 61]), "+f"(d[o + 62]), "+f"(d[o + 63])

/// Their names in the instruction: {%0, ..., %127}, and those of the first 64.
#define G3RT_ACCUMULATOR_LIST                                                                      \
  "{" G3RT_FIRST_NAMES                                                                             \
  ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, "   \
  "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, "     \
  "%100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, "     \
  "%115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define G3RT_HALF_ACCUMULATOR_LIST "{" G3RT_FIRST_NAMES "}"
#define G3RT_FIRST_NAMES                                                                           \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "     \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "     \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "     \
  "%56, %57, %58, %59, %60, %61, %62, %63"

/// d[64x256] += A·B for one warpgroup: A (64x16, K-major) and B (16x256,
/// K-major or, with TransposeB = 1, N-major) from shared-memory descriptors.
template <int TransposeB>
__device__ __forceinline__ void wgmma256(float (&d)[128], uint64_t a, uint64_t b) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " G3RT_ACCUMULATOR_LIST
               ", %128, %129, p, 1, 1, 0, %131;\n}\n"
               : G3RT_ACCUMULATORS(d)
               : "l"(a), "l"(b), "r"(1), "n"(TransposeB));
}
/// d[64x128] += A·B for one warpgroup with e4m3 operands, or d = A·B when
/// `accumulate` is false: A (64x32) and B (32x128), both K-major (e4m3
/// products take no transpose), from shared-memory descriptors.
__device__ __forceinline__ void wgmma128E4M3(float (&d)[64], uint64_t a, uint64_t b,
                                             bool accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " G3RT_HALF_ACCUMULATOR_LIST
               ", %64, %65, p, 1, 1;\n}\n"
               : G3RT_ACCUMULATORS_FROM(d, 0)
               : "l"(a), "l"(b), "r"(int(accumulate)));
}
/// Keeps the compiler from moving accumulator reads or writes across the
/// asynchronous matrix instructions.
template <int Count> __device__ __forceinline__ void fenceAccumulators(float (&d)[Count]) {
#pragma unroll
  for (int i = 0; i < Count; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}

/// The tensor maps of one product: x as [M rows][K] (a 64 x 128 box; e4m3:
/// 128 x 128), the weights as [E][N][K] (64 x 256; e4m3: 128 x 256) or
/// [E][K][N] (64 x 64, four per stage);
/// with a low-rank term h as [M][r] (32 x 128) and L as [E][N][r] (32 x 256)
/// or [E][r][N] (64 x 32, four per tile).
struct ProductMaps {
  CUtensorMap x, w, h, l;
};

/// The elements of K a stage holds: 128-byte rows of bf16 or of e4m3.
template <bool Fp8> constexpr int kStageK = Fp8 ? 2 * kBK : kBK;

/// Fills the stage at sA (x) and sB (the weight) with K tile `kt`, completing
/// on `full`.
template <bool WeightNK, bool Fp8>
__device__ __forceinline__ void fillStage(uint32_t sA, uint32_t sB, uint32_t full,
                                          const ProductMaps &maps, const Tile &tile, int64_t n0,
                                          int64_t kt) {
  expectBytes(full, kStageBytes);
  const int k0 = int(kt * kStageK<Fp8>);
  copyBox(sA, maps.x, k0, int(tile.begin), 0, full);
  if constexpr (WeightNK) {
    copyBox(sB, maps.w, k0, int(n0), int(tile.expert), full);
  } else {
#pragma unroll
    for (int j = 0; j < kBN / 64; ++j)
      copyBox(sB + j * (kBK * 128), maps.w, int(n0) + 64 * j, k0, int(tile.expert), full);
  }
}

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

/// Tile `t` of the grid: bands of kBandRows row tiles, walked column tile by
/// column tile. False for the spare blocks.
__device__ __forceinline__ bool bandTile(const RowGroups &groups, int64_t tileRows, int64_t t,
                                         int64_t colTiles, Tile &tile, int64_t &colTile) {
  const int64_t rowTiles = tileCount(groups, tileRows);
  if (t >= rowTiles * colTiles)
    return false;
  const int64_t band = t / (kBandRows * colTiles), first = band * kBandRows;
  const int64_t bandRows = min(int64_t(kBandRows), rowTiles - first);
  const int64_t local = t - band * kBandRows * colTiles;
  colTile = local / bandRows;
  return findTile(groups, tileRows, first + local % bandRows, true, tile);
}

/// Initialises the stages' barriers at `bars`: kStages `full` ones (one
/// arrival: the loader's, with the copies' bytes), then kStages `empty` ones
/// (an arrival per warpgroup), then the low-rank tiles' `full` one.
__device__ __forceinline__ void initStageBarriers(uint32_t bars) {
  for (int s = 0; s < kStages; ++s) {
    initBarrier(bars + uint32_t(s) * 8, 1);
    initBarrier(bars + uint32_t(kStages + s) * 8, 2);
  }
  initBarrier(bars + uint32_t(2 * kStages) * 8, 1);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/// Writes warpgroup wg's 64 x 256 accumulators to the fp32 tile `stage`
/// (rows of kStageRow floats). Accumulator i of a thread is row 16·warp +
/// lane/4 (+8 for odd i/2), columns 8·(i/4) + 2·(lane % 4) and the next.
__device__ __forceinline__ void stashAccumulators(float *stage, int wg, int lane,
                                                  const float (&acc)[128]) {
  const int warp = lane >> 5, l = lane & 31;
  float *mine = stage + (wg * 64 + warp * 16 + (l >> 2)) * kStageRow + (l & 3) * 2;
#pragma unroll
  for (int i = 0; i < 64; ++i)
    *reinterpret_cast<float2 *>(mine + (i & 1) * 8 * kStageRow + (i >> 1) * 8) =
        make_float2(acc[2 * i], acc[2 * i + 1]);
}

/// Copies the low-rank tiles of the block's rows and columns to sA and sB,
/// completing on `full`.
template <bool WeightNK>
__device__ __forceinline__ void fillLowRank(uint32_t sA, uint32_t sB, uint32_t full,
                                            const ProductMaps &maps, const Tile &tile, int64_t n0) {
  expectBytes(full, kLowBytes);
  copyBox(sA, maps.h, 0, int(tile.begin), 0, full);
  if constexpr (WeightNK) {
    copyBox(sB, maps.l, 0, int(n0), int(tile.expert), full);
  } else {
#pragma unroll
    for (int j = 0; j < kBN / 64; ++j)
      copyBox(sB + j * (kLowK * 128), maps.l, int(n0) + 64 * j, 0, int(tile.expert), full);
  }
}

/// The mask words of thread `lane` of warpgroup wg: for each of its two
/// rows (16·warp + lane/4 and 8 below), the eight words of the tile's 256
/// columns from n0 (N a multiple of 32); zeros past the tile's rows.
__device__ __forceinline__ void loadTermMask(uint32_t (&words)[2][8], const DropMask &mask,
                                             const Tile &tile, int64_t n0, int64_t N, int wg,
                                             int lane) {
  const int64_t row = tile.begin + wg * 64 + (lane >> 5) * 16 + ((lane & 31) >> 2);
#pragma unroll
  for (int r = 0; r < 2; ++r)
#pragma unroll
    for (int k = 0; k < 8; ++k)
      words[r][k] = row + 8 * r < tile.end && n0 + 32 * k < N
                        ? mask.bits[((row + 8 * r) * N + n0) / 32 + k]
                        : 0u;
}

/// Adds the accumulators (the low-rank term alone), dropped by the mask
/// words of loadTermMask, to the thread's elements of the fp32 tile `stage`
/// (stashAccumulators' places): a kept element is rounded to y's type (bf16
/// or, with `toBF16` false, f32), scaled and rounded again, as keyed_dropout
/// drops a tensor of that type.
__device__ __forceinline__ void addDroppedTerm(float *stage, int wg, int lane,
                                               const float (&acc)[128],
                                               const uint32_t (&words)[2][8], float scale,
                                               bool toBF16) {
  auto round = [toBF16](float v) { return toBF16 ? __bfloat162float(__float2bfloat16(v)) : v; };
  const int warp = lane >> 5, l = lane & 31;
  float *mine = stage + (wg * 64 + warp * 16 + (l >> 2)) * kStageRow + (l & 3) * 2;
#pragma unroll
  for (int i = 0; i < 128; ++i) {
    // Pair i / 2: row 8·(its parity) below the thread's first, columns
    // 8·(i / 4) + 2·(lane % 4) and the next.
    const int pair = i >> 1, col = (pair >> 1) * 8 + (l & 3) * 2 + (i & 1);
    const uint32_t keep = words[pair & 1][col >> 5] >> (col & 31);
    mine[(pair & 1) * 8 * kStageRow + (pair >> 1) * 8 + (i & 1)] +=
        keep & 1u ? round(__fmul_rn(round(acc[i]), scale)) : 0.0f;
  }
}

/// acc += h·Lᵀ for warpgroup wg from the low-rank tiles at sA and sB.
template <bool WeightNK>
__device__ __forceinline__ void multiplyLowRank(float (&acc)[128], uint32_t sA, uint32_t sB,
                                                int wg) {
  fenceAccumulators(acc);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < kLowK / 16; ++kk) {
    // 64-byte rows: eight of them per 512-byte swizzle atom.
    const uint64_t a = descriptor(sA + wg * 64 * (kLowK * 2) + kk * 32, 16, 512, kSwizzle64);
    if constexpr (WeightNK)
      wgmma256<0>(acc, a, descriptor(sB + kk * 32, 16, 512, kSwizzle64));
    else
      wgmma256<1>(acc, a, descriptor(sB + kk * 16 * 128, kLowK * 128, 1024));
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  fenceAccumulators(acc);
}

/// Writes the block's fp32 tile from `stage` to rows [tile.begin,
/// tile.end) and columns n0.. of y [*, N], plus the addend (NaN for a
/// poisoned tile): eight columns per thread, a row per 32 threads, so that
/// the rows leave in 16-byte pieces.
__device__ __forceinline__ void writeStagedTile(const float *stage, const Tile &tile, int64_t n0,
                                                int64_t N, const void *addend, void *y, DType yt) {
  const int c = (threadIdx.x & 31) * 8;
  if (n0 + c >= N)
    return;
  for (int r = threadIdx.x >> 5; r < kBM; r += kThreads / 32) {
    const int64_t row = tile.begin + r;
    if (row >= tile.end)
      break;
    const float4 *src = reinterpret_cast<const float4 *>(stage + r * kStageRow + c);
    float4 v[2] = {src[0], src[1]};
    const int64_t at = row * N + n0 + c;
    if (tile.kind == TileKind::Poison) {
      v[0] = v[1] = make_float4(NAN, NAN, NAN, NAN);
    } else if (addend) {
      v[0] = add4(v[0], loadFloat4(addend, yt, at / 4));
      v[1] = add4(v[1], loadFloat4(addend, yt, at / 4 + 1));
    }
    storeFloat4(y, yt, at / 4, v[0]);
    storeFloat4(y, yt, at / 4 + 1, v[1]);
  }
}

/// Multiplies warpgroup wg's accumulators of an e4m3 product by the scales
/// of their rows (rowScale, by the tile's rows) and columns (colScale, the
/// expert's N); accumulator i as in stashAccumulators.
__device__ __forceinline__ void scaleAccumulators(float (&acc)[128], const Tile &tile, int64_t n0,
                                                  int64_t N, const float *rowScale,
                                                  const float *colScale, int wg, int lane) {
  const int warp = lane >> 5, l = lane & 31;
  const int64_t row = tile.begin + wg * 64 + warp * 16 + (l >> 2);
  const float rs[2] = {row < tile.end ? rowScale[row] : 0.0f,
                       row + 8 < tile.end ? rowScale[row + 8] : 0.0f};
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    const int64_t col = n0 + j * 8 + (l & 3) * 2;
    const float c0 = col < N ? colScale[col] : 0.0f, c1 = col + 1 < N ? colScale[col + 1] : 0.0f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      acc[4 * j + 2 * r] = __fmul_rn(__fmul_rn(acc[4 * j + 2 * r], rs[r]), c0);
      acc[4 * j + 2 * r + 1] = __fmul_rn(__fmul_rn(acc[4 * j + 2 * r + 1], rs[r]), c1);
    }
  }
}

/// Issues the calling warpgroup's bf16 products of one stage (its rows of x
/// at sA, the weight at sB) into acc and commits them as one group.
template <bool WeightNK>
__device__ __forceinline__ void multiplyStage(float (&acc)[128], uint32_t sA, uint32_t sB) {
  fenceAccumulators(acc);
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    const uint64_t a = descriptor(sA + kk * 32, 16, 1024);
    if constexpr (WeightNK)
      wgmma256<0>(acc, a, descriptor(sB + kk * 32, 16, 1024));
    else
      wgmma256<1>(acc, a, descriptor(sB + kk * 16 * 128, kBK * 128, 1024));
  }
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/// The e4m3 products of one stage (128 values of K) for the calling
/// warpgroup, added to acc when they are done. The tensor cores sum e4m3
/// products in fewer bits than fp32, an error that grows with K (several
/// per cent of a product's size at model widths); so each half of the tile
/// (128 columns) sums one stage in `part`, 32 bytes of K per instruction,
/// and only those sums are added in fp32.
__device__ __forceinline__ void multiplyStageE4M3(float (&acc)[128], float (&part)[64], uint32_t sA,
                                                  uint32_t sB) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    fenceAccumulators(part);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
      wgmma128E4M3(part, descriptor(sA + kk * 32, 16, 1024),
                   descriptor(sB + h * 128 * 128 + kk * 32, 16, 1024), kk > 0);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    fenceAccumulators(part);
#pragma unroll
    for (int i = 0; i < 64; ++i)
      acc[64 * h + i] += part[i];
  }
}

/// `MaskedTerm`: the low-rank term has a dropout mask (termMask) and joins
/// the staged tile; a kernel of its own, which the others need not carry.
/// `LowNK`: L is [E][N][r] (else [E][r][N]). `Fp8`: x and the weight are
/// e4m3 (the weight [E][N][K]), and the product is scaled by rowScale and
/// colScale ([E][N]) before the low-rank term joins it.
template <bool WeightNK, bool LowNK, bool MaskedTerm, bool Fp8>
__global__ void __launch_bounds__(kThreads, 1)
    groupedProductDevice(const __grid_constant__ ProductMaps maps, RowGroups groups, int64_t K,
                         int64_t N, bool lowRank, DropMask termMask, const float *rowScale,
                         const float *colScale, const void *addend, void *y, DType yt) {
  static_assert(!Fp8 || WeightNK, "e4m3 weights are K-major");
  extern __shared__ unsigned char smem[];
  Tile tile;
  int64_t colTile;
  if (!bandTile(groups, kBM, blockIdx.x, (N + kBN - 1) / kBN, tile, colTile))
    return;
  const int64_t n0 = colTile * kBN;
  const int wg = threadIdx.x >> 7, lane = threadIdx.x & 127;

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i)
    acc[i] = 0.f;
  uint32_t words[2][8] = {}; // a masked term's mask words (loadTermMask)
  if (tile.kind == TileKind::Compute) {
    const uint32_t base = (sharedAddr(smem) + 1023) & ~1023u;
    // Per stage: `full` (the copies arrived) and `empty` (both warpgroups
    // are done with it), after the stages and the low-rank tiles.
    const uint32_t lowA = base + kStages * kStageBytes, lowB = lowA + kLowA;
    const uint32_t bars = lowA + kLowBytes, lowFull = bars + 2 * kStages * 8;
    auto full = [&](int64_t s) { return bars + uint32_t(s) * 8; };
    auto empty = [&](int64_t s) { return bars + uint32_t(kStages + s) * 8; };
    auto stageA = [&](int64_t s) { return base + uint32_t(s) * kStageBytes; };
    const int64_t kTiles = (K + kStageK<Fp8> - 1) / kStageK<Fp8>;
    const bool loader = threadIdx.x == 0;
    if (loader)
      initStageBarriers(bars);
    __syncthreads();
    if (loader) {
      for (int64_t t = 0; t < kStages && t < kTiles; ++t)
        fillStage<WeightNK, Fp8>(stageA(t), stageA(t) + kStageA, full(t), maps, tile, n0, t);
      if (lowRank)
        fillLowRank<LowNK>(lowA, lowB, lowFull, maps, tile, n0);
    }
    if (MaskedTerm && lowRank)
      loadTermMask(words, termMask, tile, n0, N, wg, lane);
    float part[64] = {}; // an e4m3 stage's sums (multiplyStageE4M3)
    for (int64_t kt = 0; kt < kTiles; ++kt) {
      const int64_t s = kt % kStages;
      waitBarrier(full(s), uint32_t(kt / kStages) & 1);
      const uint32_t sA = stageA(s) + wg * 64 * 128, sB = stageA(s) + kStageA;
      // `done`: the last K tile whose products are finished, whose stage may
      // be refilled once the other warpgroup says so too. A bf16 stage's
      // products run while the next stage's are issued.
      int64_t done = kt;
      if constexpr (Fp8) {
        multiplyStageE4M3(acc, part, sA, sB);
      } else {
        multiplyStage<WeightNK>(acc, sA, sB);
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
        fenceAccumulators(acc);
        done = kt - 1;
      }
      if (done >= 0) {
        const int64_t prev = done % kStages;
        if (lane == 0)
          arriveBarrier(empty(prev));
        const int64_t t = done + kStages;
        if (loader && t < kTiles) {
          waitBarrier(empty(prev), uint32_t(done / kStages) & 1);
          fillStage<WeightNK, Fp8>(stageA(prev), stageA(prev) + kStageA, full(prev), maps, tile, n0,
                                   t);
        }
      }
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    fenceAccumulators(acc);
    if constexpr (Fp8)
      scaleAccumulators(acc, tile, n0, N, rowScale, colScale + tile.expert * N, wg, lane);
    if (lowRank && !MaskedTerm) {
      waitBarrier(lowFull, 0);
      multiplyLowRank<LowNK>(acc, lowA, lowB, wg);
    }
  }

  // The tile goes through shared memory (the stages are free now) so that
  // its rows leave in 16-byte pieces: fp32, rows padded to 264 floats so
  // that the accumulators' stores do not conflict.
  __syncthreads();
  float *stage =
      reinterpret_cast<float *>(smem + (((sharedAddr(smem) + 1023) & ~1023u) - sharedAddr(smem)));
  stashAccumulators(stage, wg, lane, acc);
  if (MaskedTerm && lowRank && tile.kind == TileKind::Compute) {
    const uint32_t lowA = ((sharedAddr(smem) + 1023) & ~1023u) + kStages * kStageBytes;
#pragma unroll
    for (int i = 0; i < 128; ++i)
      acc[i] = 0.f;
    waitBarrier(lowA + kLowBytes + 2 * kStages * 8, 0);
    multiplyLowRank<LowNK>(acc, lowA, lowA + kLowA, wg);
    addDroppedTerm(stage, wg, lane, acc, words, termMask.scale, yt == DType::BF16);
  }
  __syncthreads();
  writeStagedTile(stage, tile, n0, N, addend, y, yt);
}

//===----------------------------------------------------------------------===//
// Plain fp32 kernel for the other shapes
//===----------------------------------------------------------------------===//

constexpr int kPlainRows = 16, kPlainCols = 64;

// A block takes 16 rows and 64 columns of y; a thread one column of four rows.
__global__ void plainProductDevice(RowGroups groups, const void *x, DType xt, int64_t K,
                                   const void *w, DType wt, bool weightNK, int64_t N,
                                   const void *addend, void *y, DType yt) {
  Tile tile;
  if (!findTile(groups, kPlainRows, blockIdx.x, true, tile))
    return;
  const int64_t n = int64_t(blockIdx.y) * kPlainCols + threadIdx.x % kPlainCols;
  if (n >= N)
    return;
  const int64_t we = tile.expert * N * K;
  for (int64_t row = tile.begin + threadIdx.x / kPlainCols; row < tile.end; row += 4) {
    float v = 0;
    if (tile.kind == TileKind::Compute)
      for (int64_t k = 0; k < K; ++k)
        v = fmaf(loadFloat(x, xt, row * K + k),
                 loadFloat(w, wt, we + (weightNK ? n * K + k : k * N + n)), v);
    if (tile.kind == TileKind::Poison)
      v = NAN;
    else if (addend)
      v += loadFloat(addend, yt, row * N + n);
    storeFloat(y, yt, row * N + n, v);
  }
}

// dW_e[o, i] = Σ over the rows m of expert e of dy[m, o]·x[m, i]; a thread
// per (o, i), grid.y the expert.
__global__ void plainWeightGradDevice(RowGroups groups, const void *dy, DType dyt, int64_t O,
                                      const void *x, DType xt, int64_t I, void *dw, DType dwt) {
  const int64_t e = blockIdx.y, at = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (at >= O * I)
    return;
  const int64_t o = at / I, i = at % I;
  float v = 0;
  if (!offsetsValid(groups)) {
    v = NAN;
  } else {
    const int64_t end = offsetAt(groups, e + 1);
    for (int64_t m = offsetAt(groups, e); m < end; ++m)
      v = fmaf(loadFloat(dy, dyt, m * O + o), loadFloat(x, xt, m * I + i), v);
  }
  storeFloat(dw, dwt, e * O * I + at, v);
}

bool floatType(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

bool tensorCoreFits(DType x, DType w, DType y, int64_t K, int64_t N) {
  return x == DType::BF16 && w == DType::BF16 && (y == DType::BF16 || y == DType::F32) &&
         K % 8 == 0 && N % 8 == 0;
}

template <bool WeightNK, bool LowNK, bool MaskedTerm, bool Fp8>
cudaError_t allowLargeSharedMemory() {
  static const cudaError_t e =
      cudaFuncSetAttribute(groupedProductDevice<WeightNK, LowNK, MaskedTerm, Fp8>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes));
  return e;
}

/// cuTensorMapEncodeTiled from the driver (the runtime has no wrapper).
PFN_cuTensorMapEncodeTiled_v12000 encodeTiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void *p = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

/// A map of a bf16 (or, with `e4m3`, one-byte) tensor of `dims` (innermost
/// first, three of them) with the 128-byte swizzle (or `swizzle`); elements
/// outside read as zeros.
bool encodeMap(CUtensorMap &map, const void *data, const uint64_t (&dims)[3],
               const uint32_t (&box)[3], CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B,
               bool e4m3 = false) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = encodeTiled();
  if (!encode)
    return false;
  const uint64_t size = e4m3 ? 1 : 2;
  const cuuint64_t strides[2] = {dims[0] * size, dims[0] * dims[1] * size};
  const cuuint32_t unit[3] = {1, 1, 1};
  return encode(&map, e4m3 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3,
                const_cast<void *>(data), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/// Launches the tensor-core kernel for `maps` (x and the weight encoded;
/// the low-rank maps are encoded here): bf16 (`rowScale` null, L laid out
/// as the weight) or e4m3 (L [E][N][r] with `lowNK`, else [E][r][N]).
cudaError_t tensorCoreProduct(cudaStream_t stream, ProductMaps &maps, const RowGroups &groups,
                              int64_t K, int64_t N, const LowRankTerm &low, bool weightNK,
                              bool lowNK, const float *rowScale, const float *colScale,
                              const void *addend, void *y, DType yt) {
  const int64_t blocks = maxTiles(groups.rows, groups.experts, kBM) * ((N + kBN - 1) / kBN);
  if (blocks > INT32_MAX || groups.rows > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
    return cudaErrorInvalidConfiguration;
  const bool fp8 = rowScale != nullptr;
  if (!fp8)
    lowNK = weightNK;
  const uint64_t M = uint64_t(groups.rows), E = uint64_t(groups.experts);
  if (low.h) {
    const uint64_t r = uint64_t(low.rank);
    const bool lowEncoded =
        encodeMap(maps.h, low.h, {r, M, 1}, {kLowK, kBM, 1}, CU_TENSOR_MAP_SWIZZLE_64B) &&
        (lowNK ? encodeMap(maps.l, low.l, {r, uint64_t(N), E}, {kLowK, kBN, 1},
                           CU_TENSOR_MAP_SWIZZLE_64B)
               : encodeMap(maps.l, low.l, {uint64_t(N), r, E}, {64, kLowK, 1}));
    if (!lowEncoded)
      return cudaErrorInvalidValue;
  }
  auto launch = [&](auto kernel, cudaError_t allowed) {
    if (allowed != cudaSuccess)
      return allowed;
    kernel<<<unsigned(blocks), kThreads, kSmemBytes, stream>>>(
        maps, groups, K, N, low.h != nullptr, low.mask, rowScale, colScale, addend, y, yt);
    return cudaGetLastError();
  };
#define G3RT_LAUNCH(W, L, M, F)                                                                    \
  launch(groupedProductDevice<W, L, M, F>, allowLargeSharedMemory<W, L, M, F>())
  const bool masked = low.h && low.mask.bits;
  if (fp8) {
    if (lowNK)
      return masked ? G3RT_LAUNCH(true, true, true, true) : G3RT_LAUNCH(true, true, false, true);
    return masked ? G3RT_LAUNCH(true, false, true, true) : G3RT_LAUNCH(true, false, false, true);
  }
  if (weightNK)
    return masked ? G3RT_LAUNCH(true, true, true, false) : G3RT_LAUNCH(true, true, false, false);
  return masked ? G3RT_LAUNCH(false, false, true, false) : G3RT_LAUNCH(false, false, false, false);
#undef G3RT_LAUNCH
}

} // namespace

/// The plain kernels' share: a narrow side (a LoRA rank) or little work.
bool plainFits(DType a, DType b, DType c, int64_t M, int64_t K, int64_t N) {
  return floatType(a) && floatType(b) && floatType(c) &&
         (std::min(K, N) <= 64 || double(M) * double(K) * double(N) <= double(1 << 28));
}

bool groupedProductFits(DType x, DType w, DType y, int64_t M, int64_t K, int64_t N) {
  return tensorCoreFits(x, w, y, K, N) || plainFits(x, w, y, M, K, N);
}

bool groupedLowRankFits(DType x, DType w, DType y, int64_t K, int64_t N, DType h, DType l,
                        int64_t rank, bool masked) {
  return tensorCoreFits(x, w, y, K, N) && h == DType::BF16 && l == DType::BF16 && rank > 0 &&
         rank <= kLowK && rank % 8 == 0 && (!masked || N % 32 == 0);
}

bool groupedWeightGradFits(DType dy, DType x, DType dw, int64_t M, int64_t O, int64_t I) {
  return plainFits(dy, x, dw, M, O, I);
}

cudaError_t groupedWeightGrad(cudaStream_t stream, const RowGroups &groups, const void *dy,
                              DType dyType, int64_t O, const void *x, DType xType, int64_t I,
                              void *dw, DType dwType) {
  const int64_t blocks = (O * I + 255) / 256;
  if (blocks == 0 || groups.experts == 0)
    return cudaSuccess;
  if (blocks > INT32_MAX || groups.experts > 65535)
    return cudaErrorInvalidConfiguration;
  plainWeightGradDevice<<<dim3(unsigned(blocks), unsigned(groups.experts)), 256, 0, stream>>>(
      groups, dy, dyType, O, x, xType, I, dw, dwType);
  return cudaGetLastError();
}

cudaError_t groupedExpertProduct(cudaStream_t stream, const RowGroups &groups, const void *x,
                                 DType xt, int64_t K, const void *w, DType wt, bool weightNK,
                                 int64_t N, const void *addend, void *y, DType yt,
                                 const LowRankTerm &low) {
  if (groups.rows == 0 || N == 0)
    return cudaSuccess;
  if (low.h && !groupedLowRankFits(xt, wt, yt, K, N, DType::BF16, DType::BF16, low.rank,
                                   low.mask.bits != nullptr))
    return cudaErrorInvalidValue;
  if (!tensorCoreFits(xt, wt, yt, K, N)) {
    const int64_t tiles = maxTiles(groups.rows, groups.experts, kPlainRows);
    const int64_t colTiles = (N + kPlainCols - 1) / kPlainCols;
    if (tiles > INT32_MAX || colTiles > 65535)
      return cudaErrorInvalidConfiguration;
    plainProductDevice<<<dim3(unsigned(tiles), unsigned(colTiles)), 4 * kPlainCols, 0, stream>>>(
        groups, x, xt, K, w, wt, weightNK, N, addend, y, yt);
    return cudaGetLastError();
  }
  ProductMaps maps;
  const uint64_t M = uint64_t(groups.rows), E = uint64_t(groups.experts);
  const bool encoded =
      encodeMap(maps.x, x, {uint64_t(K), M, 1}, {kBK, kBM, 1}) &&
      (weightNK ? encodeMap(maps.w, w, {uint64_t(K), uint64_t(N), E}, {kBK, kBN, 1})
                : encodeMap(maps.w, w, {uint64_t(N), uint64_t(K), E}, {64, kBK, 1}));
  if (!encoded)
    return cudaErrorInvalidValue;
  return tensorCoreProduct(stream, maps, groups, K, N, low, weightNK, false, nullptr, nullptr,
                           addend, y, yt);
}

bool groupedE4M3Fits(DType y, int64_t K, int64_t N) {
  return (y == DType::BF16 || y == DType::F32) && K % 16 == 0 && N % 8 == 0;
}

bool groupedE4M3LowRankFits(DType y, int64_t K, int64_t N, DType h, DType l, int64_t rank,
                            bool masked) {
  return groupedE4M3Fits(y, K, N) &&
         groupedLowRankFits(DType::BF16, DType::BF16, y, K, N, h, l, rank, masked);
}

cudaError_t groupedE4M3Product(cudaStream_t stream, const RowGroups &groups, const E4M3Operands &op,
                               int64_t K, int64_t N, const void *addend, void *y, DType yt,
                               const LowRankTerm &low, bool lowNK) {
  if (groups.rows == 0 || N == 0)
    return cudaSuccess;
  if (!groupedE4M3Fits(yt, K, N) ||
      (low.h && !groupedE4M3LowRankFits(yt, K, N, DType::BF16, DType::BF16, low.rank,
                                        low.mask.bits != nullptr)))
    return cudaErrorInvalidValue;
  ProductMaps maps;
  const uint64_t M = uint64_t(groups.rows), E = uint64_t(groups.experts);
  const bool encoded = encodeMap(maps.x, op.q, {uint64_t(K), M, 1}, {2 * kBK, kBM, 1},
                                 CU_TENSOR_MAP_SWIZZLE_128B, true) &&
                       encodeMap(maps.w, op.w, {uint64_t(K), uint64_t(N), E}, {2 * kBK, kBN, 1},
                                 CU_TENSOR_MAP_SWIZZLE_128B, true);
  if (!encoded)
    return cudaErrorInvalidValue;
  return tensorCoreProduct(stream, maps, groups, K, N, low, true, lowNK, op.rowScale, op.colScale,
                           addend, y, yt);
}

} // namespace g3rt::cuda
