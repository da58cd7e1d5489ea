// Tests of state snapshots without a network: a seeded fleet simulation builds a real state, a
// RocksDB checkpoint of it is streamed in the snapshot format and installed by the receiver in
// random piece sizes, and the installed state must equal the original key for key. The error
// block cuts, corrupts and extends streams, installs into directories that are not empty, and
// installs a state that fails fsck; none of them may leave anything behind. Backup is checked the
// same way.
#include "supervisor/cluster/snapshot.h"

#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "supervisor/cluster/bootstrap.h"
#include "supervisor/log/rocksdb_log.h"
#include "supervisor/state/applier.h"
#include "supervisor/state/state_store.h"
#include "supervisor/testing/sim_driver.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::supervisor::cluster {
namespace {

namespace fs = std::filesystem;
using ::fp::testing::StatusIs;
using ::testing::HasSubstr;

std::string ReadFile(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), {});
}

// Every entry under `dir`, relative, with file contents: to prove a directory was left as it was.
std::map<std::string, std::string> Tree(const fs::path& dir) {
  std::map<std::string, std::string> tree;
  if (!fs::exists(dir)) return tree;
  for (const fs::directory_entry& entry : fs::recursive_directory_iterator(dir)) {
    tree[fs::relative(entry.path(), dir).string()] =
        entry.is_regular_file() ? ReadFile(entry.path()) : "<dir>";
  }
  return tree;
}

// A producer that feeds `stream` in pieces of random size (seeded), like a network would.
SnapshotProducer Pieces(std::string stream, uint64_t seed) {
  return [stream = std::move(stream), seed](const SnapshotSink& sink) -> Status {
    std::mt19937_64 random(seed);
    for (size_t at = 0; at < stream.size();) {
      const size_t piece = std::min<size_t>(stream.size() - at, 1 + random() % 9000);
      FP_RETURN_IF_ERROR(sink(std::string_view(stream).substr(at, piece)));
      at += piece;
    }
    return OkStatus();
  };
}

class SnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto log = RocksLog::Open(dir_.Join("origin/log"));
    FP_CHECK_OK(log);
    log_ = std::move(log).value();
    auto store = OpenStateStore(dir_.Join("origin/state"));
    FP_CHECK_OK(store);
    store_ = std::move(store).value();
    auto applier = Applier::Open(store_.get(), ApplierOptions());
    FP_CHECK_OK(applier);
    applier_ = std::move(applier).value();
    supervisor::testing::SimOptions sim;
    sim.sessions = 3;
    supervisor::testing::SimFleet fleet(7, sim);
    auto summary = supervisor::testing::RunSimulation(fleet, *log_, *applier_, *store_, 400);
    FP_CHECK_OK(summary);
    FP_CHECK(summary->done);
  }

  // The whole stream of a fresh checkpoint of the origin state.
  std::string TakeStream(const std::string& name = "checkpoint") {
    const std::string dir = dir_.Join(name);
    FP_CHECK_OK(store_->Flush());
    FP_CHECK_OK(CreateRocksCheckpoint(store_->db(), dir));
    auto stream = SnapshotStream::Open(dir, applier_->applied(), nullptr);
    FP_CHECK_OK(stream);
    std::string bytes;
    while (!(*stream)->done()) {
      auto chunk = (*stream)->Next(kMaxSnapshotChunkBytes);
      FP_CHECK_OK(chunk);
      bytes += *chunk;
    }
    return bytes;
  }

  fp::testing::TempDir dir_;
  std::unique_ptr<RocksLog> log_;
  std::unique_ptr<RocksStore> store_;
  std::unique_ptr<Applier> applier_;
};

