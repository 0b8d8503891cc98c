//===- labels.h - the label value that takes no loss ------------*- C++ -*-===//
//
// The compiler writes the ignored label into the loss ops of a step and the
// runtime writes it into the targets of every micro-batch, so both take it
// from here: a step and the data fed to it must agree on which targets are
// skipped. The value is the HF / PyTorch convention, so pre-tokenized labels
// prepared for transformers keep their masks.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_LABELS_H
#define G3MOE_RUNTIME_BASE_LABELS_H

#include <cstdint>

namespace g3rt {

/// Label value that takes no loss (`ignore_index` of HF / PyTorch): the
/// step's cross-entropy and token accuracy skip the targets that hold it.
inline constexpr int32_t kIgnoreIndex = -100;

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_LABELS_H
