//===- tensorboard.cpp - TensorBoard event files --------------------------===//

#include "runtime/io/tensorboard.h"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <unistd.h>

namespace g3rt {

namespace {

/// The reflected Castagnoli polynomial.
constexpr uint32_t kCastagnoli = 0x82f63b78u;
constexpr uint32_t kMaskDelta = 0xa282ead8u;

const std::array<uint32_t, 256> &crcTable() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k)
        c = (c & 1) ? (c >> 1) ^ kCastagnoli : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// Protocol-buffer wire format: a key is (field << 3 | wire type).
enum Wire : uint8_t { Varint = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5 };

void putVarint(std::string &out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(uint8_t(v)));
}

void putKey(std::string &out, uint32_t field, Wire wire) {
  putVarint(out, (uint64_t(field) << 3) | wire);
}

template <typename T> void putLittleEndian(std::string &out, T value) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  for (size_t i = 0; i < sizeof(T); ++i)
    out.push_back(char(uint8_t(bits >> (8 * i))));
}

void putBytes(std::string &out, uint32_t field, const std::string &bytes) {
  putKey(out, field, LengthDelimited);
  putVarint(out, bytes.size());
  out += bytes;
}

// Field numbers of tensorflow/core/util/event.proto and summary.proto.
constexpr uint32_t kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5;
constexpr uint32_t kSummaryValue = 1;
constexpr uint32_t kValueTag = 1, kValueSimpleValue = 2;

std::string eventHeader(double wallTime) {
  std::string out;
  putKey(out, kEventWallTime, Fixed64);
  putLittleEndian(out, wallTime);
  return out;
}

double unixTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

} // namespace

uint32_t crc32c(const void *data, size_t size, uint32_t crc) {
  const auto &table = crcTable();
  const auto *p = static_cast<const uint8_t *>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i)
    crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t maskedCrc32c(const void *data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + kMaskDelta;
}

std::string tfRecord(const std::string &payload) {
  std::string length;
  putLittleEndian(length, uint64_t(payload.size()));
  std::string out = length;
  putLittleEndian(out, maskedCrc32c(length.data(), length.size()));
  out += payload;
  putLittleEndian(out, maskedCrc32c(payload.data(), payload.size()));
  return out;
}

std::string encodeFileVersionEvent(double wallTime, const std::string &version) {
  std::string out = eventHeader(wallTime);
  putBytes(out, kEventFileVersion, version);
  return out;
}

std::string encodeScalarEvent(double wallTime, int64_t step, const std::string &tag, float value) {
  std::string v;
  putBytes(v, kValueTag, tag);
  putKey(v, kValueSimpleValue, Fixed32);
  putLittleEndian(v, value);
  std::string summary;
  putBytes(summary, kSummaryValue, v);

  std::string out = eventHeader(wallTime);
  putKey(out, kEventStep, Varint);
  putVarint(out, uint64_t(step));
  putBytes(out, kEventSummary, summary);
  return out;
}

TensorBoardWriter::~TensorBoardWriter() { close(); }

void TensorBoardWriter::close() {
  if (file_)
    std::fclose(file_);
  file_ = nullptr;
}

Status TensorBoardWriter::open(const std::string &dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return Status::error("cannot create " + dir + ": " + ec.message());
  char host[256] = "localhost";
  if (gethostname(host, sizeof host - 1) != 0)
    std::strcpy(host, "localhost");
  host[sizeof host - 1] = 0;
  double now = unixTime();
  path_ = dir + "/events.out.tfevents." + std::to_string(int64_t(now)) + "." + host + "." +
          std::to_string(int64_t(getpid()));
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_)
    return Status::error("cannot create " + path_ + ": " + std::strerror(errno));
  return write(encodeFileVersionEvent(now, "brain.Event:2"));
}

Status TensorBoardWriter::scalar(const std::string &tag, double value, int64_t step) {
  if (!file_)
    return Status::error("the TensorBoard event file is not open");
  return write(encodeScalarEvent(unixTime(), step, tag, float(value)));
}

Status TensorBoardWriter::write(const std::string &payload) {
  std::string record = tfRecord(payload);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() ||
      std::fflush(file_) != 0)
    return Status::error("cannot write " + path_ + ": " + std::strerror(errno));
  return Status();
}

} // namespace g3rt
