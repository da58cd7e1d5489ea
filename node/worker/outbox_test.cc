// Tests of the durable outbox: what is put survives reopening (byte for byte, in key order), acks
// and forgets are replayed, cursors outlive acks, bounds refuse without writing, compaction keeps
// the live state, and a corrupt or cut-short tail is dropped (never a crash) while everything
// before it is kept. The record checksum is checked against an independent bitwise CRC-32C.
#include "node/worker/outbox.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/crypto/sha256.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::node::worker {
namespace {

using ::fp::testing::StatusIs;
using ::fp::testing::TempDir;

// Bitwise CRC-32C (reflected polynomial 0x82F63B78), written from the definition.
uint32_t NaiveCrc32c(ByteSpan data) {
  uint32_t crc = 0xFFFFFFFF;
  for (uint8_t byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0x82F63B78 & (0u - (crc & 1)));
  }
  return ~crc;
}

SessionId Session(uint8_t tag) {
  SessionId id{};
  id[0] = tag;
  id[15] = 0x5a;
  return id;
}

wire::pb::LeafBatch Batch(uint8_t session, uint32_t replica, uint64_t epoch, uint64_t first_step,
                          size_t count) {
  wire::pb::LeafBatch batch;
  const SessionId id = Session(session);
  batch.set_session_id(std::string(id.begin(), id.end()));
  batch.set_replica(replica);
  batch.set_epoch(epoch);
  batch.set_first_step(first_step);
  for (size_t i = 0; i < count; ++i) {
    const uint64_t step = first_step + i;
    wire::AppendStepLeaf(batch, static_cast<uint32_t>(step % 251),
                         Sha256("digest " + std::to_string(session) + "/" + std::to_string(step)));
  }
  return batch;
}

class OutboxTest : public ::testing::Test {
 protected:
  std::unique_ptr<Outbox> Open(OutboxOptions options = {}) {
    auto outbox = Outbox::Open(dir_.path().string(), options);
    EXPECT_OK(outbox);
    return outbox.ok() ? std::move(outbox).value() : nullptr;
  }
  std::string FilePath() const { return dir_.Join("outbox.log"); }
  uint64_t FileSize() const { return std::filesystem::file_size(FilePath()); }
  void AppendToFile(const std::string& bytes) {
    std::ofstream file(FilePath(), std::ios::binary | std::ios::app);
    file << bytes;
  }
  static std::vector<std::string> Serialized(const Outbox& outbox) {
    std::vector<std::string> out;
    for (const wire::pb::LeafBatch* batch : outbox.Pending()) {
      out.push_back(batch->SerializeAsString());
    }
    return out;
  }

  TempDir dir_;
};

TEST_F(OutboxTest, NewOutboxIsEmpty) {
  auto outbox = Open();
  ASSERT_NE(outbox, nullptr);
  EXPECT_EQ(outbox->batches(), 0u);
  EXPECT_EQ(outbox->bytes(), 0u);
  EXPECT_EQ(outbox->dropped_tail_bytes(), 0u);
  EXPECT_FALSE(outbox->Cursor(Session(1), 0).has_value());
}

TEST_F(OutboxTest, PutBatchesSurviveReopenInKeyOrderByteForByte) {
  const std::vector<wire::pb::LeafBatch> batches = {Batch(2, 0, 0, 16, 16), Batch(1, 1, 0, 0, 4),
                                                    Batch(2, 0, 0, 0, 16)};
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(batches));
    EXPECT_EQ(outbox->batches(), 3u);
  }
  auto reopened = Open();
  // Key order: session 1 first, then session 2's steps 0 and 16.
  const std::vector<std::string> expected = {batches[1].SerializeAsString(),
                                             batches[2].SerializeAsString(),
                                             batches[0].SerializeAsString()};
  EXPECT_EQ(Serialized(*reopened), expected);
  EXPECT_EQ(reopened->dropped_tail_bytes(), 0u);
}

TEST_F(OutboxTest, FirstRecordCarriesCrc32cOfItsBody) {
  EXPECT_EQ(NaiveCrc32c(AsBytes("123456789")), 0xE3069283u);  // the published check value
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 3)}));
  }
  std::ifstream file(FilePath(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), {});
  ASSERT_GE(bytes.size(), 20u);
  EXPECT_EQ(bytes.substr(0, 8), "FPOUTBOX");
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  EXPECT_EQ(LoadU32(p + 8), kOutboxVersion);
  const uint32_t length = LoadU32(p + 12);
  ASSERT_EQ(bytes.size(), 20u + length);
  EXPECT_EQ(LoadU32(p + 16), NaiveCrc32c(ByteSpan(p + 20, length)));
  EXPECT_EQ(p[20], 1);  // PUT
  EXPECT_EQ(bytes.substr(21), Batch(1, 0, 0, 0, 3).SerializeAsString());
}

