// Byte-level and SentencePiece tokenizers; see tokenizer.h.
#include "node/tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <boost/json.hpp>
#include <charconv>
#include <filesystem>

#include "node/model/mapped_file.h"

namespace fp::node {
namespace json = boost::json;
namespace {

constexpr int32_t kBytes = 256;

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {}

  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const override {
    if (text.size() > kMaxPromptBytes) return InvalidArgumentError("prompt is too long");
    std::vector<int> ids;
    auto status = sp_->Encode(absl::string_view(text.data(), text.size()), &ids);
    if (!status.ok()) return InvalidArgumentError("sentencepiece encode: " + status.ToString());
    std::vector<int32_t> out;
    if (add_bos && bos_id()) out.push_back(*bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  StatusOr<std::string> Decode(std::span<const int32_t> ids) const override {
    std::vector<int> list;
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary");
      }
      list.push_back(id);
    }
    std::string text;
    auto status = sp_->Decode(list, &text);
    if (!status.ok()) return InvalidArgumentError("sentencepiece decode: " + status.ToString());
    return text;
  }

  int32_t vocab_size() const override { return sp_->GetPieceSize(); }
  std::optional<int32_t> bos_id() const override { return Optional(sp_->bos_id()); }
  std::optional<int32_t> eos_id() const override { return Optional(sp_->eos_id()); }

 private:
  // SentencePiece reports a disabled special id as -1.
  static std::optional<int32_t> Optional(int id) {
    return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
  }

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

StatusOr<std::unique_ptr<Tokenizer>> LoadByteTokenizer(const std::string& path) {
  FP_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxTokenizerFileBytes));
  json::error_code ec;
  json::value root = json::parse(text, ec);
  const json::object* obj = ec ? nullptr : root.if_object();
  auto field = [&](const char* name) -> int64_t {
    const json::value* v = obj == nullptr ? nullptr : obj->if_contains(name);
    return v != nullptr && v->is_int64() ? v->get_int64() : -1;
  };
  const json::value* type = obj == nullptr ? nullptr : obj->if_contains("type");
  if (type == nullptr || !type->is_string() || type->get_string() != "byte") {
    return InvalidArgumentError(path + ": expected {\"type\": \"byte\", ...}");
  }
  int64_t vocab = field("vocab_size");
  int64_t bos = field("bos_token_id");
  int64_t eos = field("eos_token_id");
  if (vocab <= kBytes || vocab > (1 << 20) || bos < kBytes || bos >= vocab || eos < kBytes ||
      eos >= vocab || bos == eos) {
    return InvalidArgumentError(path + ": needs vocab_size > 256 and distinct bos_token_id, " +
                                "eos_token_id in [256, vocab_size)");
  }
  return std::unique_ptr<Tokenizer>(new ByteTokenizer(static_cast<int32_t>(vocab),
                                                      static_cast<int32_t>(bos),
                                                      static_cast<int32_t>(eos)));
}

}  // namespace

ByteTokenizer::ByteTokenizer(int32_t vocab_size, int32_t bos_id, int32_t eos_id)
    : vocab_size_(vocab_size), bos_id_(bos_id), eos_id_(eos_id) {
  FP_CHECK(bos_id >= kBytes && bos_id < vocab_size);
  FP_CHECK(eos_id >= kBytes && eos_id < vocab_size);
  FP_CHECK(bos_id != eos_id);
}

StatusOr<std::vector<int32_t>> ByteTokenizer::Encode(std::string_view text, bool add_bos) const {
  if (text.size() > kMaxPromptBytes) return InvalidArgumentError("prompt is too long");
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  if (add_bos) ids.push_back(bos_id_);
  for (char c : text) ids.push_back(static_cast<uint8_t>(c));
  return ids;
}

StatusOr<std::string> ByteTokenizer::Decode(std::span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return InvalidArgumentError("token id " + std::to_string(id) + " is outside the vocabulary");
    }
    if (id < kBytes) text.push_back(static_cast<char>(id));
  }
  return text;
}

std::string ByteTokenizer::ToJson() const {
  json::object obj{{"type", "byte"},
                   {"vocab_size", vocab_size_},
                   {"bos_token_id", bos_id_},
                   {"eos_token_id", eos_id_}};
  return json::serialize(obj) + "\n";
}

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto status = sp->Load(path);
  if (!status.ok()) return InvalidArgumentError(path + ": " + status.ToString());
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(sp)));
}

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                   int32_t model_vocab_size) {
  std::unique_ptr<Tokenizer> tokenizer;
  std::string sentencepiece_path = model_dir + "/tokenizer.model";
  std::string byte_path = model_dir + "/" + kByteTokenizerFile;
  if (std::filesystem::exists(sentencepiece_path)) {
    FP_ASSIGN_OR_RETURN(tokenizer, LoadSentencePieceTokenizer(sentencepiece_path));
  } else if (std::filesystem::exists(byte_path)) {
    FP_ASSIGN_OR_RETURN(tokenizer, LoadByteTokenizer(byte_path));
  } else {
    return NotFoundError(model_dir + ": no tokenizer.model or " + kByteTokenizerFile +
                         " (prompts must be given as token ids)");
  }
  if (tokenizer->vocab_size() > model_vocab_size) {
    return InvalidArgumentError(model_dir + ": tokenizer has " +
                                std::to_string(tokenizer->vocab_size()) +
                                " ids but the model's vocab_size is " +
                                std::to_string(model_vocab_size));
  }
  return tokenizer;
}

StatusOr<std::vector<int32_t>> ParseTokenIds(std::string_view text, int32_t vocab_size) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string_view item = text.substr(pos, comma == std::string_view::npos ? text.npos : comma - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int32_t id = -1;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      return InvalidArgumentError("token ids: '" + std::string(item) + "' is not a number");
    }
    if (id < 0 || id >= vocab_size) {
      return InvalidArgumentError("token ids: " + std::to_string(id) + " is outside [0, " +
                                  std::to_string(vocab_size) + ")");
    }
    if (ids.size() >= kMaxPromptBytes) return InvalidArgumentError("token ids: too many");
    ids.push_back(id);
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return ids;
}

}  // namespace fp::node
