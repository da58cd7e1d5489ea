// Interoperability of fieldprint's signed notes, checkpoints, RFC 6962 proofs and tlog-proof
// bundles with Go's golang.org/x/mod/sumdb/note and sumdb/tlog, an independent implementation.
//
// The test builds tests/interop/tlogcheck (Go, GOPATH mode, offline, from Debian's
// golang-golang-x-mod-dev in /usr/share/gocode; GOCACHE under the build tree keeps rebuilds to
// about a second) and exchanges JSON files with it in a temporary directory:
//   (a) fieldprint signs and proves, Go verifies (note.Open, tlog.CheckRecord, tlog.CheckTree);
//   (b) Go signs and proves (note.GenerateKey/Sign, tlog.StoredHashes/TreeHash/ProveRecord/
//       ProveTree), fieldprint verifies and must produce the same bytes.
// Both directions include tampered inputs that each side must reject. A missing Go toolchain or
// package is a failure, not a skip: CI installs them (.ci/deps.sh).
//
// Thread-safety: single-threaded test.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/base/bytes.h"
#include "common/merkle/merkle.h"
#include "common/tlog/checkpoint.h"
#include "common/tlog/note.h"
#include "common/tlog/proof_bundle.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::tlog {
namespace {

namespace json = boost::json;
using ::fp::testing::StatusIs;
using ::testing::ElementsAre;

constexpr auto kMaxProcessTime = std::chrono::seconds(120);
constexpr std::string_view kGoPackageDir = "/usr/share/gocode/src/golang.org/x/mod/sumdb";
constexpr std::string_view kOrigin = "fieldprint.example/interop-log";
constexpr uint64_t kRecords = 11;

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void WriteFile(const std::filesystem::path& path, std::string_view text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  FP_CHECK(out.good());
}

// Runs `argv` with exactly `env`, stdout and stderr to `log`. OK on exit status 0; otherwise the
// status message holds the log. The child is killed after kMaxProcessTime.
Status RunProcess(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  const std::filesystem::path& log) {
  std::vector<char*> args, envp;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  for (const std::string& var : env) envp.push_back(const_cast<char*>(var.c_str()));
  args.push_back(nullptr);
  envp.push_back(nullptr);
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return InternalError("cannot create " + log.string());
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::close(fd);
  if (pid < 0) return InternalError("fork failed");
  auto deadline = std::chrono::steady_clock::now() + kMaxProcessTime;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return DeadlineExceededError(argv[0] + " timed out:\n" + ReadFile(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return InternalError(argv[0] + " " + argv[1] + " failed:\n" + ReadFile(log));
  }
  return OkStatus();
}

StatusOr<std::string> FindGo() {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  dirs += ":/usr/lib/go/bin";
  std::stringstream stream(dirs);
  std::string dir;
  while (std::getline(stream, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/go";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return FailedPreconditionError("go is not installed: install golang-go (see .ci/deps.sh)");
}

json::array HashArray(std::span<const Hash> hashes) {
  json::array out;
  for (const Hash& hash : hashes) out.emplace_back(Base64Encode(hash));
  return out;
}

StatusOr<std::vector<Hash>> HashesFromJson(const json::value& value) {
  std::vector<Hash> out;
  for (const json::value& item : value.as_array()) {
    FP_ASSIGN_OR_RETURN(Bytes bytes, Base64Decode(item.as_string()));
    FP_ASSIGN_OR_RETURN(Hash hash, HashFromBytes(bytes));
    out.push_back(hash);
  }
  return out;
}

std::string Str(const json::value& value) { return std::string(value.as_string()); }

class GoTlogInteropTest : public ::testing::Test {
 protected:
  // Builds the Go program once for the suite; each test asserts that the build succeeded.
  static void SetUpTestSuite() {
    work_ = std::make_unique<fp::testing::TempDir>();
    build_status_ = BuildGoProgram();
  }
  static void TearDownTestSuite() { work_.reset(); }

  void SetUp() override { ASSERT_OK(build_status_); }

  static std::vector<std::string> GoEnvironment() {
    std::filesystem::path cache = fp::testing::BinaryDir() / "tests" / "interop" / "gocache";
    const char* path = std::getenv("PATH");
    return {
        "PATH=" + std::string(path ? path : "/usr/bin:/bin"),
        "HOME=" + work_->path().string(),
        "TMPDIR=" + work_->path().string(),
        "GOCACHE=" + cache.string(),
        "GOPATH=/usr/share/gocode",
        "GO111MODULE=off",  // GOPATH mode: the packages come from Debian, nothing is fetched
        "GOFLAGS=",
        "GOPROXY=off",
        "GOENV=off",
        "GOTOOLCHAIN=local",
        "GOTELEMETRY=off",
    };
  }

  static Status BuildGoProgram() {
    FP_ASSIGN_OR_RETURN(std::string go, FindGo());
    for (std::string_view package : {"note/note.go", "tlog/tlog.go"}) {
      if (!std::filesystem::exists(std::filesystem::path(kGoPackageDir) / package)) {
        return FailedPreconditionError("Go package file " + std::string(kGoPackageDir) + "/" +
                                       std::string(package) +
                                       " is missing: install golang-golang-x-mod-dev");
      }
    }
    std::filesystem::create_directories(fp::testing::BinaryDir() / "tests" / "interop" / "gocache");
    std::string source = (fp::testing::SourceDir() / "tests/interop/tlogcheck/main.go").string();
    return RunProcess({go, "build", "-o", Program(), source}, GoEnvironment(),
                      work_->Join("go-build.log"));
  }

  static std::string Program() { return work_->Join("tlogcheck"); }

  static Status RunGo(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {Program()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProcess(argv, GoEnvironment(), work_->Join("tlogcheck.log"));
  }

  inline static std::unique_ptr<fp::testing::TempDir> work_;
  inline static Status build_status_;
};

// --- (a) fieldprint writes, Go verifies --------------------------------------------------------

// A log built with fieldprint's Merkle code and signed with fieldprint's notes.
class OurLog {
 public:
  OurLog() : reader_(MakeLeaves()) {
    signers_.push_back(MakeSigner(kOrigin, "log"));
    signers_.push_back(MakeSigner("fieldprint.example/witness", "witness"));
    for (uint64_t size = 1; size <= kRecords; ++size) {
      auto root = merkle::RootAt(reader_, size);
      FP_CHECK_OK(root);
      auto note = SignCheckpoint(Checkpoint{std::string(kOrigin), size, *root, {}},
                                 std::span(signers_.data(), 1));
      FP_CHECK_OK(note);
      notes_.push_back(*note);
    }
  }

  static std::string Record(uint64_t index) { return "fieldprint record " + std::to_string(index); }
  const NoteSigner& log() const { return signers_[0]; }
  std::span<const NoteSigner> both() const { return signers_; }
  const std::string& note(uint64_t size) const { return notes_[size - 1]; }

  std::vector<Hash> Inclusion(uint64_t index, uint64_t size) const {
    auto proof = merkle::InclusionProof(reader_, index, size);
    FP_CHECK_OK(proof);
    return *proof;
  }
  std::vector<Hash> Consistency(uint64_t size1, uint64_t size2) const {
    auto proof = merkle::ConsistencyProof(reader_, size1, size2);
    FP_CHECK_OK(proof);
    return *proof;
  }

  static NoteSigner MakeSigner(std::string_view name, std::string_view label) {
    auto signer = NoteSigner::FromSeed(name, Sha256("interop " + std::string(label)));
    FP_CHECK_OK(signer);
    return *std::move(signer);
  }

 private:
  static std::vector<Hash> MakeLeaves() {
    std::vector<Hash> leaves;
    for (uint64_t i = 0; i < kRecords; ++i) leaves.push_back(merkle::LeafHash(AsBytes(Record(i))));
    return leaves;
  }

  merkle::MemoryNodeReader reader_;
  std::vector<NoteSigner> signers_;  // the log, then a witness
  std::vector<std::string> notes_;   // signed checkpoint of size i + 1
};

// What Go must answer: accept, or reject with an error that contains the given text (messages of
// golang.org/x/mod/sumdb and of tlogcheck), so that a case fails for the reason it was built for.
constexpr std::string_view kAccept = "";
constexpr std::string_view kBadSignature = "invalid signature for key";
constexpr std::string_view kNoKnownSignature = "no verifiable signatures";
constexpr std::string_view kBadProof = "invalid transparency proof";
constexpr std::string_view kBadOrigin = "checkpoint origin";

struct GoCase {
  json::object input;
  std::string_view expected_error;  // kAccept or one of the rejection texts above
};

// Adds a case named `name` to `cases`.
void AddCase(std::map<std::string, GoCase>& cases, const std::string& name,
             std::string_view expected_error, json::object input) {
  input["name"] = name;
  cases[name] = GoCase{std::move(input), expected_error};
}

json::object InclusionCase(const std::string& note, uint64_t index, const std::string& record,
                           std::span<const Hash> proof) {
  return {{"kind", "inclusion"},
          {"note", note},
          {"index", index},
          {"record", Base64Encode(AsBytes(record))},
          {"proof", HashArray(proof)}};
}

json::object ConsistencyCase(const std::string& old_note, const std::string& note,
                             std::span<const Hash> proof) {
  return {
      {"kind", "consistency"}, {"note", note}, {"old_note", old_note}, {"proof", HashArray(proof)}};
}

std::string FlipBit(std::string text, size_t pos) {
  text[pos] = text[pos] == 'A' ? 'B' : 'A';
  return text;
}

void AddNoteCases(const OurLog& log, std::map<std::string, GoCase>& cases) {
  const std::string text = "fieldprint note\n\nwith a blank line, caf\xC3\xA9\n";
  auto cosigned = SignNote(text, log.both());
  FP_CHECK_OK(cosigned);
  AddCase(cases, "note/cosigned", kAccept, {{"kind", "note"}, {"note", *cosigned}});
  NoteSigner stranger = OurLog::MakeSigner("fieldprint.example/stranger", "stranger");
  auto unknown_only = SignNote(text, std::span(&stranger, 1));
  FP_CHECK_OK(unknown_only);
  AddCase(cases, "note/unknown-key-only", kNoKnownSignature,
          {{"kind", "note"}, {"note", *unknown_only}});
  std::string tampered_text = *cosigned;
  tampered_text[0] = 'F';
  AddCase(cases, "note/tampered-text", kBadSignature, {{"kind", "note"}, {"note", tampered_text}});
  // The witness signature is last; its second-to-last base64 character carries signature bits.
  std::string bad_witness = FlipBit(*cosigned, cosigned->rfind('=') - 2);
  AddCase(cases, "note/bad-known-signature", kBadSignature,
          {{"kind", "note"}, {"note", bad_witness}});
  // Same name as the log, other key: an unknown key to Go as well, so the note has no known key.
  NoteSigner impostor = OurLog::MakeSigner(kOrigin, "impostor");
  auto impostor_note = SignNote(text, std::span(&impostor, 1));
  FP_CHECK_OK(impostor_note);
  AddCase(cases, "note/same-name-other-key", kNoKnownSignature,
          {{"kind", "note"}, {"note", *impostor_note}});
}

void AddProofCases(const OurLog& log, std::map<std::string, GoCase>& cases) {
  for (uint64_t size = 1; size <= kRecords; ++size) {
    for (uint64_t index = 0; index < size; ++index) {
      AddCase(
          cases, "inclusion/" + std::to_string(index) + "-in-" + std::to_string(size), kAccept,
          InclusionCase(log.note(size), index, OurLog::Record(index), log.Inclusion(index, size)));
    }
    for (uint64_t old = 1; old <= size; ++old) {
      AddCase(cases, "consistency/" + std::to_string(old) + "-to-" + std::to_string(size), kAccept,
              ConsistencyCase(log.note(old), log.note(size), log.Consistency(old, size)));
    }
  }
  std::vector<Hash> proof = log.Inclusion(6, kRecords);
  std::vector<Hash> flipped = proof;
  flipped[1][0] ^= 0x80;
  AddCase(cases, "inclusion/tampered-hash", kBadProof,
          InclusionCase(log.note(kRecords), 6, OurLog::Record(6), flipped));
  AddCase(cases, "inclusion/wrong-record", kBadProof,
          InclusionCase(log.note(kRecords), 6, OurLog::Record(7), proof));
  AddCase(cases, "inclusion/wrong-index", kBadProof,
          InclusionCase(log.note(kRecords), 7, OurLog::Record(6), proof));
  std::vector<Hash> longer = proof;
  longer.push_back(proof[0]);
  AddCase(cases, "inclusion/extra-hash", kBadProof,
          InclusionCase(log.note(kRecords), 6, OurLog::Record(6), longer));
  std::string forged = log.note(kRecords);
  forged[forged.find("\n11\n") + 2] = '2';
  AddCase(cases, "inclusion/forged-size", kBadSignature,
          InclusionCase(forged, 6, OurLog::Record(6), proof));

  std::vector<Hash> consistency = log.Consistency(3, 10);
  std::vector<Hash> bad_consistency = consistency;
  bad_consistency.back()[31] ^= 0x01;
  AddCase(cases, "consistency/tampered-hash", kBadProof,
          ConsistencyCase(log.note(3), log.note(10), bad_consistency));
  AddCase(cases, "consistency/wrong-old-tree", kBadProof,
          ConsistencyCase(log.note(4), log.note(10), consistency));
}

void AddBundleAndOriginCases(const OurLog& log, std::map<std::string, GoCase>& cases) {
  for (uint64_t index = 0; index < kRecords; ++index) {
    ProofBundle bundle{{}, index, log.Inclusion(index, kRecords), log.note(kRecords)};
    if (index % 2 == 0) bundle.extra = Bytes{1, 2, 3};
    auto text = FormatProofBundle(bundle);
    FP_CHECK_OK(text);
    AddCase(cases, "bundle/" + std::to_string(index), kAccept,
            {{"kind", "bundle"},
             {"bundle", *text},
             {"record", Base64Encode(AsBytes(OurLog::Record(index)))}});
  }
  ProofBundle bundle{{}, 4, log.Inclusion(4, kRecords), log.note(kRecords)};
  bundle.proof[0][5] ^= 0x04;
  auto tampered = FormatProofBundle(bundle);
  FP_CHECK_OK(tampered);
  AddCase(cases, "bundle/tampered-hash", kBadProof,
          {{"kind", "bundle"},
           {"bundle", *tampered},
           {"record", Base64Encode(AsBytes(OurLog::Record(4)))}});

  // Everything is right except the origin: a one-leaf tree whose root is record 0's leaf hash.
  Hash root = merkle::LeafHash(AsBytes(OurLog::Record(0)));
  auto other_origin = SignCheckpoint(Checkpoint{"fieldprint.example/other-log", 1, root, {}},
                                     std::span(&log.log(), 1));
  FP_CHECK_OK(other_origin);
  AddCase(cases, "inclusion/other-origin", kBadOrigin,
          InclusionCase(*other_origin, 0, OurLog::Record(0), {}));
}

TEST_F(GoTlogInteropTest, GoVerifiesOurNotesCheckpointsProofsAndBundles) {
  OurLog log;
  std::map<std::string, GoCase> cases;
  AddNoteCases(log, cases);
  AddProofCases(log, cases);
  AddBundleAndOriginCases(log, cases);
  json::array case_list;
  for (const auto& [name, c] : cases) case_list.emplace_back(c.input);
  json::object input = {{"verifier_keys", json::array{log.log().Verifier().ToString(),
                                                      log.both()[1].Verifier().ToString()}},
                        {"origin", kOrigin},
                        {"cases", std::move(case_list)}};
  WriteFile(work_->Join("verify-in.json"), json::serialize(input));

  ASSERT_OK(RunGo({"verify", work_->Join("verify-in.json"), work_->Join("verify-out.json")}));

  json::array results = json::parse(ReadFile(work_->Join("verify-out.json"))).as_array();
  ASSERT_EQ(results.size(), cases.size());
  size_t accepted = 0;
  for (const json::value& value : results) {
    const json::object& result = value.as_object();
    std::string name = Str(result.at("name"));
    bool ok = result.at("ok").as_bool();
    std::string error = ok ? "" : Str(result.at("error"));
    std::string_view expected = cases.at(name).expected_error;
    if (expected == kAccept) {
      EXPECT_TRUE(ok) << name << ": Go rejected it: " << error;
    } else {
      EXPECT_FALSE(ok) << name << ": Go accepted it";
      EXPECT_NE(error.find(expected), std::string::npos) << name << ": Go said " << error;
    }
    accepted += ok;
  }
  EXPECT_EQ(accepted, 66u + 66u + kRecords + 1);  // inclusion, consistency, bundles, cosigned note

  // Go reports both signers of the cosigned note, in note order, and the exact text.
  for (const json::value& value : results) {
    const json::object& result = value.as_object();
    if (Str(result.at("name")) != "note/cosigned") continue;
    std::vector<std::string> signers;
    for (const json::value& signer : result.at("signers").as_array())
      signers.push_back(Str(signer));
    // "<name>+<8 hex key ID>", the start of the verifier key string.
    auto id = [](const NoteSigner& s) {
      return s.Verifier().ToString().substr(0, s.name().size() + 9);
    };
    EXPECT_THAT(signers, ElementsAre(id(log.both()[0]), id(log.both()[1])));
    EXPECT_EQ(Str(result.at("text")), "fieldprint note\n\nwith a blank line, caf\xC3\xA9\n");
  }
}

// --- (b) Go writes, fieldprint verifies --------------------------------------------------------

class GoGeneratedTest : public GoTlogInteropTest {
 protected:
  void SetUp() override {
    GoTlogInteropTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_OK(RunGo({"generate", work_->Join("generated.json")}));
    go_ = json::parse(ReadFile(work_->Join("generated.json"))).as_object();
    ASSERT_OK_AND_ASSIGN(NoteVerifier verifier, NoteVerifier::Parse(Field("verifier_key")));
    verifiers_.push_back(verifier);
    for (const json::value& record : go_.at("records").as_array()) {
      ASSERT_OK_AND_ASSIGN(Bytes data, Base64Decode(record.as_string()));
      leaves_.push_back(merkle::LeafHash(data));
    }
    reader_ = std::make_unique<merkle::MemoryNodeReader>(leaves_);
  }

  std::string Field(std::string_view name) const { return Str(go_.at(name)); }
  const json::array& List(std::string_view name) const { return go_.at(name).as_array(); }

  // Go's checkpoint of `size`, opened and parsed by fieldprint.
  StatusOr<Checkpoint> OpenGoCheckpoint(uint64_t size) const {
    for (const json::value& value : List("checkpoints")) {
      const json::object& checkpoint = value.as_object();
      if (static_cast<uint64_t>(checkpoint.at("size").as_int64()) != size) continue;
      FP_ASSIGN_OR_RETURN(OpenedCheckpoint opened,
                          OpenCheckpoint(Str(checkpoint.at("note")), verifiers_, Field("origin")));
      return opened.checkpoint;
    }
    return NotFoundError("no Go checkpoint of size " + std::to_string(size));
  }

  json::object go_;                      // what the Go program generated
  std::vector<NoteVerifier> verifiers_;  // Go's log key
  std::vector<Hash> leaves_;
  std::unique_ptr<merkle::MemoryNodeReader> reader_;
};

TEST_F(GoGeneratedTest, GoKeysParseAndSignIdentically) {
  ASSERT_OK_AND_ASSIGN(NoteSigner signer, NoteSigner::Parse(Field("signer_key")));
  EXPECT_EQ(signer.ToString(), Field("signer_key"));
  EXPECT_EQ(signer.Verifier().ToString(), Field("verifier_key"));
  std::string text = Field("plain_text");
  ASSERT_OK_AND_ASSIGN(std::string ours, SignNote(text, std::span(&signer, 1)));
  EXPECT_EQ(ours, Field("plain_signed_note"));  // Ed25519 is deterministic
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(Field("plain_signed_note"), verifiers_));
  EXPECT_EQ(opened.text, text);
}

TEST_F(GoGeneratedTest, GoCheckpointsMatchOurRoots) {
  size_t checked = 0;
  for (const json::value& value : List("checkpoints")) {
    const json::object& go = value.as_object();
    uint64_t size = static_cast<uint64_t>(go.at("size").as_int64());
    ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint, OpenGoCheckpoint(size));
    ASSERT_OK_AND_ASSIGN(Hash root, merkle::RootAt(*reader_, size));
    EXPECT_EQ(checkpoint.root, root) << "size " << size;
    EXPECT_EQ(Base64Encode(root), Str(go.at("root")));
    ++checked;
  }
  EXPECT_EQ(checked, leaves_.size());
}

TEST_F(GoGeneratedTest, GoInclusionProofsVerifyAndEqualOurs) {
  size_t checked = 0;
  for (const json::value& value : List("inclusion")) {
    const json::object& go = value.as_object();
    uint64_t size = static_cast<uint64_t>(go.at("size").as_int64());
    uint64_t index = static_cast<uint64_t>(go.at("index").as_int64());
    ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, HashesFromJson(go.at("proof")));
    ASSERT_OK_AND_ASSIGN(Checkpoint checkpoint, OpenGoCheckpoint(size));
    EXPECT_OK(merkle::VerifyInclusion(leaves_[index], index, size, proof, checkpoint.root));
    ASSERT_OK_AND_ASSIGN(std::vector<Hash> ours, merkle::InclusionProof(*reader_, index, size));
    EXPECT_EQ(ours, proof) << index << " in " << size;
    for (size_t i = 0; i < proof.size(); ++i) {
      std::vector<Hash> tampered = proof;
      tampered[i][i % 32] ^= 0x10;
      EXPECT_THAT(merkle::VerifyInclusion(leaves_[index], index, size, tampered, checkpoint.root),
                  StatusIs(StatusCode::kDataLoss));
    }
    ++checked;
  }
  EXPECT_EQ(checked, leaves_.size() * (leaves_.size() + 1) / 2);
}

TEST_F(GoGeneratedTest, GoConsistencyProofsVerifyAndEqualOurs) {
  size_t checked = 0;
  for (const json::value& value : List("consistency")) {
    const json::object& go = value.as_object();
    uint64_t size1 = static_cast<uint64_t>(go.at("old_size").as_int64());
    uint64_t size2 = static_cast<uint64_t>(go.at("size").as_int64());
    ASSERT_OK_AND_ASSIGN(std::vector<Hash> proof, HashesFromJson(go.at("proof")));
    ASSERT_OK_AND_ASSIGN(Checkpoint old_checkpoint, OpenGoCheckpoint(size1));
    ASSERT_OK_AND_ASSIGN(Checkpoint new_checkpoint, OpenGoCheckpoint(size2));
    EXPECT_OK(
        merkle::VerifyConsistency(size1, size2, proof, old_checkpoint.root, new_checkpoint.root));
    ASSERT_OK_AND_ASSIGN(std::vector<Hash> ours, merkle::ConsistencyProof(*reader_, size1, size2));
    EXPECT_EQ(ours, proof) << size1 << " to " << size2;
    if (!proof.empty()) {
      std::vector<Hash> tampered = proof;
      tampered.back()[0] ^= 0x01;
      EXPECT_THAT(merkle::VerifyConsistency(size1, size2, tampered, old_checkpoint.root,
                                            new_checkpoint.root),
                  StatusIs(StatusCode::kDataLoss));
    }
    ++checked;
  }
  EXPECT_EQ(checked, leaves_.size() * (leaves_.size() + 1) / 2);
}

TEST_F(GoGeneratedTest, GoBundlesVerifyAndRoundTripExactly) {
  for (const json::value& value : List("bundles")) {
    const json::object& go = value.as_object();
    uint64_t index = static_cast<uint64_t>(go.at("index").as_int64());
    std::string text = Str(go.at("bundle"));
    ASSERT_OK_AND_ASSIGN(ProofBundle bundle, ParseProofBundle(text));
    EXPECT_EQ(bundle.index, index);
    EXPECT_EQ(AsChars(bundle.extra), index % 2 == 1 ? "go extra" : "");
    ASSERT_OK(VerifyProofBundle(bundle, leaves_[index], verifiers_, Field("origin")));
    ASSERT_OK_AND_ASSIGN(std::string formatted, FormatProofBundle(bundle));
    EXPECT_EQ(formatted, text);

    EXPECT_THAT(VerifyProofBundle(bundle, leaves_[(index + 1) % leaves_.size()], verifiers_,
                                  Field("origin")),
                StatusIs(StatusCode::kDataLoss));
    EXPECT_THAT(VerifyProofBundle(bundle, leaves_[index], verifiers_, "go.example/other"),
                StatusIs(StatusCode::kUnauthenticated));
  }
}

TEST_F(GoGeneratedTest, GoCosignedNoteReportsBothKeys) {
  ASSERT_OK_AND_ASSIGN(NoteVerifier witness, NoteVerifier::Parse(Field("witness_verifier_key")));
  std::string note = Field("cosigned_note");
  std::vector<NoteVerifier> both = {verifiers_[0], witness};
  ASSERT_OK_AND_ASSIGN(OpenedNote opened, OpenNote(note, both));
  EXPECT_THAT(opened.signed_by, ElementsAre(0, 1));
  ASSERT_OK_AND_ASSIGN(OpenedNote log_only, OpenNote(note, verifiers_));
  EXPECT_THAT(log_only.signed_by, ElementsAre(0));
  EXPECT_EQ(log_only.unknown_signatures, 1u);
}

TEST_F(GoGeneratedTest, TamperedGoInputsAreRejected) {
  std::string note = Str(List("checkpoints").back().as_object().at("note"));
  std::string forged = note;
  forged[forged.find('\n') + 1] = '9';  // the tree size
  EXPECT_THAT(OpenCheckpoint(forged, verifiers_, Field("origin")),
              StatusIs(StatusCode::kUnauthenticated));
  EXPECT_THAT(OpenCheckpoint(FlipBit(note, note.rfind('=') - 2), verifiers_, Field("origin")),
              StatusIs(StatusCode::kUnauthenticated));
  ASSERT_OK_AND_ASSIGN(NoteVerifier witness, NoteVerifier::Parse(Field("witness_verifier_key")));
  EXPECT_THAT(OpenCheckpoint(note, std::span(&witness, 1), Field("origin")),
              StatusIs(StatusCode::kUnauthenticated));

  std::string key = Field("verifier_key");
  size_t id = key.find('+') + 1;
  key[id] = key[id] == '0' ? '1' : '0';
  EXPECT_THAT(NoteVerifier::Parse(key), StatusIs(StatusCode::kInvalidArgument));
  std::string signer_key = Field("signer_key");
  EXPECT_THAT(NoteSigner::Parse(signer_key.substr(0, signer_key.size() - 4)),
              StatusIs(StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fp::tlog
