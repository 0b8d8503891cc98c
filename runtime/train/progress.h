//===- progress.h - g3moe-run's progress display ----------------*- C++ -*-===//
//
// On a terminal, one status line redrawn in place after every optimizer step
// (step/total, a bar, loss, learning rate, tokens/s, ETA), with log lines
// printed above it; elsewhere (a pipe, a file, CI) only the log lines, so
// logs stay greppable.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_TRAIN_PROGRESS_H
#define G3MOE_RUNTIME_TRAIN_PROGRESS_H

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>

namespace g3rt {

/// What the status line shows.
struct ProgressState {
  int64_t step = 0, total = 0;
  double loss = 0, learningRate = 0, tokensPerSecond = 0;
  /// Seconds left, or a negative value when unknown.
  double etaSeconds = -1;
};

/// The status line for `state`, `width` columns wide at most (no newline,
/// no escape sequences).
std::string formatProgressLine(const ProgressState &state, int width);

/// "1:02:03", "2:03" for `seconds`; "?" when negative.
std::string formatDuration(double seconds);

/// Log lines and, on a terminal, the status line under them.
class Progress {
public:
  /// `terminal`: draw the status line; `firstStep`: the step the run starts
  /// from (a resumed run), so the ETA counts only the steps timed here.
  Progress(std::ostream &out, bool terminal, int64_t total, int64_t firstStep);
  ~Progress();

  /// Prints `text` (one line, without the newline) above the status line.
  void line(const std::string &text);
  /// Records that optimizer step `step` finished and redraws the status line.
  void step(int64_t step, double loss, double learningRate, double tokensPerSecond);
  /// Leaves the status line where it is and moves below it.
  void finish();

private:
  void draw();
  void clear();

  std::ostream &out_;
  bool terminal_;
  int width_;
  int64_t firstStep_;
  ProgressState state_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

/// Whether standard output is a terminal (g3moe-run's default for the bar).
bool stdoutIsTerminal();

} // namespace g3rt

#endif // G3MOE_RUNTIME_TRAIN_PROGRESS_H
