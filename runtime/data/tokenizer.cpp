//===- tokenizer.cpp - SentencePiece tokenizer with Gemma's tokens --------===//

#include "runtime/data/tokenizer.h"

#include "runtime/base/file.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

namespace g3rt {

namespace {

/// Decodes the UTF-8 character at `at` into `cp` and its length; false
/// where it is malformed or cut off.
bool decodeChar(std::string_view s, size_t at, uint32_t &cp, size_t &len) {
  unsigned char c = static_cast<unsigned char>(s[at]);
  len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (len == 0 || at + len > s.size())
    return false;
  cp = len == 1 ? c : c & (0xffu >> (len + 1));
  for (size_t i = 1; i < len; ++i) {
    unsigned char d = static_cast<unsigned char>(s[at + i]);
    if ((d >> 6) != 0x2)
      return false;
    cp = (cp << 6) | (d & 0x3fu);
  }
  return true;
}

/// A protobuf wire-format reader, enough for the few ModelProto fields that
/// chunked encoding depends on (Debian ships no generated header for
/// sentencepiece_model.proto).
class WireReader {
public:
  explicit WireReader(std::string_view bytes) : s_(bytes) {}

  /// The next field: its number, and its value (varint) or bytes
  /// (length-delimited); fixed-width fields are skipped over. False at the
  /// end, or on malformed input (then failed()).
  bool next(uint32_t &field, uint64_t &value, std::string_view &bytes) {
    while (at_ < s_.size()) {
      uint64_t tag;
      if (!varint(tag))
        return fail();
      field = uint32_t(tag >> 3);
      switch (tag & 7) {
      case 0:
        if (!varint(value))
          return fail();
        bytes = {};
        return true;
      case 2: {
        uint64_t size;
        if (!varint(size) || size > s_.size() - at_)
          return fail();
        bytes = s_.substr(at_, size_t(size));
        at_ += size_t(size);
        return true;
      }
      case 1:
      case 5: {
        size_t width = (tag & 7) == 1 ? 8 : 4;
        if (width > s_.size() - at_)
          return fail();
        at_ += width;
        continue;
      }
      default:
        return fail();
      }
    }
    return false;
  }
  bool failed() const { return failed_; }

private:
  bool varint(uint64_t &v) {
    v = 0;
    for (int shift = 0; shift < 64 && at_ < s_.size(); shift += 7) {
      unsigned char b = static_cast<unsigned char>(s_[at_++]);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80))
        return true;
    }
    return false;
  }
  bool fail() {
    failed_ = true;
    return false;
  }

  std::string_view s_;
  size_t at_ = 0;
  bool failed_ = false;
};

/// What chunked encoding needs to know about a model's normaliser and type
/// (sentencepiece_model.proto's field numbers).
struct ModelTraits {
  /// trainer_spec.model_type: UNIGRAM 1, BPE 2, WORD 3, CHAR 4.
  uint64_t modelType = 1;
  bool addDummyPrefix = true, removeExtraWhitespaces = true;
  /// No precompiled character map: the text reaches the model as written.
  bool identity = true;
};

bool readModelTraits(std::string_view proto, ModelTraits &out) {
  WireReader model(proto);
  uint32_t field;
  uint64_t value;
  std::string_view bytes;
  while (model.next(field, value, bytes)) {
    if (field == 2) { // trainer_spec
      WireReader spec(bytes);
      uint32_t f;
      while (spec.next(f, value, bytes))
        if (f == 3)
          out.modelType = value;
      if (spec.failed())
        return false;
    } else if (field == 3) { // normalizer_spec
      WireReader spec(bytes);
      uint32_t f;
      std::string_view b;
      while (spec.next(f, value, b)) {
        if (f == 2)
          out.identity = b.empty();
        else if (f == 3)
          out.addDummyPrefix = value != 0;
        else if (f == 4)
          out.removeExtraWhitespaces = value != 0;
      }
      if (spec.failed())
        return false;
    }
  }
  return !model.failed();
}

