//===- line_reader.cpp - lines of a stream, each of bounded size ----------===//

#include "runtime/data/line_reader.h"

#include <cstring>

namespace g3rt {

namespace {

/// Bytes read from the stream at a time.
constexpr size_t kBlockBytes = 64 * 1024;

} // namespace

LineReader::LineReader(std::istream &in, size_t maxBytes)
    : in_(in.rdbuf()), maxBytes_(maxBytes), block_(kBlockBytes) {}

bool LineReader::next(std::string &line) {
  line.clear();
  tooLong_ = false;
  lineBytes_ = 0;
  bool any = false;
  for (;;) {
    if (pos_ == end_) {
      std::streamsize got =
          eof_ || !in_ ? 0 : in_->sgetn(block_.data(), std::streamsize(block_.size()));
      if (got <= 0) {
        eof_ = true;
        return any;
      }
      pos_ = 0;
      end_ = size_t(got);
    }
    any = true;
    const char *start = block_.data() + pos_;
    const char *newline = static_cast<const char *>(std::memchr(start, '\n', end_ - pos_));
    size_t n = newline ? size_t(newline - start) : end_ - pos_;
    lineBytes_ += n;
    if (!tooLong_ && lineBytes_ > maxBytes_) {
      tooLong_ = true;
      // Give back what the line took so far.
      std::string().swap(line);
    }
    if (!tooLong_)
      line.append(start, n);
    pos_ += n;
    if (newline) {
      ++pos_;
      return true;
    }
  }
}

} // namespace g3rt
