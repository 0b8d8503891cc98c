//===- random.h - counter-based random numbers ------------------*- C++ -*-===//
//
// Philox4x32-10, the counter-based generator every random op of a step uses
// (LoRA dropout, input jitter, Gumbel noise, SparseMixer coins). A draw is a
// pure function of (seed, micro-batch counter, stream, element index), so the
// CPU and CUDA backends, recomputation and a resumed run all see the same
// values. The header compiles as host C++ and as CUDA device code.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_RANDOM_H
#define G3MOE_RUNTIME_BASE_RANDOM_H

#include <cstdint>

#if defined(__CUDACC__)
#define G3RT_HOST_DEVICE __host__ __device__
#else
#define G3RT_HOST_DEVICE
#endif

namespace g3rt {

/// Four 32-bit words: a Philox counter or output block.
struct Philox4x32Block {
  uint32_t v[4];
};

/// Philox4x32 with 10 rounds (Salmon et al., SC'11) on `counter` under the
/// 64-bit key (`key0`, `key1`).
G3RT_HOST_DEVICE inline Philox4x32Block philox4x32_10(Philox4x32Block counter, uint32_t key0,
                                                      uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t *c = counter.v;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kMul0) * c[0];
    uint64_t p1 = uint64_t(kMul1) * c[2];
    uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    uint32_t n0 = hi1 ^ c[1] ^ key0;
    uint32_t n2 = hi0 ^ c[3] ^ key1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

/// Elements one random stream can address (four per 32-bit block counter).
inline constexpr uint64_t kMaxStreamElements = uint64_t(1) << 34;

/// The uniform float in [0, 1) made of the top 24 bits of `word`.
G3RT_HOST_DEVICE inline float uniformFromBits(uint32_t word) {
  return float(word >> 8) * (1.0f / 16777216.0f);
}

/// The Philox block holding elements 4 * block .. 4 * block + 3 of the random
/// stream `stream` for micro-batch `counter` under `seed` (uniformFromBits of
/// its words are the elements).
G3RT_HOST_DEVICE inline Philox4x32Block randomBlock(uint64_t seed, uint64_t counter,
                                                    uint32_t stream, uint64_t block) {
  Philox4x32Block ctr = {{uint32_t(block), stream, uint32_t(counter), uint32_t(counter >> 32)}};
  return philox4x32_10(ctr, uint32_t(seed), uint32_t(seed >> 32));
}

/// Element `index` of the random stream `stream` for micro-batch `counter`
/// under `seed`, uniform on [0, 1). Elements come four to a Philox block, so
/// one stream holds up to 2^34 elements (kMaxStreamElements).
G3RT_HOST_DEVICE inline float uniformAt(uint64_t seed, uint64_t counter, uint32_t stream,
                                        uint64_t index) {
  return uniformFromBits(randomBlock(seed, counter, stream, index >> 2).v[index & 3]);
}

/// uniformAt of one stream for elements read in increasing order (or any
/// order; it is only faster in order): each Philox block is drawn once for
/// its four elements.
class UniformReader {
public:
  UniformReader(uint64_t seed, uint64_t counter, uint32_t stream)
      : seed(seed), counter(counter), stream(stream) {}

  /// uniformAt(seed, counter, stream, index).
  float operator()(uint64_t index) {
    if (index >> 2 != block) {
      block = index >> 2;
      words = randomBlock(seed, counter, stream, block);
    }
    return uniformFromBits(words.v[index & 3]);
  }

private:
  uint64_t seed, counter;
  uint32_t stream;
  uint64_t block = ~uint64_t(0);
  Philox4x32Block words{};
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_RANDOM_H
