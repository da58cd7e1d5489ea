// Tests of the API client's parsers and encoders: supervisor URLs, byte-level prompts, token
// hashes (known answers computed with Python's hashlib), session states and event streams in the
// shapes supervisor/api/api.cc writes, and error replies.
#include "supervisor/client/api_client.h"

#include <boost/json.hpp>
#include <gtest/gtest.h>

#include "common/base/bytes.h"
#include "tests/testutil/status_matchers.h"

namespace fp::client {
namespace {

using fp::testing::StatusIs;

constexpr char kSessionJson[] = R"({
  "session_id": "00112233445566778899aabbccddeeff", "phase": "verified", "model": "tiny",
  "verified_steps": 16, "max_tokens": 16, "divergences": 1, "admitted_unix_ms": 5,
  "replicas": [
    {"replica": 0, "worker_id": "worker-0", "epoch": 0, "stored_steps": 16, "next_step": 16,
     "finished": true},
    {"replica": 1, "worker_id": "worker-2", "epoch": 2, "stored_steps": 16, "next_step": 16,
     "finished": true}],
  "session_root": "ab", "ledger_index": 7, "verified_unix_ms": 9})";

class ApiClientTest : public ::testing::Test {};

TEST_F(ApiClientTest, ParsesSupervisorUrls) {
  ASSERT_OK_AND_ASSIGN(SupervisorUrl url, ParseSupervisorUrl("http://127.0.0.1:8080"));
  EXPECT_EQ(url.host, "127.0.0.1");
  EXPECT_EQ(url.port, 8080);
  EXPECT_EQ(url.ToString(), "http://127.0.0.1:8080");
  ASSERT_OK_AND_ASSIGN(SupervisorUrl slash, ParseSupervisorUrl("http://localhost:1/"));
  EXPECT_EQ(slash.host, "localhost");
  EXPECT_EQ(slash.port, 1);
}

TEST_F(ApiClientTest, BytePromptIsOneTokenPerUtf8Byte) {
  EXPECT_EQ(BytePromptTokens("Hi"), (std::vector<uint32_t>{72, 105}));
  EXPECT_EQ(BytePromptTokens("\xc3\xa9"), (std::vector<uint32_t>{0xc3, 0xa9}));
  EXPECT_EQ(ByteOutputText({72, 105, 257}), "Hi<257>");
}

TEST_F(ApiClientTest, TokenHashMatchesKnownAnswers) {
  EXPECT_EQ(HexEncode(TokenHash({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(HexEncode(TokenHash({1})),
            "b40711a88c7039756fb8a73827eabe2c0fe5a0346ca7e0a104adc0fc764f528d");
  EXPECT_EQ(HexEncode(TokenHash({72, 105})),
            "44becf86785412342f88fe22ddbef28349922c4429ea5f3eacf42525bb5f8a3d");
}

TEST_F(ApiClientTest, SubmitBodyNamesOnlyWhatIsSet) {
  SubmitRequest request;
  request.model = "tiny";
  request.prompt_token_ids = {1, 2};
  request.seed = 7;
  boost::json::object body = SubmitBody(request);
  EXPECT_EQ(body.at("model").as_string(), "tiny");
  EXPECT_EQ(body.at("prompt_token_ids").as_array().size(), 2u);
  EXPECT_EQ(body.at("seed").to_number<uint64_t>(), 7u);
  EXPECT_FALSE(body.contains("max_tokens"));
  EXPECT_FALSE(body.contains("replicas"));
  request.max_tokens = 9;
  request.replicas = 3;
  body = SubmitBody(request);
  EXPECT_EQ(body.at("max_tokens").to_number<uint32_t>(), 9u);
  EXPECT_EQ(body.at("replicas").to_number<uint32_t>(), 3u);
}

TEST_F(ApiClientTest, ParsesSessionState) {
  ASSERT_OK_AND_ASSIGN(SessionView view, ParseSessionView(kSessionJson));
  EXPECT_EQ(view.session_id, "00112233445566778899aabbccddeeff");
  EXPECT_EQ(view.phase, "verified");
  EXPECT_TRUE(view.done());
  EXPECT_EQ(view.verified_steps, 16u);
  EXPECT_EQ(view.divergences, 1u);
  ASSERT_EQ(view.replicas.size(), 2u);
  EXPECT_EQ(view.replicas[1].worker_id, "worker-2");
  EXPECT_TRUE(view.replicas[1].finished);
  EXPECT_EQ(view.epochs_advanced(), 2u);
  EXPECT_EQ(view.ledger_index, std::optional<uint64_t>(7));
}

TEST_F(ApiClientTest, ParsesEventStreamOfAVerifiedSession) {
  const std::string stream =
      "event: token\ndata: {\"step\":0,\"token_id\":72}\n\n"
      "event: token\ndata: {\"step\":1,\"token_id\":105}\n\n"
      "event: verified\ndata: {\"output_hash\":\"aa\",\"steps\":2}\n\n";
  ASSERT_OK_AND_ASSIGN(SessionOutput output, ParseEventStream(stream));
  EXPECT_EQ(output.token_ids, (std::vector<uint32_t>{72, 105}));
  EXPECT_EQ(output.receipt.at("steps").to_number<int>(), 2);
}

TEST_F(ApiClientTest, ErrorBodyKeepsTheSupervisorsCode) {
  EXPECT_THAT(StatusFromReply(409, R"({"error":{"code":"FAILED_PRECONDITION","message":"m"}})"),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(StatusFromReply(404, R"({"error":{"code":"NOT_FOUND","message":"no"}})"),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(StatusFromReply(503, "draining\n"), StatusIs(StatusCode::kUnavailable));
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(ApiClientTest, BadUrlsAreRefused) {
  for (const char* url : {"https://h:1", "h:1", "http://h", "http://h:0", "http://h:70000",
                          "http://h:1/v1", "http://u@h:1", "http://:1", "http://h:1x"}) {
    EXPECT_THAT(ParseSupervisorUrl(url), StatusIs(StatusCode::kInvalidArgument)) << url;
  }
}

TEST_F(ApiClientTest, SessionStateWithoutAFieldIsDataLoss) {
  EXPECT_THAT(ParseSessionView(R"({"session_id":"x","phase":"running"})"),
              StatusIs(StatusCode::kDataLoss));
  EXPECT_THAT(ParseSessionView("not json"), StatusIs(StatusCode::kDataLoss));
  boost::json::object verified = boost::json::parse(kSessionJson).as_object();
  verified.erase("session_root");
  EXPECT_THAT(ParseSessionView(boost::json::serialize(verified)), StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, EventStreamThatSkipsAStepIsDataLoss) {
  EXPECT_THAT(ParseEventStream("event: token\ndata: {\"step\":1,\"token_id\":72}\n\n"),
              StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, EventStreamWithoutAReceiptIsDataLoss) {
  EXPECT_THAT(ParseEventStream("event: token\ndata: {\"step\":0,\"token_id\":72}\n\n"),
              StatusIs(StatusCode::kDataLoss));
}

TEST_F(ApiClientTest, ErrorEventIsAborted) {
  EXPECT_THAT(ParseEventStream("event: error\ndata: {\"code\":\"ABORTED\"}\n\n"),
              StatusIs(StatusCode::kAborted));
}

TEST_F(ApiClientTest, MalformedStepProofIsDataLoss) {
  EXPECT_THAT(ParseStepProof(R"({"step":0,"tree_size":1,"root":"zz"})"),
              StatusIs(StatusCode::kDataLoss));
}

}  // namespace
}  // namespace fp::client
