//===- line_reader.h - lines of a stream, each of bounded size --*- C++ -*-===//
//
// Reads JSONL data line by line without ever holding more of a line than a
// limit, so that one giant line is a clear error (or a skipped line) rather
// than gigabytes of memory.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DATA_LINE_READER_H
#define G3MOE_RUNTIME_DATA_LINE_READER_H

#include <cstddef>
#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace g3rt {

/// Splits a stream into lines as std::getline does ('\n' ends a line and is
/// dropped; a last line without one still counts), keeping at most
/// `maxBytes` bytes of a line.
class LineReader {
public:
  LineReader(std::istream &in, size_t maxBytes);

  /// The next line into `line`; false at the end of the stream. A line
  /// longer than maxBytes is read through to its end but not kept: `line`
  /// is then empty and tooLong() is true.
  bool next(std::string &line);
  /// Whether the last line was longer than maxBytes.
  bool tooLong() const { return tooLong_; }
  /// The length of the last line in bytes, kept or not.
  uint64_t lineBytes() const { return lineBytes_; }

private:
  std::streambuf *in_;
  size_t maxBytes_;
  std::vector<char> block_;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false, tooLong_ = false;
  uint64_t lineBytes_ = 0;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_DATA_LINE_READER_H
