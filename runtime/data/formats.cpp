//===- formats.cpp - JSONL training examples to tokens and labels ---------===//
//
// Text is tokenised in one piece and labels are assigned through the byte
// span of every token, so a token that SentencePiece merged across a
// boundary (prompt/completion, template/content) is labelled as a whole and
// the ids are exactly those of tokenising the rendered string. Tokenising
// stops at the tokens a row can hold (ExampleOptions::maxTokens).
//
//===----------------------------------------------------------------------===//

#include "runtime/data/formats.h"

#include "runtime/base/labels.h"
#include "runtime/data/chat_template.h"
#include "runtime/data/tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace g3rt {

namespace {

/// `j[key]`, or null where the line lacks it (const operator[] must not be
/// given a missing key).
const nlohmann::json &field(const nlohmann::json &j, const char *key) {
  static const nlohmann::json null;
  auto it = j.find(key);
  return it == j.end() ? null : *it;
}

/// Reads an array of token ids, keeping the first `limit`; `allowIgnore`
/// admits -100. Every entry is checked, kept or not.
Status readIds(const nlohmann::json &value, const char *field, int64_t vocab, bool allowIgnore,
               size_t limit, std::vector<int32_t> &out) {
  if (!value.is_array())
    return Status::error(std::string("field '") + field + "' must be an array of integers");
  out.reserve(std::min(value.size(), limit));
  for (size_t i = 0; i < value.size(); ++i) {
    const nlohmann::json &v = value[i];
    if (!v.is_number_integer())
      return Status::error(std::string("field '") + field + "'[" + std::to_string(i) +
                           "] is not an integer");
    int64_t id = v.get<int64_t>();
    bool ok = (id >= 0 && id < vocab) || (allowIgnore && id == kIgnoreIndex);
    if (!ok)
      return Status::error(std::string("field '") + field + "'[" + std::to_string(i) +
                           "] = " + std::to_string(id) + " is outside the vocabulary [0, " +
                           std::to_string(vocab) + ")");
    if (i < limit)
      out.push_back(int32_t(id));
  }
  return Status();
}

Status buildTokenized(const nlohmann::json &j, const ExampleOptions &options, Example &out) {
  const nlohmann::json &ids = field(j, "input_ids"), &labels = field(j, "labels");
  G3RT_RETURN_IF_ERROR(
      readIds(ids, "input_ids", options.vocabSize, false, options.maxTokens, out.ids));
  if (out.ids.empty())
    return Status::error("field 'input_ids' is empty");
  if (j.contains("labels")) {
    G3RT_RETURN_IF_ERROR(
        readIds(labels, "labels", options.vocabSize, true, options.maxTokens, out.labels));
    if (labels.size() != ids.size())
      return Status::error("field 'labels' has " + std::to_string(labels.size()) +
                           " entries, 'input_ids' " + std::to_string(ids.size()));
  } else {
    out.labels = out.ids;
  }
  return Status();
}

/// Whether a token covering `span` lies in [begin, end). A zero-width span
/// (the leading bytes of a byte-fallback character) counts by its position.
bool inRange(const TokenSpan &span, size_t begin, size_t end) {
  if (span.begin == span.end)
    return span.begin >= begin && span.begin < end;
  return span.begin < end && span.end > begin;
}

/// Tokenises a rendered string (its first `maxTokens` tokens) and labels
/// it: every token, or with `trained` those overlapping it.
void tokenizeAndLabel(const Tokenizer &tok, const std::string &text,
                      const std::vector<TextRange> *trained, size_t maxTokens, Example &out) {
  std::vector<TokenSpan> spans;
  tok.encodeTemplated(text, out.ids, &spans, maxTokens);
  out.labels.assign(out.ids.size(), kIgnoreIndex);
  for (size_t t = 0; t < out.ids.size(); ++t) {
    bool train = !trained;
    if (trained)
      for (const TextRange &r : *trained)
        if (inRange(spans[t], r.begin, r.end)) {
          train = true;
          break;
        }
    if (train)
      out.labels[t] = out.ids[t];
  }
}

Status buildConversation(const nlohmann::json &messages, size_t promptMessages,
                         const ExampleOptions &options, Example &out) {
  std::vector<ChatMessage> parsed;
  G3RT_RETURN_IF_ERROR(parseChatMessages(messages, parsed));
  RenderedChat chat;
  G3RT_RETURN_IF_ERROR(renderChat(parsed, chat));
  out.hasImages = chat.imageParts > 0;
  if (out.hasImages && options.images == ImagePolicy::Drop) {
    out.dropped = true;
    return Status();
  }
  const Tokenizer &tok = *options.tokenizer;
  if (out.hasImages && tok.special().startOfImage < 0)
    return Status::error(tok.modelPath() + " has no " + pieces::kStartOfImage +
                         " token for the image parts (use --images drop)");
  // Assistant turns of a conversational prompt are context, not completion.
  std::vector<TextRange> spans = chat.assistantSpans;
  size_t promptAssistants = 0;
  for (size_t i = 0; i < promptMessages && i < parsed.size(); ++i)
    promptAssistants += parsed[i].role == "assistant";
  spans.erase(spans.begin(), spans.begin() + std::min(promptAssistants, spans.size()));
  tokenizeAndLabel(tok, chat.text, options.assistantOnlyLoss ? &spans : nullptr, options.maxTokens,
                   out);
  if (out.hasImages) {
    const SpecialTokenIds &s = tok.special();
    for (size_t t = 0; t < out.ids.size(); ++t) {
      int32_t id = out.ids[t];
      if (id == s.startOfImage || id == s.endOfImage || id == s.imageSoft)
        out.labels[t] = kIgnoreIndex;
    }
  }
  return Status();
}

/// bos + text + eos, the trained part being [trainedFrom, end) of `text` and
/// the eos (everything with trainedFrom = 0). Past `maxTokens` text tokens
/// the example is cut anyway: the encoding stops there.
void buildPlain(const Tokenizer &tok, std::string_view text, size_t trainedFrom, bool maskBefore,
                size_t maxTokens, Example &out) {
  const SpecialTokenIds &s = tok.special();
  std::vector<TokenSpan> spans;
  out.ids.push_back(s.bos);
  tok.encode(text, out.ids, &spans, maxTokens);
  out.ids.push_back(s.eos);
  out.labels = out.ids;
  if (!maskBefore)
    return;
  out.labels[0] = kIgnoreIndex;
  for (size_t t = 0; t < spans.size(); ++t)
    if (!inRange(spans[t], trainedFrom, text.size()))
      out.labels[t + 1] = kIgnoreIndex;
}

} // namespace

