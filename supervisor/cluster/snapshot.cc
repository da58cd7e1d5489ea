// Snapshot streams; see snapshot.h.
#include "supervisor/cluster/snapshot.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <limits>
#include <set>

#include <boost/json.hpp>
#include <fcntl.h>
#include <fmt/format.h>
#include <rocksdb/utilities/checkpoint.h>
#include <unistd.h>

#include "common/base/bytes.h"
#include "common/base/log.h"
#include "supervisor/store/rocks.h"

namespace fp::supervisor::cluster {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;

constexpr std::string_view kVersionLine = "fieldprint-snapshot 1";

StatusOr<uint64_t> ParseDecimal(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size()) {
    return InvalidArgumentError(fmt::format("snapshot: {} is not a decimal number", what));
  }
  return value;
}

Status SyncPath(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return UnavailableError(fmt::format("open {} to sync it failed", path));
  const int synced = ::fsync(fd);
  ::close(fd);
  if (synced != 0) return UnavailableError(fmt::format("fsync {} failed", path));
  return OkStatus();
}

}  // namespace

Status ValidateSnapshotFileName(std::string_view name) {
  const bool valid_chars = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
  if (name.empty() || name.size() > kMaxSnapshotFileNameBytes || !valid_chars ||
      name.front() == '.') {
    return InvalidArgumentError(fmt::format(
        "snapshot: file name '{}' is not 1..{} characters of [A-Za-z0-9._-] (no leading '.')",
        name.substr(0, 64), kMaxSnapshotFileNameBytes));
  }
  return OkStatus();
}

std::string EncodeSnapshotManifest(const SnapshotManifest& manifest) {
  json::array files;
  for (const SnapshotFile& file : manifest.files) {
    json::object entry;
    entry["name"] = file.name;
    entry["size"] = file.size;
    entry["sha256"] = HexEncode(file.sha256);
    files.push_back(std::move(entry));
  }
  json::object object;
  object["applied"] = manifest.applied;
  object["files"] = std::move(files);
  return json::serialize(object);
}

StatusOr<SnapshotManifest> DecodeSnapshotManifest(std::string_view text) {
  const auto bad = [](std::string_view why) {
    return InvalidArgumentError(fmt::format("snapshot manifest: {}", why));
  };
  boost::system::error_code error;
  json::value value = json::parse(text, error);
  if (error || !value.is_object()) return bad("not a JSON object");
  const json::object& object = value.as_object();
  const json::value* applied = object.if_contains("applied");
  const json::value* files = object.if_contains("files");
  if (object.size() != 2 || applied == nullptr || !applied->is_number() || files == nullptr ||
      !files->is_array()) {
    return bad("expected exactly \"applied\" (a number) and \"files\" (an array)");
  }
  SnapshotManifest manifest;
  manifest.applied = applied->to_number<uint64_t>(error);
  if (error) return bad("\"applied\" is not a position");
  if (files->as_array().size() > kMaxSnapshotFiles) return bad("too many files");
  std::set<std::string> names;
  uint64_t total = 0;
  for (const json::value& entry : files->as_array()) {
    const json::object* file = entry.if_object();
    if (file == nullptr || file->size() != 3 || !file->contains("name") ||
        !file->at("name").is_string() || !file->contains("size") || !file->at("size").is_number() ||
        !file->contains("sha256") || !file->at("sha256").is_string()) {
      return bad("each file needs exactly \"name\", \"size\" and \"sha256\"");
    }
    SnapshotFile& out = manifest.files.emplace_back();
    out.name = std::string(file->at("name").as_string());
    FP_RETURN_IF_ERROR(ValidateSnapshotFileName(out.name));
    if (!names.insert(out.name).second) return bad("file " + out.name + " is listed twice");
    out.size = file->at("size").to_number<uint64_t>(error);
    if (error) return bad("a size is not a byte count");
    if (out.size > kMaxSnapshotBytes - total) return bad("more than kMaxSnapshotBytes");
    total += out.size;
    StatusOr<Hash> hash = HashFromHex(file->at("sha256").as_string());
    if (!hash.ok()) return bad("a sha256 is not 64 hex characters");
    out.sha256 = *hash;
  }
  return manifest;
}