TEST_F(OutboxTest, AckRemovesABatchAcrossReopen) {
  {
    auto outbox = Open();
    ASSERT_OK(
        outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 8), Batch(1, 0, 0, 8, 8)}));
    ASSERT_OK(outbox->Ack(KeyOf(Batch(1, 0, 0, 0, 8))));
    ASSERT_OK(outbox->Ack(KeyOf(Batch(9, 0, 0, 0, 8))));  // unknown: a duplicate Ack
    EXPECT_EQ(outbox->batches(), 1u);
  }
  auto reopened = Open();
  EXPECT_EQ(Serialized(*reopened),
            std::vector<std::string>{Batch(1, 0, 0, 8, 8).SerializeAsString()});
  EXPECT_EQ(reopened->bytes(), Batch(1, 0, 0, 8, 8).ByteSizeLong());
}

TEST_F(OutboxTest, CursorFollowsTheNewestEpochAndOutlivesAcks) {
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(
        std::vector<wire::pb::LeafBatch>{Batch(1, 2, 0, 0, 16), Batch(1, 2, 0, 16, 16)}));
    EXPECT_EQ(outbox->Cursor(Session(1), 2), (ReplicaCursor{0, 32}));
    // A rollback to step 20 in epoch 1 moves the cursor back.
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 2, 1, 20, 4)}));
    EXPECT_EQ(outbox->Cursor(Session(1), 2), (ReplicaCursor{1, 24}));
    for (const wire::pb::LeafBatch& batch :
         {Batch(1, 2, 0, 0, 16), Batch(1, 2, 0, 16, 16), Batch(1, 2, 1, 20, 4)}) {
      ASSERT_OK(outbox->Ack(KeyOf(batch)));
    }
    EXPECT_EQ(outbox->batches(), 0u);
  }
  auto reopened = Open();
  EXPECT_EQ(reopened->Cursor(Session(1), 2), (ReplicaCursor{1, 24}));
  EXPECT_FALSE(reopened->Cursor(Session(1), 0).has_value());
}

TEST_F(OutboxTest, ForgetDropsAReplicasBatchesAndCursor) {
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{
        Batch(1, 0, 0, 0, 4), Batch(1, 0, 1, 2, 4), Batch(1, 1, 0, 0, 4), Batch(2, 0, 0, 0, 4)}));
    ASSERT_OK(outbox->Forget(Session(1), 0));
    EXPECT_EQ(outbox->batches(), 2u);
  }
  auto reopened = Open();
  EXPECT_EQ(Serialized(*reopened),
            (std::vector<std::string>{Batch(1, 1, 0, 0, 4).SerializeAsString(),
                                      Batch(2, 0, 0, 0, 4).SerializeAsString()}));
  EXPECT_FALSE(reopened->Cursor(Session(1), 0).has_value());
  EXPECT_TRUE(reopened->Cursor(Session(1), 1).has_value());
}

TEST_F(OutboxTest, PutOfAPendingKeyReplacesIt) {
  auto outbox = Open();
  ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 4)}));
  ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 6)}));
  EXPECT_EQ(outbox->batches(), 1u);
  EXPECT_EQ(outbox->bytes(), Batch(1, 0, 0, 0, 6).ByteSizeLong());
}

TEST_F(OutboxTest, CompactionKeepsLiveBatchesAndCursors) {
  auto outbox = Open();
  // Full batches are about 150 KB; 40 of them pass the compaction threshold once acked.
  for (uint64_t i = 0; i < 40; ++i) {
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{
        Batch(1, 0, 0, i * wire::kMaxLeafBatchSteps, wire::kMaxLeafBatchSteps)}));
  }
  for (uint64_t i = 0; i < 39; ++i) {
    ASSERT_OK(outbox->Ack(KeyOf(Batch(1, 0, 0, i * wire::kMaxLeafBatchSteps, 1))));
  }
  // About 5.5 MB were written; a rewrite brought the file under the compaction threshold.
  EXPECT_LT(outbox->file_bytes(), kCompactionMinBytes);
  EXPECT_EQ(FileSize(), outbox->file_bytes());
  outbox.reset();
  auto reopened = Open();
  const wire::pb::LeafBatch last =
      Batch(1, 0, 0, 39 * wire::kMaxLeafBatchSteps, wire::kMaxLeafBatchSteps);
  EXPECT_EQ(Serialized(*reopened), std::vector<std::string>{last.SerializeAsString()});
  EXPECT_EQ(reopened->Cursor(Session(1), 0), (ReplicaCursor{0, 40 * wire::kMaxLeafBatchSteps}));
}

