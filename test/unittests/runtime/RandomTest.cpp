//===- RandomTest.cpp - Philox generator tests ----------------------------===//
//
// Known-answer vectors of Philox4x32-10 (from the generator's publication
// material) and the properties the step relies on: determinism, independence
// of streams and counters, and a uniform distribution.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/random.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

using g3rt::Philox4x32Block;

namespace {

void expectBlock(Philox4x32Block got, Philox4x32Block want) {
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(got.v[i], want.v[i]) << "word " << i;
}

TEST(Philox, KnownAnswerZero) {
  expectBlock(g3rt::philox4x32_10({{0, 0, 0, 0}}, 0, 0),
              {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}});
}

TEST(Philox, KnownAnswerOnes) {
  expectBlock(g3rt::philox4x32_10({{~0u, ~0u, ~0u, ~0u}}, ~0u, ~0u),
              {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}});
}

TEST(Philox, KnownAnswerPi) {
  expectBlock(g3rt::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
                                  0xa4093822u, 0x299f31d0u),
              {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}});
}

TEST(Philox, UniformAtIsPureAndKeyed) {
  float a = g3rt::uniformAt(42, 7, 3, 1001);
  EXPECT_EQ(a, g3rt::uniformAt(42, 7, 3, 1001));
  // Changing any part of the key gives another draw.
  EXPECT_NE(a, g3rt::uniformAt(43, 7, 3, 1001));
  EXPECT_NE(a, g3rt::uniformAt(42, 8, 3, 1001));
  EXPECT_NE(a, g3rt::uniformAt(42, 7, 4, 1001));
  EXPECT_NE(a, g3rt::uniformAt(42, 7, 3, 1002));
}

TEST(Philox, UniformMomentsAndRange) {
  const int n = 1 << 18;
  double sum = 0, sumSq = 0;
  std::set<float> distinct;
  for (int i = 0; i < n; ++i) {
    float u = g3rt::uniformAt(1234, 0, 0, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sumSq += double(u) * u;
    if (i < 4096)
      distinct.insert(u);
  }
  double mean = sum / n, var = sumSq / n - mean * mean;
  // Standard error of the mean is about 0.00056 at this n.
  EXPECT_NEAR(mean, 0.5, 0.003);
  EXPECT_NEAR(var, 1.0 / 12.0, 0.002);
  EXPECT_GT(distinct.size(), 4000u);
}

} // namespace