Status CreateRocksCheckpoint(rocksdb::DB* db, const std::string& dir) {
  std::error_code exists_error;
  if (fs::exists(dir, exists_error)) {
    return AlreadyExistsError(fmt::format("checkpoint directory {} exists", dir));
  }
  rocksdb::Checkpoint* raw = nullptr;
  FP_RETURN_IF_ERROR(FromRocks(rocksdb::Checkpoint::Create(db, &raw), "create checkpoint"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // Never flush here: the caller flushes the store's own families while it holds the store still
  // (the runtime's apply lock), so the checkpoint is at the position it read. What the WAL holds
  // (synced writes such as signed checkpoints) is copied with the files.
  return FromRocks(checkpoint->CreateCheckpoint(dir, std::numeric_limits<uint64_t>::max()),
                   "write checkpoint " + dir);
}

// ---- SnapshotStream ----

StatusOr<std::unique_ptr<SnapshotStream>> SnapshotStream::Open(std::string dir, uint64_t applied,
                                                               std::function<void()> on_close) {
  SnapshotManifest manifest;
  manifest.applied = applied;
  std::error_code error;
  uint64_t total = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, error)) {
    if (!entry.is_regular_file()) {
      return InvalidArgumentError(
          fmt::format("snapshot: {} is not a regular file", entry.path().string()));
    }
    SnapshotFile& file = manifest.files.emplace_back();
    file.name = entry.path().filename().string();
    FP_RETURN_IF_ERROR(ValidateSnapshotFileName(file.name));
    file.size = entry.file_size(error);
    if (error) break;
    total += file.size;
    if (manifest.files.size() > kMaxSnapshotFiles || total > kMaxSnapshotBytes) {
      return InvalidArgumentError("snapshot: more files or bytes than a snapshot may carry");
    }
  }
  if (error) return UnavailableError(fmt::format("list {}: {}", dir, error.message()));
  std::sort(manifest.files.begin(), manifest.files.end(),
            [](const SnapshotFile& a, const SnapshotFile& b) { return a.name < b.name; });
  auto stream = std::unique_ptr<SnapshotStream>(
      new SnapshotStream(std::move(dir), std::move(manifest), std::move(on_close)));
  stream->pending_ = std::string(kVersionLine) + "\n";
  return stream;
}

SnapshotStream::~SnapshotStream() {
  if (input_ != nullptr) std::fclose(input_);
  std::error_code error;
  fs::remove_all(dir_, error);
  if (error) {
    LogWarn("snapshot", "could not remove a snapshot directory",
            {{"dir", dir_}, {"error", error.message()}});
  }
  if (on_close_) on_close_();
}

uint64_t SnapshotStream::content_bytes() const {
  uint64_t total = 0;
  for (const SnapshotFile& file : manifest_.files) total += file.size;
  return total;
}

Status SnapshotStream::ReadFileBody(std::string& out, size_t room) {
  SnapshotFile& file = manifest_.files[file_];
  if (input_ == nullptr) {
    input_ = std::fopen((fs::path(dir_) / file.name).c_str(), "rb");
    if (input_ == nullptr) return UnavailableError("snapshot: cannot open " + file.name);
  }
  const size_t want = static_cast<size_t>(std::min<uint64_t>(room, file.size - file_offset_));
  const size_t old_size = out.size();
  out.resize(old_size + want);
  const size_t got = want == 0 ? 0 : std::fread(out.data() + old_size, 1, want, input_);
  out.resize(old_size + got);
  hash_.Update(std::string_view(out).substr(old_size));
  file_offset_ += got;
  if (got < want) {
    return std::ferror(input_) != 0
               ? UnavailableError("snapshot: read error in " + file.name)
               : DataLossError("snapshot: " + file.name + " shrank while it was sent");
  }
  if (file_offset_ < file.size) return OkStatus();
  // A file that grew would not be a checkpoint file: checkpoint files are immutable.
  if (std::fgetc(input_) != EOF) {
    return DataLossError("snapshot: " + file.name + " grew while it was sent");
  }
  std::fclose(input_);
  input_ = nullptr;
  file.sha256 = hash_.Finish();
  ++file_;
  file_offset_ = 0;
  phase_ = Phase::kFileHeader;
  return OkStatus();
}

