//===- progress.cpp - g3moe-run's progress display ------------------------===//

#include "runtime/train/progress.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <sys/ioctl.h>
#include <unistd.h>

namespace g3rt {

namespace {

int terminalWidth() {
  winsize ws{};
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
    return int(ws.ws_col);
  return 100;
}

} // namespace

std::string formatDuration(double seconds) {
  if (!(seconds >= 0) || !std::isfinite(seconds))
    return "?";
  auto s = int64_t(std::llround(seconds));
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", (long long)(s / 3600),
                  (long long)(s / 60 % 60), (long long)(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

std::string formatProgressLine(const ProgressState &st, int width) {
  char head[64], tail[160];
  std::snprintf(head, sizeof head, "step %lld/%lld ", (long long)st.step, (long long)st.total);
  std::snprintf(tail, sizeof tail, " loss %.4f  lr %.3e  tokens/s %.0f  ETA %s", st.loss,
                st.learningRate, st.tokensPerSecond, formatDuration(st.etaSeconds).c_str());
  std::string left = head, right = tail;
  // The bar takes what the numbers leave, between 10 and 40 cells; on a
  // narrow terminal the numbers are cut rather than wrapped, since a wrapped
  // line can no longer be redrawn in place.
  int cells = std::clamp(width - int(left.size() + right.size()) - 2, 10, 40);
  double done = st.total > 0 ? std::clamp(double(st.step) / double(st.total), 0.0, 1.0) : 0;
  int filled = int(done * cells);
  std::string bar =
      "[" + std::string(size_t(filled), '#') + std::string(size_t(cells - filled), '.') + "]";
  std::string line = left + bar + right;
  if (width > 0 && int(line.size()) > width)
    line.resize(size_t(width));
  return line;
}

Progress::Progress(std::ostream &out, bool terminal, int64_t total, int64_t firstStep)
    : out_(out), terminal_(terminal), width_(terminal ? terminalWidth() - 1 : 0),
      firstStep_(firstStep), start_(std::chrono::steady_clock::now()) {
  state_.total = total;
  state_.step = firstStep;
}

Progress::~Progress() { finish(); }

void Progress::clear() {
  if (drawn_)
    out_ << "\r\x1b[2K";
}

void Progress::draw() {
  out_ << "\r" << formatProgressLine(state_, width_) << "\x1b[K" << std::flush;
  drawn_ = true;
}

void Progress::line(const std::string &text) {
  clear();
  out_ << text << "\n";
  if (terminal_ && drawn_)
    draw();
  else
    out_ << std::flush;
}

void Progress::step(int64_t step, double loss, double learningRate, double tokensPerSecond) {
  state_.step = step;
  state_.loss = loss;
  state_.learningRate = learningRate;
  state_.tokensPerSecond = tokensPerSecond;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  int64_t timed = step - firstStep_;
  state_.etaSeconds =
      timed > 0 ? elapsed / double(timed) * double(std::max<int64_t>(0, state_.total - step)) : -1;
  if (terminal_)
    draw();
}

void Progress::finish() {
  if (drawn_) {
    out_ << "\n" << std::flush;
    drawn_ = false;
  }
}

bool stdoutIsTerminal() { return isatty(STDOUT_FILENO) == 1; }

} // namespace g3rt
