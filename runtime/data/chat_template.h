//===- chat_template.h - Gemma-3 chat template (R0/R1) ----------*- C++ -*-===//
//
// The seed's chat template (G3MOE_SPEC.md 4.4): <bos>, an optional system
// turn, then user/assistant turns that must alternate starting with user,
// each rendered as "<start_of_turn>ROLE\n" + content + "<end_of_turn>\n"
// with the assistant's role written "model". Contents are a string or a list
// of {type, text} parts as in open_m_3. No generation prompt (SFT).
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DATA_CHAT_TEMPLATE_H
#define G3MOE_RUNTIME_DATA_CHAT_TEMPLATE_H

#include "runtime/base/status.h"

#include <nlohmann/json_fwd.hpp>

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace g3rt {

/// One item of a list content.
struct ChatPart {
  bool image = false;
  /// The text of a text part (untrimmed); empty for an image part.
  std::string text;
};

/// One message. `role` is "system", "user" or "assistant".
struct ChatMessage {
  std::string role;
  /// Content given as a list of parts (else as the string `text`).
  bool listContent = false;
  std::string text;
  std::vector<ChatPart> parts;
};

/// Reads a `messages` value: an array of {role, content} objects, or the
/// column-wise form {"role": [...], "content": [...]} that Arrow exports.
/// Content is a string or an array of {"type": "text"|"image", "text":
/// string|null}. Wrong types and unknown roles or part types are errors
/// naming the message ("messages[2]: ...").
Status parseChatMessages(const nlohmann::json &messages, std::vector<ChatMessage> &out);

/// Bytes [begin, end) of a rendered string.
struct TextRange {
  size_t begin = 0, end = 0;
};

/// A rendered conversation.
struct RenderedChat {
  std::string text;
  /// Each assistant turn's content through its <end_of_turn> (the span an
  /// assistant-only loss trains on).
  std::vector<TextRange> assistantSpans;
  /// Image parts rendered as <start_of_image>.
  int64_t imageParts = 0;
};

/// Renders `messages` with the template. Broken alternation, a system
/// message other than the first, and empty content are errors naming the
/// message index and role.
Status renderChat(const std::vector<ChatMessage> &messages, RenderedChat &out);

/// `s` without leading and trailing whitespace as Python's str.strip() (the
/// template's `trim` filter) sees it, Unicode spaces included.
std::string_view trimWhitespace(std::string_view s);

} // namespace g3rt

#endif // G3MOE_RUNTIME_DATA_CHAT_TEMPLATE_H
