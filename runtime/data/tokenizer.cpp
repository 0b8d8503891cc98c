//===- tokenizer.cpp - SentencePiece tokenizer with Gemma's tokens --------===//

#include "runtime/data/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

namespace g3rt {

struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
  SpecialTokenIds special;
  /// Special pieces SentencePiece leaves as plain text when they occur in the
  /// input; encodeTemplated() splits them out itself.
  std::vector<std::pair<std::string, int32_t>> unmatched;
};

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
  for (auto [piece, id] : {std::pair{pieces::kPad, s.pad}, {pieces::kEos, s.eos},
                           {pieces::kBos, s.bos}, {pieces::kStartOfTurn, s.startOfTurn},
                           {pieces::kEndOfTurn, s.endOfTurn}})
    if (id < 0)
      missing += std::string(missing.empty() ? "" : ", ") + piece;
  if (!missing.empty())
    return Status::error(file + ": the tokenizer lacks Gemma's special token(s) " + missing +
                         " (a Gemma-3 style tokenizer.model is needed)");

  for (auto [piece, id] :
       {std::pair{pieces::kPad, s.pad}, {pieces::kEos, s.eos}, {pieces::kBos, s.bos},
        {pieces::kStartOfTurn, s.startOfTurn}, {pieces::kEndOfTurn, s.endOfTurn},
        {pieces::kStartOfImage, s.startOfImage}, {pieces::kEndOfImage, s.endOfImage},
        {pieces::kImageSoftToken, s.imageSoft}}) {
    if (id < 0)
      continue;
    std::vector<int> ids;
    auto st = impl->sp.Encode(piece, &ids);
    if (!st.ok() || std::find(ids.begin(), ids.end(), id) == ids.end())
      impl->unmatched.push_back({piece, id});
  }
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

void Tokenizer::encode(std::string_view text, std::vector<int32_t> &ids,
                       std::vector<TokenSpan> *spans) const {
  if (text.empty())
    return;
  if (!spans) {
    std::vector<int> out;
    (void)impl_->sp.Encode(std::string(text), &out);
    ids.insert(ids.end(), out.begin(), out.end());
    return;
  }
  sentencepiece::ImmutableSentencePieceText spt =
      impl_->sp.EncodeAsImmutableProto(std::string(text));
  for (size_t i = 0; i < spt.pieces_size(); ++i) {
    auto piece = spt.pieces(int(i));
    ids.push_back(int32_t(piece.id()));
    spans->push_back({piece.begin(), piece.end()});
  }
}

void Tokenizer::encodeTemplated(std::string_view text, std::vector<int32_t> &ids,
                                std::vector<TokenSpan> *spans) const {
  size_t at = 0;
  while (at < text.size()) {
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
    encode(text.substr(at, segmentEnd - at), ids, spans);
    if (spans)
      for (size_t i = firstSpan; i < spans->size(); ++i) {
        (*spans)[i].begin += uint32_t(at);
        (*spans)[i].end += uint32_t(at);
      }
    if (!hit)
      break;
    ids.push_back(hit->second);
    if (spans)
      spans->push_back({uint32_t(next), uint32_t(next + hit->first.size())});
    at = next + hit->first.size();
  }
}

} // namespace g3rt
