// Tokenizers: text <-> token ids for the models fieldprint serves (the worker's CLI prompts and
// the supervisor's text completions; both sides share this code, so they agree on the ids).
//
//   - ByteTokenizer: one id per byte (0..255) plus special ids (BOS, EOS) above them; the tiny
//     models of `fieldprint model mk-tiny` use it (declared in DIR/fieldprint_tokenizer.json).
//   - SentencePiece: DIR/tokenizer.model through libsentencepiece, for LLaMA-2-style models. It
//     is reached through a dlopen'ed shim (internal/sentencepiece_shim.h explains why), so a
//     missing shim is an Unavailable error at load time, not a link failure.
// Raw token ids are always accepted instead of text (ParseTokenIds), so a model without any
// tokenizer file still serves sessions whose prompts arrive as ids.
//
// Thread-safety: tokenizers are immutable after construction; Encode and Decode may be called
// from any thread concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/status.h"

namespace fp::tokenizer {

inline constexpr size_t kMaxPromptBytes = 16 << 20;
inline constexpr size_t kMaxTokenizerFileBytes = 64 << 20;
// The file that declares a byte-level tokenizer in a model folder.
inline constexpr char kByteTokenizerFile[] = "fieldprint_tokenizer.json";

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids for `text`, preceded by BOS when `add_bos` and the tokenizer has one. InvalidArgument
  // for text longer than kMaxPromptBytes or that the tokenizer rejects.
  virtual StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const = 0;
  // Text for `ids`; special ids (BOS, EOS) produce no text. InvalidArgument for an id outside
  // the tokenizer's vocabulary.
  virtual StatusOr<std::string> Decode(std::span<const int32_t> ids) const = 0;
  // Ids are in [0, vocab_size()).
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
};

// Bytes 0..255 are ids 0..255; bos_id and eos_id (both >= 256) are the specials.
class ByteTokenizer : public Tokenizer {
 public:
  // FP_CHECKs 256 <= bos_id, eos_id < vocab_size and bos_id != eos_id.
  ByteTokenizer(int32_t vocab_size, int32_t bos_id, int32_t eos_id);
  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const override;
  StatusOr<std::string> Decode(std::span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

  // The JSON of DIR/fieldprint_tokenizer.json describing this tokenizer.
  std::string ToJson() const;

 private:
  int32_t vocab_size_;
  int32_t bos_id_;
  int32_t eos_id_;
};

// Loads the model folder's tokenizer: DIR/tokenizer.model (SentencePiece) if present, else
// DIR/fieldprint_tokenizer.json (byte-level). NotFound when the folder has neither (the model
// then takes raw ids only); InvalidArgument for a malformed file or a tokenizer whose vocabulary
// is larger than `model_vocab_size`. The caller owns the result.
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                   int32_t model_vocab_size);

// Loads a SentencePiece model file. InvalidArgument if libsentencepiece rejects it; Unavailable
// if the shim libfp_sentencepiece.so cannot be loaded. The caller owns the result.
StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path);

// Parses "1,2,3" (commas, optional spaces). InvalidArgument for an empty list, a malformed
// number or an id outside [0, vocab_size).
StatusOr<std::vector<int32_t>> ParseTokenIds(std::string_view text, int32_t vocab_size);

}  // namespace fp::tokenizer