StatusOr<std::string> SnapshotStream::Next(size_t max_bytes) {
  FP_CHECK(max_bytes > 0 && max_bytes <= kMaxSnapshotChunkBytes);
  std::string out;
  while (out.size() < max_bytes && !(phase_ == Phase::kDone && pending_.empty())) {
    if (!pending_.empty()) {
      const size_t take = std::min(pending_.size(), max_bytes - out.size());
      out.append(pending_, 0, take);
      pending_.erase(0, take);
      continue;
    }
    switch (phase_) {
      case Phase::kFileHeader:
        if (file_ == manifest_.files.size()) {
          const std::string text = EncodeSnapshotManifest(manifest_);
          pending_ = fmt::format("manifest {}\n{}end\n", text.size(), text);
          phase_ = Phase::kManifest;
        } else {
          const SnapshotFile& file = manifest_.files[file_];
          pending_ = fmt::format("file {} {}\n", file.name, file.size);
          phase_ = Phase::kFileBody;
        }
        break;
      case Phase::kFileBody:
        if (Status read = ReadFileBody(out, max_bytes - out.size()); !read.ok()) {
          phase_ = Phase::kDone;
          return read;
        }
        break;
      case Phase::kManifest:
        phase_ = Phase::kDone;
        break;
      case Phase::kDone:
        break;
    }
  }
  return out;
}

// ---- SnapshotReceiver ----

StatusOr<std::unique_ptr<SnapshotReceiver>> SnapshotReceiver::Create(const std::string& dir) {
  std::error_code error;
  if (fs::exists(dir, error)) return AlreadyExistsError(fmt::format("{} exists", dir));
  if (!fs::create_directory(dir, error) || error) {
    return UnavailableError(fmt::format("create {}: {}", dir, error.message()));
  }
  return std::unique_ptr<SnapshotReceiver>(new SnapshotReceiver(dir));
}

SnapshotReceiver::~SnapshotReceiver() {
  if (output_ != nullptr) std::fclose(output_);
}

Status SnapshotReceiver::Feed(std::string_view bytes) {
  FP_RETURN_IF_ERROR(failed_);
  received_ += bytes.size();
  while (!bytes.empty()) {
    if (Status fed = FeedOnce(bytes); !fed.ok()) {
      failed_ = fed;
      return fed;
    }
  }
  return OkStatus();
}

StatusOr<bool> SnapshotReceiver::TakeLine(std::string_view& bytes) {
  const size_t newline = bytes.find('\n');
  const size_t take = newline == std::string_view::npos ? bytes.size() : newline;
  if (line_.size() + take > kMaxSnapshotLineBytes) {
    return InvalidArgumentError("snapshot: a format line is too long (not a snapshot stream?)");
  }
  line_.append(bytes.substr(0, take));
  bytes.remove_prefix(newline == std::string_view::npos ? take : take + 1);
  return newline != std::string_view::npos;
}

Status SnapshotReceiver::FeedOnce(std::string_view& bytes) {
  switch (phase_) {
    case Phase::kVersion:
    case Phase::kHeader:
    case Phase::kEnd: {
      FP_ASSIGN_OR_RETURN(bool complete, TakeLine(bytes));
      if (!complete) return OkStatus();
      std::string line;
      line.swap(line_);
      if (phase_ == Phase::kVersion) {
        if (line != kVersionLine) {
          return InvalidArgumentError("snapshot: not a version 1 snapshot stream");
        }
        phase_ = Phase::kHeader;
        return OkStatus();
      }
      if (phase_ == Phase::kEnd) {
        if (line != "end") return DataLossError("snapshot: the end line is missing");
        phase_ = Phase::kDone;
        return OkStatus();
      }
      return OnHeaderLine(line);
    }
    case Phase::kFileBody: {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, bytes.size()));
      if (take > 0) {
        if (std::fwrite(bytes.data(), 1, take, output_) != take) {
          return UnavailableError("snapshot: write error in " + files_.back().name);
        }
        hash_.Update(bytes.substr(0, take));
        bytes.remove_prefix(take);
        remaining_ -= take;
      }
      return remaining_ == 0 ? FinishFile() : OkStatus();
    }
    case Phase::kManifest: {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, bytes.size()));
      manifest_text_.append(bytes.substr(0, take));
      bytes.remove_prefix(take);
      remaining_ -= take;
      if (remaining_ > 0) return OkStatus();
      FP_RETURN_IF_ERROR(CheckManifest());
      phase_ = Phase::kEnd;
      return OkStatus();
    }
    case Phase::kDone:
      return DataLossError("snapshot: bytes after the end of the stream");
  }
  return InternalError("snapshot: unknown receiver phase");
}

