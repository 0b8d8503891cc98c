//===- row_groups.cuh - finding a block's expert on the device --*- CUDA -*-===//
//
// Kernels over the rows of a buffer permuted by expert (lowrank_products.cu,
// grouped_gemm.cu) read the expert offsets on the device instead of waiting
// for them on the host: the grid is sized for the worst split of the rows
// into tiles, each block finds its tile from the offsets, and the spare
// blocks exit. Nothing here synchronises, so such kernels can be captured in
// a CUDA graph.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_CUDA_ROW_GROUPS_CUH
#define G3MOE_RUNTIME_CUDA_ROW_GROUPS_CUH

#include "runtime/cuda/cuda_context.h"
#include "runtime/cuda/lowrank_products.h"

namespace g3rt::cuda {

/// What a block does with its tile: compute an expert's rows, fill rows of
/// no expert (with the addend or zeros), or poison rows with NaN because the
/// offsets are not a valid split.
enum class TileKind { Compute, Zero, Poison };

struct Tile {
  int64_t expert = 0, begin = 0, end = 0; // rows [begin, end) of `expert`
  TileKind kind = TileKind::Compute;
};

__device__ inline int64_t offsetAt(const RowGroups &g, int64_t e) {
  return g.offsets ? loadIndex(g.offsets, g.offsetType, e) : (e == 0 ? 0 : g.rows);
}

/// offsets[0] = 0, non-decreasing, and at most the row count.
__device__ inline bool offsetsValid(const RowGroups &g) {
  if (!g.offsets)
    return true;
  int64_t prev = offsetAt(g, 0);
  if (prev != 0)
    return false;
  for (int64_t e = 1; e <= g.experts; ++e) {
    int64_t o = offsetAt(g, e);
    if (o < prev)
      return false;
    prev = o;
  }
  return prev <= g.rows;
}

/// Tile `t` when every expert's rows (and, with `withTail`, the rows past the
/// last expert) are cut into tiles of `tileRows`; false past the last tile.
/// With invalid offsets all rows form one group of poisoned tiles.
__device__ inline bool findTile(const RowGroups &g, int64_t tileRows, int64_t t, bool withTail,
                                Tile &tile) {
  if (!offsetsValid(g)) {
    if (t * tileRows >= g.rows)
      return false;
    tile = {0, t * tileRows, min(g.rows, (t + 1) * tileRows), TileKind::Poison};
    return true;
  }
  int64_t groups = g.experts + (withTail ? 1 : 0);
  int64_t lo = 0;
  for (int64_t e = 0; e < groups; ++e) {
    int64_t hi = e < g.experts ? offsetAt(g, e + 1) : g.rows;
    int64_t n = (hi - lo + tileRows - 1) / tileRows;
    if (t < n) {
      tile = {e, lo + t * tileRows, min(hi, lo + (t + 1) * tileRows),
              e < g.experts ? TileKind::Compute : TileKind::Zero};
      return true;
    }
    t -= n;
    lo = hi;
  }
  return false;
}

/// The number of tiles findTile gives with the tail, or 0 past a valid
/// split's last tile; `t` runs over [0, maxTiles).
__device__ inline int64_t tileCount(const RowGroups &g, int64_t tileRows) {
  if (!offsetsValid(g))
    return (g.rows + tileRows - 1) / tileRows;
  int64_t n = 0, lo = 0;
  for (int64_t e = 0; e <= g.experts; ++e) {
    int64_t hi = e < g.experts ? offsetAt(g, e + 1) : g.rows;
    n += (hi - lo + tileRows - 1) / tileRows;
    lo = hi;
  }
  return n;
}

/// The most tiles findTile can return for `rows` rows in `experts` groups.
inline int64_t maxTiles(int64_t rows, int64_t experts, int64_t tileRows) {
  return (rows + tileRows - 1) / tileRows + experts + 1;
}

} // namespace g3rt::cuda

#endif // G3MOE_RUNTIME_CUDA_ROW_GROUPS_CUH
