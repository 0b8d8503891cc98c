//===- status.h - error values of the runtime -------------------*- C++ -*-===//
//
// The runtime reports failure by value, never by exception or abort: a bad
// step.bin, a bad input or a kernel precondition becomes a Status whose
// message names what was wrong.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_BASE_STATUS_H
#define G3MOE_RUNTIME_BASE_STATUS_H

#include <string>
#include <utility>

namespace g3rt {

/// Success, or an error with a message.
class [[nodiscard]] Status {
public:
  /// Success.
  Status() = default;
  /// An error with `message`.
  static Status error(std::string message) {
    Status s;
    s.failed_ = true;
    s.message_ = std::move(message);
    return s;
  }
  bool ok() const { return !failed_; }
  const std::string &message() const { return message_; }
  /// The error with `context + ": "` in front of its message.
  Status withContext(const std::string &context) const {
    return ok() ? *this : error(context + ": " + message_);
  }

private:
  bool failed_ = false;
  std::string message_;
};

/// Returns from the enclosing function when `expr` is an error.
#define G3RT_RETURN_IF_ERROR(expr)                                                                 \
  do {                                                                                             \
    ::g3rt::Status g3rt_status_ = (expr);                                                          \
    if (!g3rt_status_.ok())                                                                        \
      return g3rt_status_;                                                                         \
  } while (0)

} // namespace g3rt

#endif // G3MOE_RUNTIME_BASE_STATUS_H
