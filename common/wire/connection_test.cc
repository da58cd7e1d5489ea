// Tests of Connection and Listener (connection.h) over real loopback sockets, with certificates
// made by InitCerts. Misbehaving peers are driven by RawTlsClient, a plain Asio TLS client that
// can send any bytes; what they get back is decoded with FrameDecoder.
#include "common/wire/connection.h"

#include <condition_variable>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <spdlog/sinks/ringbuffer_sink.h>

#include "common/base/log.h"
#include "common/wire/certs.h"
#include "common/wire/tls.h"
#include "common/wire/wire_samples.h"
#include "tests/testutil/status_matchers.h"
#include "tests/testutil/test_env.h"

namespace fp::wire {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using ::fp::testing::StatusIs;
using ::fp::testing::TempDir;
using ::testing::HasSubstr;

// Bounds every wait in this file; a test that reaches it has failed.
constexpr auto kWaitLimit = std::chrono::seconds(10);

pb::Envelope Heartbeat(uint64_t sequence) {
  pb::Envelope envelope;
  envelope.mutable_heartbeat()->set_sequence(sequence);
  return envelope;
}

// Thread-safe record of one side's callbacks.
class Recorder {
 public:
  using Reply = std::function<void(const std::shared_ptr<Connection>&, const pb::Envelope&)>;

  // Handlers that record every event and then call `reply` for each envelope (if set).
  ConnectionHandlers Handlers(Reply reply = nullptr) {
    ConnectionHandlers handlers;
    handlers.on_open = [this](const std::shared_ptr<Connection>& connection) {
      std::lock_guard<std::mutex> lock(mutex_);
      opened_.push_back(connection->peer_identity());
      changed_.notify_all();
    };
    handlers.on_envelope = [this, reply](const std::shared_ptr<Connection>& connection,
                                         pb::Envelope envelope) {
      if (reply) reply(connection, envelope);
      std::lock_guard<std::mutex> lock(mutex_);
      envelopes_.push_back(std::move(envelope));
      changed_.notify_all();
    };
    handlers.on_close = [this](const std::shared_ptr<Connection>&, const Status& status) {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_.push_back(status);
      changed_.notify_all();
    };
    return handlers;
  }

  bool WaitForEnvelopes(size_t count) {
    return Wait([&] { return envelopes_.size() >= count; });
  }
  bool WaitForCloses(size_t count) {
    return Wait([&] { return closed_.size() >= count; });
  }
  std::vector<std::string> opened() {
    std::lock_guard<std::mutex> lock(mutex_);
    return opened_;
  }
  std::vector<pb::Envelope> envelopes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return envelopes_;
  }
  std::vector<Status> closed() {
    std::lock_guard<std::mutex> lock(mutex_);
    return closed_;
  }

 private:
  bool Wait(const std::function<bool()>& done) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, kWaitLimit, done);
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> opened_;
  std::vector<pb::Envelope> envelopes_;
  std::vector<Status> closed_;
};

// A TLS client that sends raw bytes, on its own io_context; every operation is bounded by
// kWaitLimit.
class RawTlsClient {
 public:
  explicit RawTlsClient(ssl::context& tls) : stream_(io_, tls) {}

  boost::system::error_code Connect(uint16_t port) {
    boost::system::error_code result = asio::error::timed_out;
    stream_.lowest_layer().async_connect(
        tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
        [&](const boost::system::error_code& error) {
          result = error;
          if (error) return;
          stream_.async_handshake(
              ssl::stream_base::client,
              [&](const boost::system::error_code& handshake) { result = handshake; });
        });
    Run();
    return result;
  }

