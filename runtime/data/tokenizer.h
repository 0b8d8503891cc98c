//===- tokenizer.h - SentencePiece tokenizer with Gemma's tokens -*- C++ -*-===//
//
// Loads a model's tokenizer.model with libsentencepiece and resolves Gemma-3's
// special tokens by piece name (G3MOE_SPEC.md 4.4), so any Gemma-style model
// works whatever its ids. Encoding is SentencePiece's own: a string gives the
// ids the Python sentencepiece package gives for it. A long text is encoded
// in chunks, and only as far as the caller can use (encode's maxTokens), so
// that its memory and time are bounded by what a training row holds.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_RUNTIME_DATA_TOKENIZER_H
#define G3MOE_RUNTIME_DATA_TOKENIZER_H

#include "runtime/base/status.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace g3rt {

/// Piece names of Gemma-3's special tokens.
namespace pieces {
inline constexpr const char *kPad = "<pad>";
inline constexpr const char *kEos = "<eos>";
inline constexpr const char *kBos = "<bos>";
inline constexpr const char *kStartOfTurn = "<start_of_turn>";
inline constexpr const char *kEndOfTurn = "<end_of_turn>";
inline constexpr const char *kStartOfImage = "<start_of_image>";
inline constexpr const char *kEndOfImage = "<end_of_image>";
inline constexpr const char *kImageSoftToken = "<image_soft_token>";
} // namespace pieces

/// The ids of Gemma-3's special tokens in one tokenizer. The first five are
/// required; the image tokens are -1 where the model has none (Gemma-2
/// style tokenizers), which only matters for data with image parts.
struct SpecialTokenIds {
  int32_t pad = -1, eos = -1, bos = -1, startOfTurn = -1, endOfTurn = -1;
  int32_t startOfImage = -1, endOfImage = -1, imageSoft = -1;
};

/// Bytes [begin, end) of the input a token came from. Byte-fallback pieces of
/// one character share it: all but the last have begin == end.
struct TokenSpan {
  uint32_t begin = 0, end = 0;
};

/// A loaded SentencePiece model. Movable, not copyable; const methods may be
/// called from several threads.
class Tokenizer {
public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer &&) noexcept;
  Tokenizer &operator=(Tokenizer &&) noexcept;

  /// Loads `path`: a tokenizer.model file or a folder holding one. Errors
  /// name the file: missing, not a SentencePiece model, or without one of
  /// the required special tokens.
  static Status load(const std::string &path, Tokenizer &out);

  bool loaded() const { return impl_ != nullptr; }
  /// The model file actually read.
  const std::string &modelPath() const;
  /// Number of pieces (every id is below it).
  int32_t vocabSize() const;
  const SpecialTokenIds &special() const;
  std::string idToPiece(int32_t id) const;

  /// Appends `text` exactly as SentencePiece encodes it (no BOS/EOS added;
  /// the model's user-defined symbols, e.g. Gemma's <start_of_turn>, are
  /// single tokens because SentencePiece matches them itself). With `spans`,
  /// the bytes of `text` each token covers. With `maxTokens`, only the first
  /// `maxTokens` tokens of that encoding, and the work stops about there.
  ///
  /// A text longer than chunkBytes() is encoded chunk by chunk. A chunk ends
  /// between two characters that no piece of the vocabulary holds side by
  /// side, so no token can cross the cut; for a BPE or char model that adds
  /// no dummy prefix and normalises nothing across such a cut (identity
  /// normalisation, or printable ASCII on both sides; no whitespace next to
  /// the cut where it removes extra whitespace) - Gemma's tokenizers and the
  /// tiny test one - the result is exactly the whole text's; for a unigram
  /// model, too, unless two segmentations score the same to the last bit.
  /// Where the second half of a chunk has no such pair, or the model is of
  /// another kind, the chunk ends instead at a token boundary about an eighth
  /// of a chunk before its end, and the tokens next to that cut may differ
  /// from the whole text's. Texts up to chunkBytes() are encoded whole.
  void encode(std::string_view text, std::vector<int32_t> &ids,
              std::vector<TokenSpan> *spans = nullptr, size_t maxTokens = kNoTokenLimit) const;

  /// encode() for template output: in addition, the special-token strings
  /// the model does not match in text by itself (control symbols such as
  /// <bos> and <eos>, or a model whose turn markers are control symbols)
  /// become their single tokens. For Gemma's own and the tiny tokenizer this
  /// is encode() with "<bos>"/"<eos>" mapped to their ids.
  void encodeTemplated(std::string_view text, std::vector<int32_t> &ids,
                       std::vector<TokenSpan> *spans = nullptr,
                       size_t maxTokens = kNoTokenLimit) const;

  /// encode()'s default: every token.
  static constexpr size_t kNoTokenLimit = ~size_t(0);
  /// Bytes above which encode() splits a text into chunks (64 KiB: about
  /// 10 MB and a tenth of a second of SentencePiece's work per chunk).
  size_t chunkBytes() const;
  /// Sets chunkBytes() (at least 16; tests make it small to cut often).
  void setChunkBytes(size_t bytes);
  /// Whether chunked encoding equals the whole text's encoding wherever a
  /// safe cut is found (the model kinds listed at encode()).
  bool exactChunks() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace g3rt

#endif // G3MOE_RUNTIME_DATA_TOKENIZER_H
