//===- tensorboard.h - TensorBoard event files ------------------*- C++ -*-===//
//
// TensorBoard reads `events.out.tfevents.*` files: TFRecords (a length, its
// masked CRC32C, the payload, the payload's masked CRC32C) whose payloads are
// `tensorflow.Event` protocol buffers. g3moe writes the few fields scalars
// need by hand, so the runtime depends on neither protobuf nor TensorFlow;
// W&B's `wandb sync` and `tensorboard --logdir` read the result.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_IO_TENSORBOARD_H
#define G3MOE_RUNTIME_IO_TENSORBOARD_H

#include "runtime/base/status.h"

#include <cstdint>
#include <cstdio>
#include <string>

namespace g3rt {

/// CRC-32C (Castagnoli) of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32c(const void *data, size_t size, uint32_t crc = 0);

/// The CRC as TFRecord stores it: rotated right by 15 bits plus a constant,
/// so that a CRC over data holding CRCs stays well distributed.
uint32_t maskedCrc32c(const void *data, size_t size);

/// One TFRecord framing `payload`.
std::string tfRecord(const std::string &payload);

/// An Event proto holding only `file_version` (the first record of a file).
std::string encodeFileVersionEvent(double wallTime, const std::string &version);

/// An Event proto with one scalar summary value: `wall_time`, `step` and
/// `summary { value { tag, simple_value } }`.
std::string encodeScalarEvent(double wallTime, int64_t step, const std::string &tag, float value);

/// Appends scalar events to one new event file. Each record is written and
/// flushed whole, so a killed run leaves a file TensorBoard still reads.
class TensorBoardWriter {
public:
  TensorBoardWriter() = default;
  TensorBoardWriter(const TensorBoardWriter &) = delete;
  TensorBoardWriter &operator=(const TensorBoardWriter &) = delete;
  ~TensorBoardWriter();

  /// Creates `dir` and in it `events.out.tfevents.<unix time>.<host>.<pid>`
  /// (the pid keeps two runs started in the same second apart), and writes
  /// the `brain.Event:2` file-version record.
  Status open(const std::string &dir);
  bool isOpen() const { return file_ != nullptr; }
  /// The event file's path once open.
  const std::string &path() const { return path_; }

  /// Closes the file (further scalars are errors).
  void close();

  /// Logs `value` under `tag` at `step`, stamped with the current time.
  Status scalar(const std::string &tag, double value, int64_t step);

private:
  Status write(const std::string &payload);

  std::FILE *file_ = nullptr;
  std::string path_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_IO_TENSORBOARD_H