TEST_F(SnapshotTest, InstalledSnapshotEqualsTheOriginalStateKeyForKey) {
  const std::string stream = TakeStream();
  const std::string target = dir_.Join("new-member");
  ASSERT_OK_AND_ASSIGN(BootstrapResult result, InstallSnapshot(target, Pieces(stream, 1)));
  EXPECT_EQ(result.applied, applier_->applied());
  EXPECT_GT(result.files, 0u);
  EXPECT_FALSE(fs::exists(fs::path(target) / kBootstrapPartialDir));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> installed,
                       OpenStateStore((fs::path(target) / "state").string()));
  const supervisor::testing::StoreDump expected = supervisor::testing::DumpStore(*store_);
  ASSERT_FALSE(expected.empty());
  EXPECT_TRUE(supervisor::testing::DumpStore(*installed) == expected);
}

TEST_F(SnapshotTest, StreamCarriesEachFileWithItsSha256InTheManifest) {
  const std::string dir = dir_.Join("checkpoint");
  ASSERT_OK(store_->Flush());
  ASSERT_OK(CreateRocksCheckpoint(store_->db(), dir));
  std::map<std::string, std::string> files = Tree(dir);  // read before the stream deletes them
  bool closed = false;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SnapshotStream> stream,
                       SnapshotStream::Open(dir, 42, [&] { closed = true; }));
  std::string bytes;
  while (!stream->done()) {
    ASSERT_OK_AND_ASSIGN(std::string chunk, stream->Next(1000));
    ASSERT_LE(chunk.size(), 1000u);
    bytes += chunk;
  }
  stream.reset();
  EXPECT_TRUE(closed);
  EXPECT_FALSE(fs::exists(dir));  // the stream owned the checkpoint
  ASSERT_TRUE(bytes.starts_with("fieldprint-snapshot 1\n"));
  ASSERT_TRUE(bytes.ends_with("end\n"));
  const size_t manifest_line = bytes.rfind("\nmanifest ");
  ASSERT_NE(manifest_line, std::string::npos);
  const size_t json_begin = bytes.find('\n', manifest_line + 1) + 1;
  const std::string json = bytes.substr(json_begin, bytes.size() - 4 - json_begin);
  ASSERT_OK_AND_ASSIGN(SnapshotManifest manifest, DecodeSnapshotManifest(json));
  EXPECT_EQ(manifest.applied, 42u);
  ASSERT_EQ(manifest.files.size(), files.size());
  for (const SnapshotFile& file : manifest.files) {
    ASSERT_TRUE(files.contains(file.name)) << file.name;
    EXPECT_EQ(file.size, files[file.name].size());
    EXPECT_EQ(file.sha256, Sha256(files[file.name])) << file.name;
    // Each file's bytes follow its own header line.
    const std::string header = fmt::format("file {} {}\n", file.name, file.size);
    const size_t at = bytes.find(header);
    ASSERT_NE(at, std::string::npos);
    EXPECT_EQ(bytes.substr(at + header.size(), file.size), files[file.name]);
  }
}

TEST(SnapshotManifestTest, ManifestRoundTrips) {
  SnapshotManifest manifest;
  manifest.applied = 1234;
  manifest.files = {{"CURRENT", 16, Sha256("a")}, {"000012.sst", 99, Sha256("b")}};
  ASSERT_OK_AND_ASSIGN(SnapshotManifest decoded,
                       DecodeSnapshotManifest(EncodeSnapshotManifest(manifest)));
  EXPECT_EQ(decoded.applied, 1234u);
  ASSERT_EQ(decoded.files.size(), 2u);
  EXPECT_EQ(decoded.files[1].name, "000012.sst");
  EXPECT_EQ(decoded.files[1].size, 99u);
  EXPECT_EQ(decoded.files[1].sha256, Sha256("b"));
}

TEST_F(SnapshotTest, BackupOfAStoppedSupervisorIsAVerifiedCopyOfStateAndLog) {
  const supervisor::testing::StoreDump expected = supervisor::testing::DumpStore(*store_);
  const uint64_t applied = applier_->applied();
  const uint64_t log_end = log_->End();
  applier_.reset();
  store_.reset();
  log_.reset();  // stopped
  ASSERT_OK_AND_ASSIGN(BackupResult result, Backup(dir_.Join("origin"), dir_.Join("backup")));
  EXPECT_EQ(result.applied, applied);
  EXPECT_TRUE(result.with_log);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> copy, OpenStateStore(dir_.Join("backup/state")));
  EXPECT_TRUE(supervisor::testing::DumpStore(*copy) == expected);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksLog> log, RocksLog::Open(dir_.Join("backup/log")));
  EXPECT_EQ(log->End(), log_end);
}

