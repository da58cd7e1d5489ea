// Runs every RFC 6962 known-answer vector in tests/testdata/merkle-vectors (transparency-dev's
// inclusion and consistency cases, see the README there) through VerifyInclusion and
// VerifyConsistency: each happy path must verify and each `wantErr: true` case must be rejected.
// The test fails if the folder is missing or holds no vectors.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/merkle/merkle.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::merkle {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using ::fp::testing::StatusIs;
using ::testing::AnyOf;

auto IsRejected() {
  return AnyOf(StatusIs(StatusCode::kInvalidArgument), StatusIs(StatusCode::kDataLoss));
}

fs::path VectorRoot() {
  return fp::testing::SourceDir() / "tests/testdata/merkle-vectors/testdata";
}

std::vector<fs::path> JsonFilesUnder(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code error;
  for (fs::recursive_directory_iterator it(dir, error), end; !error && it != end;
       it.increment(error)) {
    if (it->is_regular_file() && it->path().extension() == ".json") files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

StatusOr<json::object> ReadObject(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  boost::system::error_code error;
  json::value value = json::parse(text.str(), error);
  if (error || !value.is_object())
    return InvalidArgumentError("not a JSON object: " + path.string());
  return value.as_object();
}

StatusOr<const json::value*> Field(const json::object& object, std::string_view key) {
  const json::value* value = object.if_contains(key);
  if (value == nullptr) return InvalidArgumentError("missing field " + std::string(key));
  return value;
}

StatusOr<uint64_t> UintField(const json::object& object, std::string_view key) {
  FP_ASSIGN_OR_RETURN(const json::value* value, Field(object, key));
  boost::system::error_code error;
  const uint64_t number = value->to_number<uint64_t>(error);
  if (error) return InvalidArgumentError(std::string(key) + " is not an unsigned integer");
  return number;
}

StatusOr<bool> BoolField(const json::object& object, std::string_view key) {
  FP_ASSIGN_OR_RETURN(const json::value* value, Field(object, key));
  if (!value->is_bool()) return InvalidArgumentError(std::string(key) + " is not a boolean");
  return value->as_bool();
}

StatusOr<Bytes> Base64Field(const json::value& value) {
  if (!value.is_string()) return InvalidArgumentError("hash is not a string");
  return Base64Decode(std::string_view(value.as_string()));
}

StatusOr<Bytes> Base64Field(const json::object& object, std::string_view key) {
  FP_ASSIGN_OR_RETURN(const json::value* value, Field(object, key));
  return Base64Field(*value);
}

// `proof` is an array of base64 hashes, or null for an empty proof.
StatusOr<std::vector<Bytes>> ProofField(const json::object& object) {
  FP_ASSIGN_OR_RETURN(const json::value* value, Field(object, "proof"));
  std::vector<Bytes> proof;
  if (value->is_null()) return proof;
  if (!value->is_array()) return InvalidArgumentError("proof is neither null nor an array");
  for (const json::value& element : value->as_array()) {
    FP_ASSIGN_OR_RETURN(Bytes bytes, Base64Field(element));
    proof.push_back(std::move(bytes));
  }
  return proof;
}

// Leaf and proof hashes go through HashFromBytes, the check every fieldprint parser applies:
// a value that is not 32 bytes (the vectors' empty strings and garbage) is InvalidArgument, a
// rejection before verification, as in the upstream verifier.
StatusOr<std::vector<Hash>> ProofHashes(const std::vector<Bytes>& proof) {
  std::vector<Hash> hashes;
  for (const Bytes& bytes : proof) {
    FP_ASSIGN_OR_RETURN(Hash hash, HashFromBytes(bytes));
    hashes.push_back(hash);
  }
  return hashes;
}

// Roots are different. Upstream takes them as byte strings of any length and only compares them,
// and some vectors use short placeholders ("don't care 1") as roots where only the equality of
// two roots matters (one of them a happy path: equal sizes, equal placeholder roots). fieldprint
// types roots as 32-byte hashes, so a root of another length becomes a distinct 32-byte stand-in,
// SHA-256 of a tag and the value: equal placeholders stay equal, different ones stay different,
// and no stand-in equals a real tree hash, so the verifier itself decides those cases.
Hash RootHash(const Bytes& bytes) {
  StatusOr<Hash> hash = HashFromBytes(bytes);
  if (hash.ok()) return *hash;
  return Sha256Parts({AsBytes("merkle-vectors stand-in for a non-32-byte root:"), bytes});
}

// The verdict on one vector (a rejection by the hash parser or the verifier's status), and
// whether the vector expects rejection.
struct Outcome {
  Status verdict;
  bool want_error;
  bool rejected_by_parser;
};

StatusOr<Outcome> RunInclusionVector(const json::object& vector) {
  FP_ASSIGN_OR_RETURN(uint64_t index, UintField(vector, "leafIdx"));
  FP_ASSIGN_OR_RETURN(uint64_t size, UintField(vector, "treeSize"));
  FP_ASSIGN_OR_RETURN(Bytes root, Base64Field(vector, "root"));
  FP_ASSIGN_OR_RETURN(Bytes leaf_bytes, Base64Field(vector, "leafHash"));
  FP_ASSIGN_OR_RETURN(std::vector<Bytes> proof_bytes, ProofField(vector));
  FP_ASSIGN_OR_RETURN(bool want_error, BoolField(vector, "wantErr"));
  StatusOr<Hash> leaf_hash = HashFromBytes(leaf_bytes);
  if (!leaf_hash.ok()) return Outcome{leaf_hash.status(), want_error, true};
  StatusOr<std::vector<Hash>> proof = ProofHashes(proof_bytes);
  if (!proof.ok()) return Outcome{proof.status(), want_error, true};
  return Outcome{VerifyInclusion(*leaf_hash, index, size, *proof, RootHash(root)), want_error,
                 false};
}

StatusOr<Outcome> RunConsistencyVector(const json::object& vector) {
  FP_ASSIGN_OR_RETURN(uint64_t size1, UintField(vector, "size1"));
  FP_ASSIGN_OR_RETURN(uint64_t size2, UintField(vector, "size2"));
  FP_ASSIGN_OR_RETURN(Bytes root1, Base64Field(vector, "root1"));
  FP_ASSIGN_OR_RETURN(Bytes root2, Base64Field(vector, "root2"));
  FP_ASSIGN_OR_RETURN(std::vector<Bytes> proof_bytes, ProofField(vector));
  FP_ASSIGN_OR_RETURN(bool want_error, BoolField(vector, "wantErr"));
  StatusOr<std::vector<Hash>> proof = ProofHashes(proof_bytes);
  if (!proof.ok()) return Outcome{proof.status(), want_error, true};
  return Outcome{VerifyConsistency(size1, size2, *proof, RootHash(root1), RootHash(root2)),
                 want_error, false};
}

class MerkleVectorsTest : public ::testing::Test {
 protected:
  struct Counts {
    int happy = 0;
    int rejected = 0;
    int rejected_by_parser = 0;
  };

  // Runs every vector under `kind`/ with `run`, checking each verdict; returns the counts.
  template <typename Run>
  Counts RunAll(const std::string& kind, Run run) {
    Counts counts;
    const fs::path dir = VectorRoot() / kind;
    EXPECT_TRUE(fs::is_directory(dir)) << dir << " is missing";
    for (const fs::path& path : JsonFilesUnder(dir)) {
      SCOPED_TRACE(path.lexically_relative(VectorRoot()).string());
      StatusOr<json::object> vector = ReadObject(path);
      EXPECT_OK(vector);
      if (!vector.ok()) continue;
      StatusOr<Outcome> outcome = run(*vector);
      EXPECT_OK(outcome);
      if (!outcome.ok()) continue;
      if (outcome->want_error) {
        EXPECT_THAT(outcome->verdict, IsRejected());
        ++counts.rejected;
        if (outcome->rejected_by_parser) ++counts.rejected_by_parser;
      } else {
        EXPECT_OK(outcome->verdict);
        EXPECT_FALSE(outcome->rejected_by_parser);
        ++counts.happy;
      }
    }
    return counts;
  }
};

TEST_F(MerkleVectorsTest, EveryInclusionVectorHasTheExpectedVerdict) {
  const Counts counts = RunAll("inclusion", RunInclusionVector);
  // Zero vectors means the data went missing, not that everything passed.
  EXPECT_GT(counts.happy, 0);
  EXPECT_GT(counts.rejected, 0);
  std::printf("inclusion vectors: %d verified, %d rejected (%d by the hash parser)\n", counts.happy,
              counts.rejected, counts.rejected_by_parser);
}

TEST_F(MerkleVectorsTest, EveryConsistencyVectorHasTheExpectedVerdict) {
  const Counts counts = RunAll("consistency", RunConsistencyVector);
  EXPECT_GT(counts.happy, 0);
  EXPECT_GT(counts.rejected, 0);
  std::printf("consistency vectors: %d verified, %d rejected (%d by the hash parser)\n",
              counts.happy, counts.rejected, counts.rejected_by_parser);
}

TEST_F(MerkleVectorsTest, LicenseAndReadmeTravelWithTheData) {
  const fs::path dir = fp::testing::SourceDir() / "tests/testdata/merkle-vectors";
  EXPECT_TRUE(fs::is_regular_file(dir / "LICENSE"));
  EXPECT_TRUE(fs::is_regular_file(dir / "README.md"));
}

}  // namespace
}  // namespace fp::merkle