bool isAsciiSpace(uint32_t cp) { return cp == ' ' || (cp >= '\t' && cp <= '\r'); }

} // namespace

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
  SpecialTokenIds special;
  /// Special pieces SentencePiece leaves as plain text when they occur in the
  /// input; encodeTemplated() splits them out itself.
  std::vector<std::pair<std::string, int32_t>> unmatched;

  // Chunked encoding (Tokenizer::encode).
  size_t chunkBytes = 64 * 1024;
  ModelTraits traits;
  bool exactChunks = false;
  /// Characters a and b (code points, a << 32 | b) that some piece holds
  /// side by side (the piece's "\u2581" read as a space), sorted: a cut
  /// between them could split a token.
  std::vector<uint64_t> adjacent;
  /// Code points that are pieces by themselves, sorted (without byte
  /// fallback, a run of unknown characters becomes one token).
  std::vector<uint32_t> single;
  bool byteFallback = false;

  void analysePieces();
  bool safeCut(uint32_t a, uint32_t b) const;
  size_t findCut(std::string_view text, size_t from, size_t limit) const;
  void encodeWhole(std::string_view text, size_t offset, std::vector<int32_t> &ids,
                   std::vector<TokenSpan> *spans) const;
};

void Tokenizer::Impl::analysePieces() {
  bool traitsRead = readModelTraits(sp.serialized_model_proto(), traits);
  exactChunks = traitsRead && !traits.addDummyPrefix &&
                (traits.modelType == 1 || traits.modelType == 2 || traits.modelType == 4);
  for (int id = 0; id < sp.GetPieceSize(); ++id) {
    if (sp.IsByte(id))
      byteFallback = true;
    // Control, unknown and byte pieces never match text.
    if (sp.IsControl(id) || sp.IsUnknown(id) || sp.IsByte(id))
      continue;
    std::string piece = sp.IdToPiece(id);
    for (size_t at = piece.find("\xE2\x96\x81"); at != std::string::npos;
         at = piece.find("\xE2\x96\x81", at + 1))
      piece.replace(at, 3, " ");
    uint32_t prev = 0, cp;
    size_t len, chars = 0;
    for (size_t at = 0; at < piece.size(); at += len, ++chars) {
      if (!decodeChar(piece, at, cp, len)) {
        len = 1;
        cp = 0xfffd;
      }
      if (at > 0)
        adjacent.push_back(uint64_t(prev) << 32 | cp);
      prev = cp;
    }
    if (chars == 1)
      single.push_back(prev);
  }
  std::sort(adjacent.begin(), adjacent.end());
  adjacent.erase(std::unique(adjacent.begin(), adjacent.end()), adjacent.end());
  adjacent.shrink_to_fit();
  std::sort(single.begin(), single.end());
  single.erase(std::unique(single.begin(), single.end()), single.end());
}

bool Tokenizer::Impl::safeCut(uint32_t a, uint32_t b) const {
  // A normalising model rewrites characters in context (e.g. composes a
  // letter with a following accent); printable ASCII is left alone.
  if (!traits.identity && (a < 0x20 || a > 0x7e || b < 0x20 || b > 0x7e))
    return false;
  if (traits.removeExtraWhitespaces && (isAsciiSpace(a) || isAsciiSpace(b)))
    return false;
  if (!byteFallback && (!std::binary_search(single.begin(), single.end(), a) ||
                        !std::binary_search(single.begin(), single.end(), b)))
    return false;
  return !std::binary_search(adjacent.begin(), adjacent.end(), uint64_t(a) << 32 | b);
}

size_t Tokenizer::Impl::findCut(std::string_view text, size_t from, size_t limit) const {
  // Backwards from `limit` over character starts, down to the chunk's middle.
  size_t stop = from + (limit - from) / 2;
  for (size_t at = limit; at > stop; --at) {
    if ((static_cast<unsigned char>(text[at]) & 0xc0) == 0x80)
      continue;
    size_t start = at - 1;
    while (start > stop && (static_cast<unsigned char>(text[start]) & 0xc0) == 0x80)
      --start;
    uint32_t a, b;
    size_t lenA, lenB;
    if (decodeChar(text, start, a, lenA) && start + lenA == at && decodeChar(text, at, b, lenB) &&
        safeCut(a, b))
      return at;
  }
  return std::string_view::npos;
}

