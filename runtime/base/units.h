//===- units.h - memory sizes in GiB ----------------------------*- C++ -*-===//
//
// Budgets are given in GiB (2^30 bytes) and reports print sizes in GiB with
// one decimal; the frontend, the compiler's memory planner and the runtime's
// memory checks share these, so that their numbers agree.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_UNITS_H
#define G3MOE_RUNTIME_BASE_UNITS_H

#include <cstdint>
#include <cstdio>
#include <string>

namespace g3rt {

/// Bytes in a GiB.
inline constexpr int64_t kGiB = int64_t(1) << 30;

/// `gb` GiB in bytes, truncated (memory_budget_gb and its kin).
inline int64_t gibToBytes(double gb) { return static_cast<int64_t>(gb * double(kGiB)); }

/// "72.5 GiB": `bytes` in GiB with one decimal.
inline std::string gibText(uint64_t bytes) {
  char text[40];
  std::snprintf(text, sizeof text, "%.1f GiB", double(bytes) / double(kGiB));
  return text;
}

/// gibText, or MiB with one decimal below 1 GiB, where a tenth of a GiB says
/// nothing.
inline std::string sizeText(uint64_t bytes) {
  if (bytes >= uint64_t(kGiB))
    return gibText(bytes);
  char text[40];
  std::snprintf(text, sizeof text, "%.1f MiB", double(bytes) / double(int64_t(1) << 20));
  return text;
}

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_UNITS_H
