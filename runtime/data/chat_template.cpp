//===- chat_template.cpp - Gemma-3 chat template (R0/R1) ------------------===//

#include "runtime/data/chat_template.h"

#include "runtime/data/tokenizer.h"

#include <nlohmann/json.hpp>

namespace g3rt {

namespace {

/// Python's str.isspace() set, which the template's trim strips.
bool isPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/// Decodes the code point starting at `at`; 0xFFFFFFFF (never a space) on
/// malformed UTF-8, which then stays untouched.
uint32_t decodeAt(std::string_view s, size_t at, size_t &len) {
  unsigned char c = static_cast<unsigned char>(s[at]);
  len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || at + len > s.size()) {
    len = 1;
    return 0xffffffffu;
  }
  if (len == 1)
    return c;
  uint32_t cp = c & (0xff >> (len + 1));
  for (size_t i = 1; i < len; ++i) {
    unsigned char d = static_cast<unsigned char>(s[at + i]);
    if ((d >> 6) != 0x2) {
      len = 1;
      return 0xffffffffu;
    }
    cp = (cp << 6) | (d & 0x3f);
  }
  return cp;
}

std::string where(size_t index, const std::string &role) {
  return "messages[" + std::to_string(index) + "]" + (role.empty() ? "" : " (" + role + ")");
}

Status parseContent(const nlohmann::json &content, size_t index, const std::string &role,
                    ChatMessage &m) {
  if (content.is_string()) {
    m.text = content.get<std::string>();
    return Status();
  }
  if (!content.is_array())
    return Status::error(where(index, role) +
                         ": 'content' must be a string or a list of {type, text} parts");
  m.listContent = true;
  for (size_t p = 0; p < content.size(); ++p) {
    const nlohmann::json &part = content[p];
    std::string at = where(index, role) + ": content[" + std::to_string(p) + "]";
    if (!part.is_object())
      return Status::error(at + " must be an object {type, text}");
    auto type = part.find("type");
    if (type == part.end() || !type->is_string())
      return Status::error(at + " has no string 'type'");
    auto text = part.find("text");
    ChatPart out;
    if (*type == "image") {
      out.image = true;
      if (text != part.end() && !text->is_null() && !text->is_string())
        return Status::error(at + ": 'text' must be a string or null");
    } else if (*type == "text") {
      if (text == part.end() || !text->is_string())
        return Status::error(at + ": a text part needs a string 'text'");
      out.text = text->get<std::string>();
    } else {
      return Status::error(at + " has unknown type '" + type->get<std::string>() +
                           "' (expected 'text' or 'image')");
    }
    m.parts.push_back(std::move(out));
  }
  return Status();
}

Status parseMessage(const nlohmann::json &role, const nlohmann::json &content, size_t index,
                    ChatMessage &m) {
  if (!role.is_string())
    return Status::error(where(index, "") + ": 'role' must be a string");
  m.role = role.get<std::string>();
  if (m.role != "system" && m.role != "user" && m.role != "assistant")
    return Status::error(where(index, "") + " has unknown role '" + m.role +
                         "' (expected system, user or assistant)");
  return parseContent(content, index, m.role, m);
}

} // namespace

std::string_view trimWhitespace(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t len;
    if (!isPythonSpace(decodeAt(s, begin, len)))
      break;
    begin += len;
  }
  // Backwards: find the start of the last code point, then test it.
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80 &&
           end - start < 4)
      --start;
    size_t len;
    uint32_t cp = decodeAt(s, start, len);
    if (start + len != end || !isPythonSpace(cp))
      break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

Status parseChatMessages(const nlohmann::json &messages, std::vector<ChatMessage> &out) {
  out.clear();
  if (messages.is_object()) {
    auto roles = messages.find("role"), contents = messages.find("content");
    if (roles == messages.end() || contents == messages.end() || !roles->is_array() ||
        !contents->is_array() || roles->size() != contents->size())
      return Status::error("'messages' must be a list of {role, content} objects (or "
                           "{\"role\": [...], \"content\": [...]} of equal lengths)");
    for (size_t i = 0; i < roles->size(); ++i) {
      ChatMessage m;
      G3RT_RETURN_IF_ERROR(parseMessage((*roles)[i], (*contents)[i], i, m));
      out.push_back(std::move(m));
    }
  } else if (messages.is_array()) {
    for (size_t i = 0; i < messages.size(); ++i) {
      const nlohmann::json &msg = messages[i];
      if (!msg.is_object())
        return Status::error(where(i, "") + " must be an object {role, content}");
      auto role = msg.find("role"), content = msg.find("content");
      if (role == msg.end())
        return Status::error(where(i, "") + " has no 'role'");
      if (content == msg.end())
        return Status::error(where(i, "") + " has no 'content'");
      ChatMessage m;
      G3RT_RETURN_IF_ERROR(parseMessage(*role, *content, i, m));
      out.push_back(std::move(m));
    }
  } else {
    return Status::error("'messages' must be a list of {role, content} objects");
  }
  if (out.empty())
    return Status::error("'messages' is empty");
  return Status();
}

Status renderChat(const std::vector<ChatMessage> &messages, RenderedChat &out) {
  out = RenderedChat();
  std::string &text = out.text;
  text = pieces::kBos;
  size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") {
    const ChatMessage &m = messages[0];
    // The seed's template takes a list content's first item only.
    std::string_view content;
    if (!m.listContent) {
      content = trimWhitespace(m.text);
    } else {
      if (m.parts.empty() || m.parts[0].image)
        return Status::error(where(0, m.role) +
                             ": a system message's first content part must be text");
      content = trimWhitespace(m.parts[0].text);
    }
    if (content.empty())
      return Status::error(where(0, m.role) + " has empty content");
    text += std::string(pieces::kStartOfTurn) + "system\n";
    text += content;
    text += std::string(pieces::kEndOfTurn) + "\n";
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage &m = messages[i];
    const char *expected = (i - first) % 2 == 0 ? "user" : "assistant";
    if (m.role != expected) {
      if (m.role == "system")
        return Status::error(where(i, m.role) + ": a system message may only come first");
      return Status::error(where(i, m.role) + ": expected a " + expected +
                           " message here (after an optional system message, roles "
                           "alternate user, assistant, user, ...)");
    }
    std::string content;
    if (!m.listContent) {
      content = trimWhitespace(m.text);
    } else {
      for (const ChatPart &p : m.parts) {
        if (p.image) {
          content += pieces::kStartOfImage;
          ++out.imageParts;
        } else {
          content += trimWhitespace(p.text);
        }
      }
    }
    if (content.empty())
      return Status::error(where(i, m.role) + " has empty content");
    bool assistant = m.role == "assistant";
    text += std::string(pieces::kStartOfTurn) + (assistant ? "model" : m.role) + "\n";
    size_t begin = text.size();
    text += content;
    text += pieces::kEndOfTurn;
    if (assistant)
      out.assistantSpans.push_back({begin, text.size()});
    text += "\n";
  }
  return Status();
}

} // namespace g3rt
