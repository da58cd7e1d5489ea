// Byte-level and SentencePiece tokenizers; see tokenizer.h.
#include "common/tokenizer/tokenizer.h"

#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/json.hpp>
#include <dlfcn.h>

#include "common/tokenizer/internal/sentencepiece_shim.h"

namespace fp::tokenizer {
namespace json = boost::json;
namespace {

constexpr int32_t kBytes = 256;
constexpr size_t kErrorBytes = 512;

// The whole file at `path`: NotFound when absent, InvalidArgument when larger than `max_bytes`.
StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  if (error) return NotFoundError("cannot read " + path + ": " + error.message());
  if (size > max_bytes) {
    return InvalidArgumentError(path + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  if (!file) return UnavailableError("cannot read " + path);
  return text.str();
}

// The shim (internal/sentencepiece_shim.h), loaded once per process and never unloaded.
struct SentencePieceLibrary {
  FpSpmLoadFn load = nullptr;
  FpSpmFreeFn free = nullptr;
  FpSpmIntFn piece_size = nullptr;
  FpSpmIntFn bos_id = nullptr;
  FpSpmIntFn eos_id = nullptr;
  FpSpmEncodeFn encode = nullptr;
  FpSpmDecodeFn decode = nullptr;
};

// Where the shim may be: $FP_SENTENCEPIECE_SHIM, beside the running executable (an installed
// fieldprint), then the build tree (tests).
std::vector<std::string> ShimCandidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("FP_SENTENCEPIECE_SHIM")) paths.push_back(env);
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) paths.push_back((exe.parent_path() / internal::kSentencePieceShimFile).string());
  paths.push_back(FP_SENTENCEPIECE_SHIM_BUILD_PATH);
  return paths;
}

StatusOr<SentencePieceLibrary> OpenShim() {
  std::string tried;
  for (const std::string& path : ShimCandidates()) {
    // RTLD_DEEPBIND: sentencepiece resolves against its own bundled protobuf first;
    // RTLD_LOCAL: none of its symbols become visible to the rest of the process.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (handle == nullptr) {
      tried += " " + path + " (" + ::dlerror() + ");";
      continue;
    }
    SentencePieceLibrary lib;
    auto sym = [&](const char* name) { return ::dlsym(handle, name); };
    lib.load = reinterpret_cast<FpSpmLoadFn>(sym(internal::kSpmLoad));
    lib.free = reinterpret_cast<FpSpmFreeFn>(sym(internal::kSpmFree));
    lib.piece_size = reinterpret_cast<FpSpmIntFn>(sym(internal::kSpmPieceSize));
    lib.bos_id = reinterpret_cast<FpSpmIntFn>(sym(internal::kSpmBosId));
    lib.eos_id = reinterpret_cast<FpSpmIntFn>(sym(internal::kSpmEosId));
    lib.encode = reinterpret_cast<FpSpmEncodeFn>(sym(internal::kSpmEncode));
    lib.decode = reinterpret_cast<FpSpmDecodeFn>(sym(internal::kSpmDecode));
    if (!lib.load || !lib.free || !lib.piece_size || !lib.bos_id || !lib.eos_id || !lib.encode ||
        !lib.decode) {
      return InternalError(path + " lacks the fp_spm_* symbols");
    }
    return lib;
  }
  return UnavailableError(std::string("cannot load ") + internal::kSentencePieceShimFile +
                          " (set FP_SENTENCEPIECE_SHIM or install it beside fieldprint):" + tried);
}

StatusOr<const SentencePieceLibrary*> Shim() {
  static const StatusOr<SentencePieceLibrary> library = OpenShim();
  if (!library.ok()) return library.status();
  return &*library;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(const SentencePieceLibrary* lib, void* processor)
      : lib_(lib), processor_(processor) {}
  ~SentencePieceTokenizer() override { lib_->free(processor_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool add_bos) const override {
    if (text.size() > kMaxPromptBytes) return InvalidArgumentError("prompt is too long");
    std::vector<int32_t> ids(text.size() + 2);
    char error[kErrorBytes];
    for (int attempt = 0; attempt < 2; ++attempt) {
      int64_t n = lib_->encode(processor_, text.data(), text.size(), ids.data(), ids.size(), error,
                               sizeof(error));
      if (n < 0) return InvalidArgumentError(std::string("sentencepiece encode: ") + error);
      bool fits = static_cast<size_t>(n) <= ids.size();
      ids.resize(static_cast<size_t>(n));
      if (!fits) continue;  // the second call has room for every id
      if (add_bos && bos_id()) ids.insert(ids.begin(), *bos_id());
      return ids;
    }
    return InternalError("sentencepiece encode: id count changed between calls");
  }

  StatusOr<std::string> Decode(std::span<const int32_t> ids) const override {
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_size()) {
        return InvalidArgumentError("token id " + std::to_string(id) +
                                    " is outside the vocabulary");
      }
    }
    std::string text(ids.size() * 8 + 16, '\0');
    char error[kErrorBytes];
    for (int attempt = 0; attempt < 2; ++attempt) {
      int64_t n = lib_->decode(processor_, ids.data(), ids.size(), text.data(), text.size(), error,
                               sizeof(error));
      if (n < 0) return InvalidArgumentError(std::string("sentencepiece decode: ") + error);
      bool fits = static_cast<size_t>(n) <= text.size();
      text.resize(static_cast<size_t>(n));
      if (fits) return text;
    }
    return InternalError("sentencepiece decode: text size changed between calls");
  }

  int32_t vocab_size() const override { return lib_->piece_size(processor_); }
  std::optional<int32_t> bos_id() const override { return Optional(lib_->bos_id(processor_)); }
  std::optional<int32_t> eos_id() const override { return Optional(lib_->eos_id(processor_)); }

 private:
  // SentencePiece reports a disabled special id as -1.
  static std::optional<int32_t> Optional(int32_t id) {
    return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
  }

  const SentencePieceLibrary* lib_;  // process-lifetime
  void* processor_;                  // owned, freed through lib_->free
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
  return std::unique_ptr<Tokenizer>(new ByteTokenizer(
      static_cast<int32_t>(vocab), static_cast<int32_t>(bos), static_cast<int32_t>(eos)));
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
  FP_ASSIGN_OR_RETURN(const SentencePieceLibrary* lib, Shim());
  char error[kErrorBytes] = "";
  void* processor = lib->load(path.c_str(), error, sizeof(error));
  if (processor == nullptr) return InvalidArgumentError(path + ": " + error);
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(lib, processor));
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
    return InvalidArgumentError(
        model_dir + ": tokenizer has " + std::to_string(tokenizer->vocab_size()) +
        " ids but the model's vocab_size is " + std::to_string(model_vocab_size));
  }
  return tokenizer;
}

StatusOr<std::vector<int32_t>> ParseTokenIds(std::string_view text, int32_t vocab_size) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string_view item =
        text.substr(pos, comma == std::string_view::npos ? text.npos : comma - pos);
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

}  // namespace fp::tokenizer