  boost::system::error_code Write(ByteSpan bytes) {
    boost::system::error_code result = asio::error::timed_out;
    asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                      [&](const boost::system::error_code& error, size_t) { result = error; });
    Run();
    return result;
  }

  // Sends our TLS close_notify and waits for the server's.
  boost::system::error_code Shutdown() {
    boost::system::error_code result = asio::error::timed_out;
    stream_.async_shutdown([&](const boost::system::error_code& error) { result = error; });
    Run();
    return result;
  }

  // Reads until the stream ends; returns the bytes and sets `end` to the error that ended it.
  Bytes ReadUntilClosed(boost::system::error_code& end) {
    Bytes received;
    std::array<uint8_t, 4096> buffer;
    end = asio::error::timed_out;
    std::function<void()> read = [&] {
      stream_.async_read_some(
          asio::buffer(buffer), [&](const boost::system::error_code& error, size_t bytes) {
            received.insert(received.end(), buffer.begin(), buffer.begin() + bytes);
            if (error) {
              end = error;
              return;
            }
            read();
          });
    };
    read();
    Run();
    return received;
  }

 private:
  void Run() {
    io_.restart();
    io_.run_for(kWaitLimit);
  }

  asio::io_context io_;
  ssl::stream<tcp::socket> stream_;
};

class ConnectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
    InitLogging(LogLevel::kInfo, LogFormat::kText, log_);
    ASSERT_OK(InitCerts(certs_.path().string(), CertsOptions()));
    ASSERT_OK(InitCerts(other_certs_.path().string(), CertsOptions()));
    ASSERT_OK_AND_ASSIGN(server_tls_, MakeServerTlsContext(Files("supervisor-0")));
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }

  void TearDown() override {
    if (listener_) listener_->Stop();
    work_.reset();
    io_.stop();
    for (std::thread& thread : threads_) thread.join();
    InitLogging(LogLevel::kInfo, LogFormat::kText);
  }

  TlsFiles Files(const std::string& name) const {
    return TlsFilesForNode(certs_.path().string(), name);
  }

  // Starts the supervisor-0 listener on a free loopback port; the server answers every
  // heartbeat with the next sequence number.
  void StartServer(ConnectionOptions options = {}) {
    auto reply = [](const std::shared_ptr<Connection>& connection, const pb::Envelope& envelope) {
      if (envelope.has_heartbeat()) {
        EXPECT_OK(connection->Send(Heartbeat(envelope.heartbeat().sequence() + 1)));
      }
    };
    ASSERT_OK_AND_ASSIGN(
        listener_,
        Listener::Create(io_, *server_tls_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0),
                         server_.Handlers(reply), options));
    listener_->Start();
  }

  uint16_t port() const { return listener_->local_endpoint().port(); }

  // A client context owned by the fixture.
  ssl::context& ClientTls(const TlsFiles& files) {
    StatusOr<std::unique_ptr<ssl::context>> tls = MakeClientTlsContext(files);
    FP_CHECK_OK(tls);
    client_tls_.push_back(std::move(tls).value());
    return *client_tls_.back();
  }

  std::shared_ptr<Connection> Connect(Recorder& recorder, const TlsFiles& files,
                                      std::string server_name = "supervisor-0",
                                      ConnectionOptions options = {}) {
    return Connection::Connect(io_, ClientTls(files), "127.0.0.1", port(), std::move(server_name),
                               recorder.Handlers(), options);
  }

  // Connects a RawTlsClient as worker-1, sends `bytes`, and returns what the server sent back
  // until it closed the stream.
  Bytes SendRaw(ByteSpan bytes) {
    RawTlsClient raw(ClientTls(Files("worker-1")));
    EXPECT_FALSE(raw.Connect(port()));
    EXPECT_FALSE(raw.Write(bytes));
    boost::system::error_code end;
    Bytes received = raw.ReadUntilClosed(end);
    EXPECT_EQ(end, asio::error::eof) << end.message();
    return received;
  }

  // The single Error envelope in `bytes`, which must be whole frames.
  static pb::Error DecodeError(ByteSpan bytes) {
    FrameDecoder decoder;
    std::vector<pb::Envelope> envelopes;
    EXPECT_OK(decoder.Feed(bytes, envelopes));
    EXPECT_FALSE(decoder.mid_frame());
    EXPECT_EQ(envelopes.size(), 1u);
    if (envelopes.empty()) return {};
    EXPECT_TRUE(envelopes[0].has_error());
    return envelopes[0].error();
  }

  // Log lines so far that contain `text`.
  size_t LogLinesWith(const std::string& text) {
    size_t count = 0;
    for (const std::string& line : log_->last_formatted()) {
      count += line.find(text) != std::string::npos;
    }
    return count;
  }

  // A valid client exchange, proving the server still serves.
  void ExpectHealthyExchange() {
    Recorder client;
    auto connection = Connect(client, Files("worker-0"));
    connection->Start();
    ASSERT_OK(connection->Send(Heartbeat(100)));
    ASSERT_TRUE(client.WaitForEnvelopes(1));
    EXPECT_EQ(client.envelopes()[0].heartbeat().sequence(), 101u);
    connection->Close();
    ASSERT_TRUE(client.WaitForCloses(1));
  }

  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> log_;
  TempDir certs_;
  TempDir other_certs_;
  std::unique_ptr<ssl::context> server_tls_;
  std::vector<std::unique_ptr<ssl::context>> client_tls_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  std::vector<std::thread> threads_;
  Recorder server_;
  std::shared_ptr<Listener> listener_;
};

