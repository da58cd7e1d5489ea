// End-to-end tests of the worker listener's defences, with real processes on loopback: a worker
// whose certificate comes from another CA never registers (while the same name with a
// certificate of the cluster's CA does), and a raw TLS client with a valid certificate that sends
// garbage frames is disconnected while the workers keep verifying sessions.
#include <filesystem>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <signal.h>

#include "common/base/bytes.h"
#include "common/wire/frame.h"
#include "common/wire/tls.h"
#include "common/wire/wire_samples.h"
#include "tests/e2e/e2e_env.h"
#include "tests/testutil/status_matchers.h"

namespace fp::e2e {
namespace {

namespace asio = boost::asio;
namespace fs = std::filesystem;
namespace json = boost::json;
using asio::ip::tcp;
using std::chrono::milliseconds;

// How long the listener may take to drop a connection that sent garbage.
constexpr milliseconds kCloseTimeout{5'000};
// How long a quiet, valid connection must stay open (the control case).
constexpr milliseconds kQuietTime{500};

enum class Outcome { kClosedByServer, kStillOpen, kHandshakeFailed };

// A raw mutual-TLS client of the worker port: handshakes with `files`, writes `bytes` (if any),
// then reads until the server closes the connection or `wait` passes.
Outcome Probe(uint16_t port, const wire::TlsFiles& files, const Bytes& bytes, milliseconds wait) {
  auto context = wire::MakeClientTlsContext(files);
  FP_CHECK_OK(context);
  asio::io_context io;
  asio::ssl::stream<tcp::socket> stream(io, **context);
  SSL_set_tlsext_host_name(stream.native_handle(), "supervisor-0");
  bool handshaken = false;
  bool closed = false;
  std::array<uint8_t, 4096> buffer;
  std::function<void()> read_more = [&] {
    stream.async_read_some(asio::buffer(buffer), [&](boost::system::error_code error, size_t) {
      if (error) {
        closed = true;
        return;
      }
      read_more();
    });
  };
  stream.next_layer().async_connect(
      tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
      [&](boost::system::error_code error) {
        if (error) return;
        stream.async_handshake(asio::ssl::stream_base::client, [&](boost::system::error_code e) {
          if (e) return;
          handshaken = true;
          if (bytes.empty()) return read_more();
          asio::async_write(stream, asio::buffer(bytes),
                            [&](boost::system::error_code, size_t) { read_more(); });
        });
      });
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (!closed && std::chrono::steady_clock::now() < deadline) {
    io.run_for(milliseconds(20));
    if (io.stopped()) {  // nothing pending: the handshake or the connection failed
      io.restart();
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  if (!handshaken) return Outcome::kHandshakeFailed;
  return closed ? Outcome::kClosedByServer : Outcome::kStillOpen;
}

Bytes Header(uint8_t version, uint32_t length) {
  Bytes bytes(wire::kFrameMagic.begin(), wire::kFrameMagic.end());
  bytes.push_back(version);
  AppendU32(bytes, length);
  return bytes;
}

// A valid frame of the first sample envelope whose body satisfies `pick`.
Bytes SampleFrame(const std::function<bool(const wire::pb::Envelope&)>& pick) {
  for (const wire::pb::Envelope& envelope : wire::SampleEnvelopes()) {
    if (!pick(envelope)) continue;
    auto frame = wire::EncodeFrame(envelope);
    FP_CHECK_OK(frame);
    return *frame;
  }
  FP_CHECK_MSG(false, "no such sample envelope");
  return {};
}

class ClusterSecurityTest : public ClusterFixture {
 protected:
  void ExpectSessionVerifies(std::string_view prompt) {
    client::ApiClient api = Api();
    ASSERT_OK_AND_ASSIGN(std::string id, api.Submit(TinyRequest(prompt, 8)));
    ASSERT_OK_AND_ASSIGN(client::SessionView view, api.WaitDone(id, kSessionTimeout, {}));
    EXPECT_EQ(view.phase, "verified") << view.failure;
    EXPECT_EQ(view.divergences, 0u);
  }

  std::set<std::string> RegisteredWorkers() {
    client::ApiClient api = Api();
    auto workers = api.Workers();
    EXPECT_OK(workers);
    std::set<std::string> names;
    if (workers.ok()) {
      for (const client::WorkerView& worker : *workers) names.insert(worker.worker_id);
    }
    return names;
  }

  StatusOr<std::unique_ptr<client::ChildProcess>> StartExtraWorker(const std::string& name,
                                                                   const std::string& certs) {
    client::ProcessOptions process;
    process.argv = cluster_->WorkerCommand(name, certs);
    process.stdout_path = dir_.Join(name + "-" + fs::path(certs).filename().string() + ".out");
    process.stderr_path = dir_.Join(name + "-" + fs::path(certs).filename().string() + ".log");
    return client::ChildProcess::Spawn(name, process);
  }
};

TEST_F(ClusterSecurityTest, WorkerWithAnotherCasCertificateIsRefused) {
  client::LocalClusterOptions options = Options();
  options.extra_cert_names = {"worker-x"};
  ASSERT_OK(StartCluster(options));
  // The impostor trusts the cluster's CA (so it would accept the supervisor) but its own
  // certificate comes from another CA.
  const fs::path foreign = dir_.path() / "foreign";
  const fs::path impostor = dir_.path() / "impostor";
  ASSERT_OK(RunToCompletion(
                {FieldprintBinary(), "certs", "init", foreign.string(), "--names", "worker-x"},
                dir_.path().string(), kEventTimeout)
                .status());
  fs::create_directories(impostor);
  fs::copy_file(fs::path(cluster_->certs_dir()) / "ca.pem", impostor / "ca.pem");
  fs::copy_file(foreign / "worker-x.pem", impostor / "worker-x.pem");
  fs::copy_file(foreign / "worker-x.key", impostor / "worker-x.key");
  ASSERT_OK_AND_ASSIGN(auto worker, StartExtraWorker("worker-x", impostor.string()));
  // Several connection attempts fail; none registers.
  const std::string log = worker->options().stderr_path;
  ASSERT_OK(WaitForLogEvent(
                log,
                [&](const json::object&) {
                  size_t failures = 0;
                  for (const json::object& event : ReadJsonLog(log)) {
                    failures += IsEvent(event, "connection closed") ? 1 : 0;
                  }
                  return failures >= 3;
                },
                kEventTimeout)
                .status())
      << worker->StderrTail(4000);
  // The supervisor refused the handshake for the certificate, not for anything later.
  EXPECT_OK(WaitForLogEvent(
                cluster_->log_path(client::kLocalSupervisorName),
                [](const json::object& e) {
                  const json::value* reason = e.if_contains("reason");
                  return IsEvent(e, "connection closed") && reason != nullptr &&
                         reason->is_string() &&
                         std::string_view(reason->get_string()).find("certificate verify failed") !=
                             std::string_view::npos;
                },
                kEventTimeout)
                .status());
  EXPECT_EQ(RegisteredWorkers(), (std::set<std::string>{"worker-0", "worker-1", "worker-2"}));
  client::ApiClient api = Api();
  ASSERT_OK_AND_ASSIGN(std::string metrics, api.GetText("/metrics"));
  EXPECT_EQ(*MetricValue(metrics, "fieldprint_supervisor_connected_workers"), 3.0);
  ExpectSessionVerifies("still fine");
  worker->Stop(milliseconds(5000));

  // Control: the same name with a certificate of the cluster's CA is accepted.
  ASSERT_OK_AND_ASSIGN(auto genuine, StartExtraWorker("worker-x", cluster_->certs_dir()));
  const auto deadline = std::chrono::steady_clock::now() + kEventTimeout;
  while (RegisteredWorkers().count("worker-x") == 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(RegisteredWorkers().count("worker-x"), 1u);
  genuine->Stop(milliseconds(5000));
}

TEST_F(ClusterSecurityTest, GarbageFramesAreDisconnectedWhileOthersContinue) {
  client::LocalClusterOptions options = Options();
  options.extra_cert_names = {"intruder"};
  ASSERT_OK(StartCluster(options));
  const wire::TlsFiles files = wire::TlsFilesForNode(cluster_->certs_dir(), "intruder");
  const uint16_t port = cluster_->worker_port();

  // Control: a valid, quiet connection is not dropped.
  EXPECT_EQ(Probe(port, files, {}, kQuietTime), Outcome::kStillOpen);

  Bytes bad_magic = {'X', 'Y', 'Z', wire::kProtocolVersion, 0, 0, 0, 1, 0};
  Bytes bad_version = Header(wire::kProtocolVersion + 1, 1);
  bad_version.push_back(0);
  Bytes oversized = Header(wire::kProtocolVersion, 0xffffffffu);
  Bytes not_protobuf = Header(wire::kProtocolVersion, 5);
  for (int i = 0; i < 5; ++i) not_protobuf.push_back(0xff);
  const Bytes assign = SampleFrame([](const wire::pb::Envelope& e) { return e.has_assign(); });
  const Bytes batch = SampleFrame([](const wire::pb::Envelope& e) { return e.has_leaf_batch(); });
  // Each kind of garbage, and the reason the supervisor must give for closing the connection.
  struct Garbage {
    std::string what;
    Bytes bytes;
    std::string reason;
  };
  const std::vector<Garbage> garbage = {
      {"bad magic", bad_magic, "not the magic"},
      {"bad version", bad_version, "protocol version 2"},
      {"oversized length", oversized, "exceeds the limit"},
      {"payload that is not an envelope", not_protobuf, "not a valid Envelope"},
      {"an Assign, which only a supervisor sends", assign, "may not send assign"},
      {"a LeafBatch before any Register", batch, "LeafBatch before a registration"},
  };
  for (const Garbage& item : garbage) {
    EXPECT_EQ(Probe(port, files, item.bytes, kCloseTimeout), Outcome::kClosedByServer) << item.what;
  }
  // The supervisor closed each after a handshake that authenticated the intruder, saying why.
  const auto logged_reasons = [&] {
    std::vector<std::string> reasons;
    for (const json::object& event :
         ReadJsonLog(cluster_->log_path(client::kLocalSupervisorName))) {
      const json::value* peer = event.if_contains("peer");
      const json::value* reason = event.if_contains("reason");
      if (IsEvent(event, "connection closed") && peer != nullptr && peer->is_string() &&
          peer->get_string() == "intruder" && reason != nullptr && reason->is_string() &&
          !reason->get_string().starts_with("UNAVAILABLE")) {  // the control's own close
        reasons.emplace_back(reason->get_string());
      }
    }
    return reasons;
  };
  const auto deadline = std::chrono::steady_clock::now() + kEventTimeout;
  std::vector<std::string> reasons = logged_reasons();
  while (reasons.size() < garbage.size() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(20));
    reasons = logged_reasons();
  }
  ASSERT_EQ(reasons.size(), garbage.size());
  for (size_t i = 0; i < garbage.size(); ++i) {
    EXPECT_NE(reasons[i].find(garbage[i].reason), std::string::npos)
        << garbage[i].what << ": " << reasons[i];
  }
  EXPECT_EQ(RegisteredWorkers(), (std::set<std::string>{"worker-0", "worker-1", "worker-2"}));
  ExpectSessionVerifies("after the garbage");
  ASSERT_OK_AND_ASSIGN(std::string metrics, Api().GetText("/metrics"));
  EXPECT_EQ(*MetricValue(metrics, "fieldprint_supervisor_connected_workers"), 3.0);
}

}  // namespace
}  // namespace fp::e2e
