// Tiny LLaMA models with seeded weights: the embedded default of the demo and the tests
// (`fieldprint model mk-tiny DIR [--seed N]`).
//
// The weights are random but built so greedy decoding is stable: embeddings are sign-flipped
// Hadamard rows (exactly orthogonal), and the LM head row of each printable byte is a scaled sum
// of the embeddings of the tokens that "predict" it (the printable bytes follow one seeded cycle;
// every other token predicts a seeded printable byte), so the top logit stands well clear of the
// second (about 3.7 at the narrowest over 160 greedy steps, tested). The layers still move the
// hidden state, so outputs depend on context and the digests on every layer. Randomness is
// SplitMix64 with uniform draws and only correctly rounded arithmetic (no transcendental libm
// calls), so a seed gives the same bytes on every machine.
//
// Thread-safety: pure functions (apart from writing the folder).
#pragma once

#include <cstdint>
#include <string>

#include "common/base/dtype.h"
#include "common/base/status.h"
#include "node/model/config.h"

namespace fp::node {

struct TinyModelOptions {
  uint64_t seed = 1;
  int64_t hidden_size = 256;
  int64_t num_layers = 2;
  int64_t num_heads = 4;  // head_dim = hidden_size / num_heads
  int64_t num_kv_heads = 2;
  int64_t intermediate_size = 640;
  int64_t max_positions = 2048;
  DType dtype = DType::kBf16;
  bool tie_word_embeddings = false;  // tied: the model mostly repeats its input token
  RopeScaling rope_scaling = RopeScaling::kNone;
};

// The byte-level vocabulary of tiny models: bytes 0..255, then BOS, EOS and two reserved ids.
inline constexpr int32_t kTinyVocabSize = 260;
inline constexpr int32_t kTinyBosId = 256;
inline constexpr int32_t kTinyEosId = 257;

// The config a tiny model with `options` has.
LlamaConfig TinyModelConfig(const TinyModelOptions& options);

// Writes config.json, model.safetensors and fieldprint_tokenizer.json into `dir` (created if
// missing). InvalidArgument for sizes that do not make a valid config (heads not dividing
// hidden_size, etc.); Internal on file-system errors.
Status WriteTinyModel(const std::string& dir, const TinyModelOptions& options);

}  // namespace fp::node