// ---- Error paths ----

TEST_F(SnapshotTest, TruncatedStreamIsRefusedAndLeavesNothingBehind) {
  const std::string stream = TakeStream();
  const size_t first_file = stream.find('\n') + 1;
  const size_t manifest = stream.rfind("manifest ");
  for (const size_t cut : {size_t{5}, first_file + 3, first_file + 200, stream.size() / 2, manifest,
                           manifest + 20, stream.size() - 2}) {
    const std::string target = dir_.Join(fmt::format("cut-{}", cut));
    Status installed = InstallSnapshot(target, Pieces(stream.substr(0, cut), cut)).status();
    EXPECT_THAT(installed, StatusIs(StatusCode::kDataLoss)) << cut;
    EXPECT_THAT(std::string(installed.message()), HasSubstr("truncated")) << cut;
    EXPECT_FALSE(fs::exists(target)) << cut;  // created by the install, so removed again
  }
}

TEST_F(SnapshotTest, CorruptedFileOrManifestIsRefusedAndTheDataDirIsUntouched) {
  const std::string stream = TakeStream();
  const fs::path target = dir_.Join("member");
  fs::create_directories(target);
  std::ofstream(target / "checkpoint.key") << "the ledger key, provisioned by the operator\n";
  const std::map<std::string, std::string> before = Tree(target);
  std::string flipped_body = stream;
  flipped_body[stream.find('\n', stream.find("file ")) + 10] ^= 0x01;
  std::string flipped_manifest = stream;
  flipped_manifest[stream.rfind("\"sha256\":\"") + 10] ^= 0x01;
  for (const std::string& bad : {flipped_body, flipped_manifest}) {
    Status installed = InstallSnapshot(target.string(), Pieces(bad, 3)).status();
    EXPECT_THAT(installed, StatusIs(StatusCode::kDataLoss));
    EXPECT_THAT(std::string(installed.message()), HasSubstr("SHA-256"));
    EXPECT_EQ(Tree(target), before);
  }
}