TEST_F(ConnectionTest, ExchangesEnvelopesBothWaysWithIdentities) {
  StartServer();
  Recorder client;
  auto connection = Connect(client, Files("worker-0"));
  connection->Start();
  std::vector<pb::Envelope> samples = SampleEnvelopes();
  for (const pb::Envelope& sample : samples) ASSERT_OK(connection->Send(sample));
  ASSERT_OK(connection->Send(Heartbeat(7)));
  ASSERT_TRUE(server_.WaitForEnvelopes(samples.size() + 1));
  // The server answered the sample heartbeat (41) and ours (7).
  ASSERT_TRUE(client.WaitForEnvelopes(2));

  EXPECT_EQ(server_.opened(), std::vector<std::string>{"worker-0"});
  EXPECT_EQ(client.opened(), std::vector<std::string>{"supervisor-0"});
  const std::vector<pb::Envelope> received = server_.envelopes();
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_EQ(received[i].SerializeAsString(), samples[i].SerializeAsString()) << i;
  }
  EXPECT_EQ(client.envelopes()[0].heartbeat().sequence(), 42u);
  EXPECT_EQ(client.envelopes()[1].heartbeat().sequence(), 8u);
  EXPECT_EQ(listener_->open_connections(), 1u);

  connection->Close();
  ASSERT_TRUE(client.WaitForCloses(1));
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_OK(client.closed()[0]);
  EXPECT_OK(server_.closed()[0]);
  EXPECT_EQ(listener_->open_connections(), 0u);
  EXPECT_THAT(connection->Send(Heartbeat(1)), StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(ConnectionTest, FramesSentBeforeTheHandshakeAreDeliveredAfterIt) {
  StartServer();
  Recorder client;
  auto connection = Connect(client, Files("worker-2"));
  ASSERT_OK(connection->Send(Heartbeat(1)));
  ASSERT_OK(connection->Send(Heartbeat(2)));
  connection->Start();
  ASSERT_TRUE(server_.WaitForEnvelopes(2));
  EXPECT_EQ(server_.envelopes()[1].heartbeat().sequence(), 2u);
  EXPECT_EQ(server_.opened(), std::vector<std::string>{"worker-2"});
  connection->Close();
  ASSERT_TRUE(client.WaitForCloses(1));
}

TEST_F(ConnectionTest, CloseWithReasonSendsErrorToThePeer) {
  ConnectionOptions options;
  auto reply = [](const std::shared_ptr<Connection>& connection, const pb::Envelope&) {
    connection->Close(FailedPreconditionError("register first"));
  };
  ASSERT_OK_AND_ASSIGN(
      listener_,
      Listener::Create(io_, *server_tls_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0),
                       server_.Handlers(reply), options));
  listener_->Start();
  Recorder client;
  auto connection = Connect(client, Files("worker-0"));
  connection->Start();
  ASSERT_OK(connection->Send(Heartbeat(1)));
  ASSERT_TRUE(client.WaitForCloses(1));
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_OK(client.closed()[0]);  // the peer closed cleanly, after saying why
  ASSERT_EQ(client.envelopes().size(), 1u);
  const Status why = StatusFromError(client.envelopes()[0].error());
  EXPECT_THAT(why, StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(why.message(), "register first");
}

TEST_F(ConnectionTest, SendQueueIsBounded) {
  StartServer();
  Recorder client;
  ConnectionOptions options;
  options.max_send_queue_frames = 2;
  auto connection = Connect(client, Files("worker-0"), "supervisor-0", options);
  // Not started: nothing is written, so the queue only fills.
  ASSERT_OK(connection->Send(Heartbeat(1)));
  ASSERT_OK(connection->Send(Heartbeat(2)));
  EXPECT_THAT(connection->Send(Heartbeat(3)), StatusIs(StatusCode::kResourceExhausted));
  EXPECT_EQ(connection->queued_frames(), 2u);
  EXPECT_THAT(connection->Send(pb::Envelope()), StatusIs(StatusCode::kInvalidArgument));
  connection->Close();
  ASSERT_TRUE(client.WaitForCloses(1));
  EXPECT_THAT(client.closed()[0], StatusIs(StatusCode::kCancelled));
  EXPECT_EQ(connection->queued_frames(), 0u);
}

// --- Error paths -------------------------------------------------------------------------------

TEST_F(ConnectionTest, ClientWithCertificateFromAnotherCaIsRefused) {
  StartServer();
  Recorder client;
  // Trusts our CA (so it accepts the server) but presents a certificate of another CA.
  TlsFiles files = TlsFilesForNode(other_certs_.path().string(), "worker-0");
  files.ca_file = Files("worker-0").ca_file;
  auto connection = Connect(client, files);
  ASSERT_OK(connection->Send(Heartbeat(1)));
  connection->Start();
  ASSERT_TRUE(server_.WaitForCloses(1));
  ASSERT_TRUE(client.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kUnauthenticated));
  EXPECT_TRUE(server_.opened().empty());
  EXPECT_TRUE(server_.envelopes().empty());
  EXPECT_FALSE(client.closed()[0].ok());
  EXPECT_GE(LogLinesWith("certificate verify failed"), 1u);
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, ClientWithoutCertificateIsRefused) {
  StartServer();
  ssl::context bare(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(bare.native_handle(), TLS1_3_VERSION);
  boost::system::error_code error;
  bare.load_verify_file(Files("worker-0").ca_file, error);
  ASSERT_FALSE(error);
  bare.set_verify_mode(ssl::verify_peer);
  RawTlsClient raw(bare);
  // TLS 1.3: the client's half of the handshake completes; the server refuses afterwards.
  raw.Connect(port());
  boost::system::error_code end;
  EXPECT_TRUE(raw.ReadUntilClosed(end).empty());
  EXPECT_NE(end, asio::error::timed_out);
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kUnauthenticated));
  EXPECT_TRUE(server_.opened().empty());
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, ServerWithTheWrongNameIsRefused) {
  StartServer();
  Recorder client;
  auto connection = Connect(client, Files("worker-0"), /*server_name=*/"worker-1");
  connection->Start();
  ASSERT_TRUE(client.WaitForCloses(1));
  EXPECT_THAT(client.closed()[0], StatusIs(StatusCode::kUnauthenticated));
  EXPECT_TRUE(client.opened().empty());
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_TRUE(server_.opened().empty());
}