void Tokenizer::Impl::encodeWhole(std::string_view text, size_t offset, std::vector<int32_t> &ids,
                                  std::vector<TokenSpan> *spans) const {
  if (!spans) {
    std::vector<int> out;
    (void)sp.Encode(std::string(text), &out);
    ids.insert(ids.end(), out.begin(), out.end());
    return;
  }
  sentencepiece::ImmutableSentencePieceText spt = sp.EncodeAsImmutableProto(std::string(text));
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    auto piece = spt.pieces(int(i));
    ids.push_back(int32_t(piece.id()));
    spans->push_back({uint32_t(piece.begin() + offset), uint32_t(piece.end() + offset)});
  }
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer &&) noexcept = default;
Tokenizer &Tokenizer::operator=(Tokenizer &&) noexcept = default;

Status Tokenizer::load(const std::string &path, Tokenizer &out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string file = path;
  if (fs::is_directory(path, ec)) {
    file = (fs::path(path) / "tokenizer.model").string();
    if (!fs::exists(file, ec))
      return Status::error("tokenizer folder " + path +
                           " has no tokenizer.model (a SentencePiece model is needed)");
  } else if (!fs::exists(path, ec)) {
    return Status::error("tokenizer " + path + " not found");
  }
  {
    // SentencePiece reads the file itself; a folder or an unreadable file is
    // refused here with its name.
    std::ifstream probe;
    G3RT_RETURN_IF_ERROR(openForReading(file, probe, std::ios::binary, "tokenizer"));
  }
  auto impl = std::make_unique<Impl>();
  impl->path = file;
  auto loaded = impl->sp.Load(file);
  if (!loaded.ok())
    return Status::error(file + ": not a SentencePiece model (" +
                         std::string(loaded.error_message()) + ")");
  if (impl->sp.GetPieceSize() <= 0)
    return Status::error(file + ": the SentencePiece model has no pieces");

  // By name, never by number: the tiny test tokenizer and Gemma-3 agree on
  // 0/1/2 only.
  auto resolve = [&](const char *piece) -> int32_t {
    int id = impl->sp.PieceToId(piece);
    if (id < 0 || id >= impl->sp.GetPieceSize() || impl->sp.IdToPiece(id) != piece)
      return -1;
    return int32_t(id);
  };
  SpecialTokenIds &s = impl->special;
  s.pad = resolve(pieces::kPad);
  s.eos = resolve(pieces::kEos);
  s.bos = resolve(pieces::kBos);
  s.startOfTurn = resolve(pieces::kStartOfTurn);
  s.endOfTurn = resolve(pieces::kEndOfTurn);
  s.startOfImage = resolve(pieces::kStartOfImage);
  s.endOfImage = resolve(pieces::kEndOfImage);
  s.imageSoft = resolve(pieces::kImageSoftToken);
  std::string missing;
  for (auto [piece, id] : {std::pair{pieces::kPad, s.pad},
                           {pieces::kEos, s.eos},
                           {pieces::kBos, s.bos},
                           {pieces::kStartOfTurn, s.startOfTurn},
                           {pieces::kEndOfTurn, s.endOfTurn}})
    if (id < 0)
      missing += std::string(missing.empty() ? "" : ", ") + piece;
  if (!missing.empty())
    return Status::error(file + ": the tokenizer lacks Gemma's special token(s) " + missing +
                         " (a Gemma-3 style tokenizer.model is needed)");

  for (auto [piece, id] : {std::pair{pieces::kPad, s.pad},
                           {pieces::kEos, s.eos},
                           {pieces::kBos, s.bos},
                           {pieces::kStartOfTurn, s.startOfTurn},
                           {pieces::kEndOfTurn, s.endOfTurn},
                           {pieces::kStartOfImage, s.startOfImage},
                           {pieces::kEndOfImage, s.endOfImage},
                           {pieces::kImageSoftToken, s.imageSoft}}) {
    if (id < 0)
      continue;
    std::vector<int> ids;
    auto st = impl->sp.Encode(piece, &ids);
    if (!st.ok() || std::find(ids.begin(), ids.end(), id) == ids.end())
      impl->unmatched.push_back({piece, id});
  }
  impl->analysePieces();
  out.impl_ = std::move(impl);
  return Status();
}

const std::string &Tokenizer::modelPath() const { return impl_->path; }

int32_t Tokenizer::vocabSize() const { return int32_t(impl_->sp.GetPieceSize()); }