TEST_F(OutboxTest, GarbageAfterTheLastRecordIsDroppedAndAppendsContinue) {
  {
    auto outbox = Open();
    ASSERT_OK(
        outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 4), Batch(1, 0, 0, 4, 4)}));
  }
  const uint64_t clean = FileSize();
  AppendToFile(std::string("\x00\x00\x00\x10garbage-bytes-here", 22));
  {
    auto reopened = Open();
    EXPECT_EQ(reopened->batches(), 2u);
    EXPECT_EQ(reopened->dropped_tail_bytes(), 22u);
    EXPECT_EQ(FileSize(), clean);
    ASSERT_OK(reopened->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 8, 4)}));
  }
  auto again = Open();
  EXPECT_EQ(again->batches(), 3u);
  EXPECT_EQ(again->dropped_tail_bytes(), 0u);
}

TEST_F(OutboxTest, RecordCutShortIsDroppedAndEarlierOnesKept) {
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 4)}));
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 4, 4)}));
  }
  std::filesystem::resize_file(FilePath(), FileSize() - 5);
  auto reopened = Open();
  EXPECT_EQ(Serialized(*reopened),
            std::vector<std::string>{Batch(1, 0, 0, 0, 4).SerializeAsString()});
  EXPECT_GT(reopened->dropped_tail_bytes(), 0u);
}

TEST_F(OutboxTest, FlippedByteFailsTheChecksumAndEndsTheReplay) {
  {
    auto outbox = Open();
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 4)}));
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 4, 4)}));
  }
  {
    std::fstream file(FilePath(), std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(static_cast<std::streamoff>(FileSize() - 3));
    file.put('\x7f');
  }
  auto reopened = Open();
  EXPECT_EQ(reopened->batches(), 1u);
  EXPECT_EQ(reopened->Pending()[0]->first_step(), 0u);
}

TEST_F(OutboxTest, FileCutInsideTheHeaderStartsEmpty) {
  { std::ofstream(FilePath(), std::ios::binary) << "FPOUT"; }
  auto outbox = Open();
  EXPECT_EQ(outbox->batches(), 0u);
  ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 1)}));
}

// ---- Error paths -------------------------------------------------------------------------

TEST_F(OutboxTest, BatchBoundRefusesWithoutWriting) {
  OutboxOptions options;
  options.max_batches = 2;
  {
    auto outbox = Open(options);
    ASSERT_OK(
        outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 4), Batch(1, 0, 0, 4, 4)}));
    const uint64_t size = outbox->file_bytes();
    EXPECT_THAT(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 8, 4)}),
                StatusIs(StatusCode::kResourceExhausted));
    EXPECT_EQ(outbox->file_bytes(), size);
    EXPECT_EQ(FileSize(), size);
    // An ack makes room again.
    ASSERT_OK(outbox->Ack(KeyOf(Batch(1, 0, 0, 0, 4))));
    ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 8, 4)}));
  }
  EXPECT_EQ(Open(options)->batches(), 2u);
}

TEST_F(OutboxTest, ByteBoundRefusesWithoutWriting) {
  OutboxOptions options;
  options.max_bytes = Batch(1, 0, 0, 0, 8).ByteSizeLong() + 10;
  auto outbox = Open(options);
  ASSERT_OK(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 0, 8)}));
  EXPECT_THAT(outbox->Put(std::vector<wire::pb::LeafBatch>{Batch(1, 0, 0, 8, 8)}),
              StatusIs(StatusCode::kResourceExhausted));
  EXPECT_EQ(outbox->batches(), 1u);
}

TEST_F(OutboxTest, ForeignFileIsRefusedAndLeftAlone) {
  { std::ofstream(FilePath(), std::ios::binary) << "this is somebody else's file, not ours"; }
  EXPECT_THAT(Outbox::Open(dir_.path().string(), {}), StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(FileSize(), 38u);
}

TEST_F(OutboxTest, OptionsOutOfRangeAreRefused) {
  OutboxOptions options;
  options.max_batches = 0;
  EXPECT_THAT(Outbox::Open(dir_.path().string(), options), StatusIs(StatusCode::kInvalidArgument));
  options.max_batches = kMaxOutboxBatches + 1;
  EXPECT_THAT(Outbox::Open(dir_.path().string(), options), StatusIs(StatusCode::kInvalidArgument));
  options = OutboxOptions{};
  options.max_bytes = kMaxOutboxBytes + 1;
  EXPECT_THAT(Outbox::Open(dir_.path().string(), options), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(OutboxTest, MissingDirectoryIsAnError) {
  EXPECT_FALSE(Outbox::Open(dir_.Join("no/such/dir"), {}).ok());
}

}  // namespace
}  // namespace fp::node::worker