TEST_F(ConnectionTest, GarbageBytesCloseWithDataLossAndAReason) {
  StartServer();
  const Bytes received = SendRaw(AsBytes("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kDataLoss));
  EXPECT_EQ(server_.opened(), std::vector<std::string>{"worker-1"});
  EXPECT_EQ(DecodeError(received).code(), static_cast<uint32_t>(StatusCode::kDataLoss));
  EXPECT_EQ(LogLinesWith("not the magic"), 1u);
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, OversizedLengthClosesBeforeThePayload) {
  StartServer();
  const uint32_t length = kMaxFramePayloadBytes + 1;
  const Bytes header = {'F',
                        'P',
                        'W',
                        kProtocolVersion,
                        static_cast<uint8_t>(length >> 24),
                        static_cast<uint8_t>(length >> 16),
                        static_cast<uint8_t>(length >> 8),
                        static_cast<uint8_t>(length)};
  const Bytes received = SendRaw(header);
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(DecodeError(received).code(), static_cast<uint32_t>(StatusCode::kInvalidArgument));
  EXPECT_EQ(LogLinesWith("exceeds the limit"), 1u);
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, WrongVersionIsRefused) {
  StartServer();
  ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(Heartbeat(1)));
  frame[3] = kProtocolVersion + 1;
  const Bytes received = SendRaw(frame);
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeError(received).reason(), HasSubstr("protocol version 2"));
  EXPECT_EQ(LogLinesWith("protocol version 2"), 1u);
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, PeerClosingMidFrameIsDataLoss) {
  StartServer();
  ASSERT_OK_AND_ASSIGN(Bytes frame, EncodeFrame(SampleEnvelopes()[2]));
  RawTlsClient raw(ClientTls(Files("worker-1")));
  ASSERT_FALSE(raw.Connect(port()));
  ASSERT_FALSE(raw.Write(ByteSpan(frame).first(frame.size() / 2)));
  raw.Shutdown();
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kDataLoss));
  EXPECT_TRUE(server_.envelopes().empty());
}