Status parseDataFormat(const std::string &name, DataFormat &out) {
  static const std::pair<const char *, DataFormat> names[] = {
      {"auto", DataFormat::Auto},
      {"tokenized", DataFormat::Tokenized},
      {"messages", DataFormat::Messages},
      {"text", DataFormat::Text},
      {"prompt_completion", DataFormat::PromptCompletion}};
  for (const auto &[n, f] : names)
    if (name == n) {
      out = f;
      return Status();
    }
  return Status::error("unknown data format '" + name +
                       "' (expected auto, tokenized, messages, text or prompt_completion)");
}

const char *dataFormatName(DataFormat format) {
  switch (format) {
  case DataFormat::Auto:
    return "auto";
  case DataFormat::Tokenized:
    return "tokenized";
  case DataFormat::Messages:
    return "messages";
  case DataFormat::Text:
    return "text";
  case DataFormat::PromptCompletion:
    return "prompt_completion";
  }
  return "?";
}

Status parseImagePolicy(const std::string &name, ImagePolicy &out) {
  if (name == "drop")
    out = ImagePolicy::Drop;
  else if (name == "mask")
    out = ImagePolicy::Mask;
  else
    return Status::error("unknown image policy '" + name + "' (expected drop or mask)");
  return Status();
}

Status detectDataFormat(const nlohmann::json &line, DataFormat requested, DataFormat &out) {
  if (!line.is_object())
    return Status::error("expected a JSON object");
  bool tokenized = line.contains("input_ids"), messages = line.contains("messages");
  bool text = line.contains("text");
  bool prompt = line.contains("prompt"), completion = line.contains("completion");
  auto require = [&](bool present, const char *fields) {
    if (present)
      return Status();
    return Status::error(std::string("field ") + fields + " is missing (data format " +
                         dataFormatName(requested) + ")");
  };
  switch (requested) {
  case DataFormat::Tokenized:
    out = requested;
    return require(tokenized, "'input_ids'");
  case DataFormat::Messages:
    out = requested;
    return require(messages, "'messages'");
  case DataFormat::Text:
    out = requested;
    return require(text, "'text'");
  case DataFormat::PromptCompletion:
    out = requested;
    return require(prompt && completion, "'prompt' or 'completion'");
  case DataFormat::Auto:
    break;
  }
  std::vector<std::pair<DataFormat, const char *>> found;
  if (tokenized)
    found.push_back({DataFormat::Tokenized, "input_ids"});
  if (messages)
    found.push_back({DataFormat::Messages, "messages"});
  if (text)
    found.push_back({DataFormat::Text, "text"});
  if (prompt && completion)
    found.push_back({DataFormat::PromptCompletion, "prompt/completion"});
  else if (prompt != completion)
    return Status::error(std::string("field '") + (prompt ? "completion" : "prompt") +
                         "' is missing (a prompt/completion line needs both)");
  if (found.empty())
    return Status::error("unknown format: expected a field 'messages', 'text', "
                         "'prompt' and 'completion', or 'input_ids'");
  if (found.size() > 1) {
    std::string names;
    for (const auto &f : found)
      names += std::string(names.empty() ? "" : ", ") + f.second;
    return Status::error("ambiguous format: the line has fields of several formats (" + names +
                         "); choose one with --data-format");
  }
  out = found[0].first;
  return Status();
}