const SpecialTokenIds &Tokenizer::special() const { return impl_->special; }

std::string Tokenizer::idToPiece(int32_t id) const {
  if (id < 0 || id >= vocabSize())
    return "";
  return impl_->sp.IdToPiece(id);
}

size_t Tokenizer::chunkBytes() const { return impl_->chunkBytes; }

void Tokenizer::setChunkBytes(size_t bytes) { impl_->chunkBytes = std::max<size_t>(bytes, 16); }

bool Tokenizer::exactChunks() const { return impl_->exactChunks; }

void Tokenizer::encode(std::string_view text, std::vector<int32_t> &ids,
                       std::vector<TokenSpan> *spans, size_t maxTokens) const {
  const size_t first = ids.size(), firstSpan = spans ? spans->size() : 0;
  const size_t chunk = impl_->chunkBytes;
  // Spans of the current chunk where the caller wants none: an inexact cut
  // needs them to find a token boundary.
  std::vector<TokenSpan> ownSpans;
  size_t at = 0;
  while (at < text.size() && ids.size() - first < maxTokens) {
    if (text.size() - at <= chunk) {
      impl_->encodeWhole(text.substr(at), at, ids, spans);
      break;
    }
    size_t limit = at + chunk;
    size_t cut = impl_->findCut(text, at, limit);
    if (cut != std::string_view::npos && impl_->exactChunks) {
      impl_->encodeWhole(text.substr(at, cut - at), at, ids, spans);
      at = cut;
      continue;
    }
    // No cut that splits no token: encode to a character boundary and keep
    // the tokens that end an eighth of a chunk before it, where the
    // encoding has most likely settled; the next chunk starts after them.
    if (cut == std::string_view::npos) {
      cut = limit;
      while (cut > at + 1 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80)
        --cut;
    }
    std::vector<TokenSpan> &chunkSpans = spans ? *spans : ownSpans;
    size_t idsBefore = ids.size(), spansBefore = chunkSpans.size();
    impl_->encodeWhole(text.substr(at, cut - at), at, ids, &chunkSpans);
    size_t settled = cut - (cut - at) / 8;
    size_t keep = chunkSpans.size();
    size_t next = cut;
    for (size_t i = chunkSpans.size(); i > spansBefore; --i) {
      const TokenSpan &s = chunkSpans[i - 1];
      // A token with begin < end ends a character (byte-fallback pieces
      // before the last of a character are empty).
      if (s.begin < s.end && s.end <= settled) {
        keep = i;
        next = s.end;
        break;
      }
    }
    ids.resize(idsBefore + (keep - spansBefore));
    chunkSpans.resize(keep);
    if (!spans)
      ownSpans.clear();
    at = next;
  }
  if (ids.size() - first > maxTokens) {
    ids.resize(first + maxTokens);
    if (spans)
      spans->resize(firstSpan + maxTokens);
  }
}

void Tokenizer::encodeTemplated(std::string_view text, std::vector<int32_t> &ids,
                                std::vector<TokenSpan> *spans, size_t maxTokens) const {
  const size_t first = ids.size();
  size_t at = 0;
  while (at < text.size() && ids.size() - first < maxTokens) {
    // The earliest special string SentencePiece would not match by itself.
    size_t next = std::string_view::npos;
    const std::pair<std::string, int32_t> *hit = nullptr;
    for (const auto &u : impl_->unmatched) {
      size_t found = text.find(u.first, at);
      if (found < next) {
        next = found;
        hit = &u;
      }
    }
    size_t segmentEnd = hit ? next : text.size();
    size_t firstSpan = spans ? spans->size() : 0;
    encode(text.substr(at, segmentEnd - at), ids, spans, maxTokens - (ids.size() - first));
    if (spans)
      for (size_t i = firstSpan; i < spans->size(); ++i) {
        (*spans)[i].begin += uint32_t(at);
        (*spans)[i].end += uint32_t(at);
      }
    if (!hit || ids.size() - first >= maxTokens)
      break;
    ids.push_back(hit->second);
    if (spans)
      spans->push_back({uint32_t(next), uint32_t(next + hit->first.size())});
    at = next + hit->first.size();
  }
}

} // namespace g3rt