TEST_F(SnapshotTest, BytesAfterTheEndOrAnotherFormatAreRefused) {
  const std::string stream = TakeStream();
  EXPECT_THAT(InstallSnapshot(dir_.Join("a"), Pieces(stream + "x", 1)),
              StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(InstallSnapshot(dir_.Join("b"), Pieces("HTTP/1.1 200 OK\r\n\r\n" + stream, 1)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(InstallSnapshot(dir_.Join("c"), Pieces("fieldprint-snapshot 1\nfile ../x 1\nx", 1)),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(InstallSnapshot(dir_.Join("d"), Pieces(std::string(10'000, 'a'), 1)),
              StatusIs(StatusCode::kInvalidArgument));
  for (const char* name : {"a", "b", "c", "d"}) EXPECT_FALSE(fs::exists(dir_.Join(name)));
}

TEST_F(SnapshotTest, DataDirWithAStateIsRefusedBeforeAnyTransfer) {
  const fs::path target = dir_.Join("member");
  fs::create_directories(target / "state");
  bool produced = false;
  Status installed = InstallSnapshot(target.string(), [&](const SnapshotSink&) {
                       produced = true;
                       return OkStatus();
                     }).status();
  EXPECT_THAT(installed, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(installed.message()), HasSubstr("'state'"));
  EXPECT_FALSE(produced);
  EXPECT_TRUE(fs::exists(target / "state"));
}

TEST_F(SnapshotTest, StateThatFailsFsckIsNotInstalled) {
  // A faithful stream of a damaged state: the hashes match, the content does not.
  const std::string dir = dir_.Join("damaged");
  ASSERT_OK(store_->Flush());
  ASSERT_OK(CreateRocksCheckpoint(store_->db(), dir));
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<RocksStore> damaged, OpenStateStore(dir));
    std::unique_ptr<rocksdb::Iterator> it = damaged->NewIterator(kLeaves);
    it->SeekToFirst();
    ASSERT_TRUE(it->Valid());
    std::string value = it->value().ToString();
    value[0] ^= 0x01;  // the first leaf's hash
    rocksdb::WriteBatch batch;
    batch.Put(damaged->handle(kLeaves), it->key(), value);
    it.reset();
    ASSERT_OK(damaged->Write(&batch));
    ASSERT_OK(damaged->Flush());
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SnapshotStream> stream,
                       SnapshotStream::Open(dir, applier_->applied(), nullptr));
  std::string bytes;
  while (!stream->done()) {
    ASSERT_OK_AND_ASSIGN(std::string chunk, stream->Next(kMaxSnapshotChunkBytes));
    bytes += chunk;
  }
  const std::string target = dir_.Join("member");
  Status installed = InstallSnapshot(target, Pieces(bytes, 5)).status();
  EXPECT_THAT(installed, StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(std::string(installed.message()), HasSubstr("fsck"));
  EXPECT_FALSE(fs::exists(target));
}

TEST(SnapshotManifestTest, ManifestWithBadNamesOrDuplicatesIsInvalidArgument) {
  const std::string hash = std::string(64, 'a');
  for (const std::string& bad : std::vector<std::string>{
           "[]", R"({"applied":1})", R"({"applied":1,"files":[],"extra":0})",
           R"({"applied":-1,"files":[]})",
           R"({"applied":1,"files":[{"name":"../x","size":1,"sha256":")" + hash + R"("}]})",
           R"({"applied":1,"files":[{"name":".hidden","size":1,"sha256":")" + hash + R"("}]})",
           R"({"applied":1,"files":[{"name":"a","size":1,"sha256":"zz"}]})",
           R"({"applied":1,"files":[{"name":"a","size":1,"sha256":")" + hash +
               R"("},{"name":"a","size":2,"sha256":")" + hash + R"("}]})"}) {
    EXPECT_THAT(DecodeSnapshotManifest(bad), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
}

TEST_F(SnapshotTest, BackupRefusesARunningSupervisorAndANonEmptyTarget) {
  // The origin store is open: RocksDB's lock says a supervisor runs on it.
  Status running = Backup(dir_.Join("origin"), dir_.Join("backup")).status();
  EXPECT_THAT(running, StatusIs(StatusCode::kUnavailable));
  EXPECT_THAT(std::string(running.message()), HasSubstr("stop it first"));
  EXPECT_FALSE(fs::exists(dir_.Join("backup")));
  fs::create_directories(dir_.Join("full"));
  std::ofstream(dir_.Join("full/x")) << "x";
  EXPECT_THAT(Backup(dir_.Join("origin"), dir_.Join("full")),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(Backup(dir_.Join("nothing"), dir_.Join("backup")),
              StatusIs(StatusCode::kFailedPrecondition));
}

TEST(BootstrapTest, PeerUrlsAreHttpWithAPort) {
  ASSERT_OK_AND_ASSIGN(PeerAddress peer, ParsePeerUrl("http://10.0.0.7:8080/"));
  EXPECT_EQ(peer.host, "10.0.0.7");
  EXPECT_EQ(peer.port, 8080);
  ASSERT_OK_AND_ASSIGN(peer, ParsePeerUrl("http://[::1]:80"));
  EXPECT_EQ(peer.host, "::1");
  for (const char* bad : {"", "10.0.0.7:8080", "http://host", "http://host:0", "http://:80",
                          "http://a@b:80", "ftp://host:80"}) {
    EXPECT_THAT(ParsePeerUrl(bad), StatusIs(StatusCode::kInvalidArgument)) << bad;
  }
  Status https = ParsePeerUrl("https://peer:8080").status();
  EXPECT_THAT(std::string(https.message()), HasSubstr("plain HTTP"));
}

}  // namespace
}  // namespace fp::supervisor::cluster