Status buildExample(const nlohmann::json &j, DataFormat format, const ExampleOptions &options,
                    Example &out) {
  out = Example();
  if (format == DataFormat::Tokenized)
    return buildTokenized(j, options, out);
  if (!options.tokenizer || !options.tokenizer->loaded())
    return Status::error(std::string("a ") + dataFormatName(format) +
                         " line needs a tokenizer (--tokenizer)");
  const Tokenizer &tok = *options.tokenizer;
  switch (format) {
  case DataFormat::Messages:
    return buildConversation(field(j, "messages"), 0, options, out);
  case DataFormat::Text: {
    // By reference: a long text is not copied.
    const nlohmann::json &text = field(j, "text");
    if (!text.is_string())
      return Status::error("field 'text' must be a string");
    const std::string &str = text.get_ref<const std::string &>();
    if (str.empty())
      return Status::error("field 'text' is empty");
    out.noAssistantPart = options.assistantOnlyLoss;
    buildPlain(tok, str, 0, false, options.maxTokens, out);
    return Status();
  }
  case DataFormat::PromptCompletion: {
    const nlohmann::json &p = field(j, "prompt"), &c = field(j, "completion");
    if (p.is_array() && c.is_array()) {
      // TRL's conversational prompt/completion: one conversation.
      nlohmann::json all = p;
      for (const nlohmann::json &m : c)
        all.push_back(m);
      return buildConversation(all, p.size(), options, out);
    }
    if (!p.is_string() || !c.is_string())
      return Status::error("fields 'prompt' and 'completion' must both be strings (or both "
                           "lists of messages)");
    const std::string &prompt = p.get_ref<const std::string &>();
    const std::string &completion = c.get_ref<const std::string &>();
    if (completion.empty())
      return Status::error("field 'completion' is empty");
    buildPlain(tok, prompt + completion, prompt.size(), options.assistantOnlyLoss,
               options.maxTokens, out);
    return Status();
  }
  default:
    return Status::error("unsupported data format");
  }
}

} // namespace g3rt