TEST_F(ConnectionTest, SilentPeerHitsTheReadDeadline) {
  ConnectionOptions options;
  options.read_timeout = std::chrono::milliseconds(300);
  StartServer(options);
  RawTlsClient raw(ClientTls(Files("worker-1")));
  const auto start = std::chrono::steady_clock::now();
  ASSERT_FALSE(raw.Connect(port()));
  ASSERT_TRUE(server_.WaitForCloses(1));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_GE(elapsed, std::chrono::milliseconds(300));
  EXPECT_EQ(LogLinesWith("read: no progress within 300 ms"), 1u);
  ExpectHealthyExchange();
}

TEST_F(ConnectionTest, PeerThatNeverSpeaksTlsHitsTheHandshakeDeadline) {
  ConnectionOptions options;
  options.handshake_timeout = std::chrono::milliseconds(300);
  StartServer(options);
  asio::io_context io;
  tcp::socket plain(io);
  plain.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port()));
  ASSERT_TRUE(server_.WaitForCloses(1));
  EXPECT_THAT(server_.closed()[0], StatusIs(StatusCode::kDeadlineExceeded));
  EXPECT_THAT(std::string(server_.closed()[0].message()), HasSubstr("tls handshake"));
}

TEST_F(ConnectionTest, ServerThatNeverAnswersHitsTheClientHandshakeDeadline) {
  // A bare TCP listener: the kernel completes the TCP handshake, nobody speaks TLS.
  tcp::acceptor mute(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  Recorder client;
  ConnectionOptions options;
  options.handshake_timeout = std::chrono::milliseconds(300);
  auto connection =
      Connection::Connect(io_, ClientTls(Files("worker-0")), "127.0.0.1",
                          mute.local_endpoint().port(), "supervisor-0", client.Handlers(), options);
  connection->Start();
  ASSERT_TRUE(client.WaitForCloses(1));
  EXPECT_THAT(client.closed()[0], StatusIs(StatusCode::kDeadlineExceeded));
}

TEST_F(ConnectionTest, ConnectToAClosedPortIsUnavailable) {
  uint16_t closed_port = 0;
  {
    tcp::acceptor probe(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    closed_port = probe.local_endpoint().port();
  }
  Recorder client;
  auto connection = Connection::Connect(io_, ClientTls(Files("worker-0")), "127.0.0.1", closed_port,
                                        "supervisor-0", client.Handlers(), {});
  connection->Start();
  ASSERT_TRUE(client.WaitForCloses(1));
  EXPECT_THAT(client.closed()[0], StatusIs(StatusCode::kUnavailable));
  EXPECT_TRUE(client.opened().empty());
}

TEST_F(ConnectionTest, ListenOnAnAddressInUseIsUnavailable) {
  StartServer();
  EXPECT_THAT(
      Listener::Create(io_, *server_tls_, listener_->local_endpoint(), server_.Handlers(), {}),
      StatusIs(StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fp::wire