Status SnapshotReceiver::OnHeaderLine(std::string_view line) {
  const size_t space = line.find(' ');
  const std::string_view kind = line.substr(0, space);
  const std::string_view rest =
      space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  if (kind == "manifest") {
    FP_ASSIGN_OR_RETURN(remaining_, ParseDecimal(rest, "the manifest length"));
    if (remaining_ == 0 || remaining_ > kMaxSnapshotManifestBytes) {
      return InvalidArgumentError("snapshot: manifest length out of bounds");
    }
    phase_ = Phase::kManifest;
    return OkStatus();
  }
  const size_t second = rest.find(' ');
  if (kind != "file" || second == std::string_view::npos) {
    return InvalidArgumentError("snapshot: expected a file or manifest line");
  }
  SnapshotFile file;
  file.name = std::string(rest.substr(0, second));
  FP_RETURN_IF_ERROR(ValidateSnapshotFileName(file.name));
  FP_ASSIGN_OR_RETURN(file.size, ParseDecimal(rest.substr(second + 1), "a file size"));
  for (const SnapshotFile& earlier : files_) {
    if (earlier.name == file.name) {
      return InvalidArgumentError("snapshot: file " + file.name + " is sent twice");
    }
  }
  if (files_.size() == kMaxSnapshotFiles || file.size > kMaxSnapshotBytes - total_bytes_) {
    return InvalidArgumentError("snapshot: more files or bytes than a snapshot may carry");
  }
  total_bytes_ += file.size;
  output_ = std::fopen((fs::path(dir_) / file.name).c_str(), "wbx");
  if (output_ == nullptr) return UnavailableError("snapshot: cannot create " + file.name);
  remaining_ = file.size;
  files_.push_back(std::move(file));
  phase_ = Phase::kFileBody;
  return remaining_ == 0 ? FinishFile() : OkStatus();
}

Status SnapshotReceiver::FinishFile() {
  const bool flushed = std::fflush(output_) == 0 && ::fsync(fileno(output_)) == 0;
  const bool closed = std::fclose(output_) == 0;
  output_ = nullptr;
  if (!flushed || !closed) {
    return UnavailableError("snapshot: could not write " + files_.back().name + " to disk");
  }
  files_.back().sha256 = hash_.Finish();
  phase_ = Phase::kHeader;
  return OkStatus();
}

Status SnapshotReceiver::CheckManifest() {
  FP_ASSIGN_OR_RETURN(manifest_, DecodeSnapshotManifest(manifest_text_));
  if (manifest_.files.size() != files_.size()) {
    return DataLossError(fmt::format("snapshot: the manifest lists {} files but {} arrived",
                                     manifest_.files.size(), files_.size()));
  }
  for (size_t i = 0; i < files_.size(); ++i) {
    const SnapshotFile& listed = manifest_.files[i];
    const SnapshotFile& got = files_[i];
    if (listed.name != got.name || listed.size != got.size) {
      return DataLossError(
          fmt::format("snapshot: file {} ({} bytes) arrived where the manifest "
                      "lists {} ({} bytes)",
                      got.name, got.size, listed.name, listed.size));
    }
    if (listed.sha256 != got.sha256) {
      return DataLossError(
          fmt::format("snapshot: {} does not match its SHA-256 in the manifest", got.name));
    }
  }
  return OkStatus();
}

StatusOr<SnapshotManifest> SnapshotReceiver::Finish() {
  FP_RETURN_IF_ERROR(failed_);
  if (phase_ != Phase::kDone) {
    return DataLossError(fmt::format(
        "snapshot: the stream is truncated ({} bytes arrived, {} complete files, no {})", received_,
        files_.size() - (phase_ == Phase::kFileBody ? 1 : 0),
        phase_ == Phase::kEnd ? "end line" : "manifest"));
  }
  FP_RETURN_IF_ERROR(SyncPath(dir_, O_RDONLY | O_DIRECTORY));
  return manifest_;
}

}  // namespace fp::supervisor::cluster
