// Connection: one mutually authenticated TLS 1.3 stream of wire frames between a worker and a
// supervisor; Listener: the accepting side. Spec: docs/formats.md, section "Wire frames".
//
// Design. Asio completion handlers in DoX/OnX pairs (Boost.Beast's session style), not
// coroutines: every step is a small member function whose name goes into its error message. A
// Connection owns its ssl::stream, whose socket lives on its own strand, so every handler of one
// connection runs serially and members need no lock; pending operations hold a shared_ptr to the
// connection, which stays alive until its last handler has run. The protocol logic stays out of
// this file: callers pass callbacks (ConnectionHandlers), so the supervisor's listener and the
// worker's client share one implementation.
//
// Lifecycle: Start() -> [client: resolve + TCP connect] -> TLS handshake -> on_open -> frames in
// both directions -> on_close, exactly once for every started connection, with
//   OK                 a clean close by either side (TLS close_notify, no partial frame);
//   DeadlineExceeded   connect, handshake, a read, a write or the TLS shutdown took too long
//                      (the read deadline is the longest silence allowed from the peer);
//   Unauthenticated    the handshake failed or the peer's certificate gave no identity;
//   DataLoss / InvalidArgument  the peer sent bytes that are not valid frames (FrameDecoder's
//                      codes); the peer is sent an Error envelope with the reason first;
//   Unavailable        the network failed (resolve, connect, reset, truncated TLS stream);
//   the Status given to Close(), for a close the owner asked for.
// Every close is logged once, with the peer and the reason. Nothing the peer sends can crash the
// process: bad input only ever closes its connection.
//
// Thread-safety: Send(), Close() and the accessors are safe from any thread. Handlers run on the
// connection's strand, one at a time, and must not block or throw.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/base/bytes.h"
#include "common/base/status.h"
#include "common/wire/envelope.h"
#include "common/wire/frame.h"

namespace fp::wire {

// Frames waiting to be written on one connection (per-peer send queue bound).
inline constexpr size_t kMaxSendQueueFrames = 1024;
// Plaintext bytes taken per read; a TLS record carries at most 16 KiB.
inline constexpr size_t kReadChunkBytes = 16 * 1024;
// Connections one Listener keeps open at once; more are accepted and closed at once.
inline constexpr size_t kMaxConnections = 4096;

struct ConnectionOptions {
  std::chrono::milliseconds connect_timeout{10'000};    // client: resolve + TCP connect
  std::chrono::milliseconds handshake_timeout{10'000};  // TLS handshake
  // Longest silence allowed from the peer while the connection is open; heartbeats keep an idle
  // stream within it.
  std::chrono::milliseconds read_timeout{30'000};
  std::chrono::milliseconds write_timeout{10'000};     // one frame's write, and the TLS shutdown
  size_t max_send_queue_frames = kMaxSendQueueFrames;  // 1..kMaxSendQueueFrames
};

class Connection;

// Callbacks of a connection; they run on its strand. on_envelope and on_close are required.
struct ConnectionHandlers {
  // The handshake completed and peer_identity() is set. On the client this means our side of
  // the handshake finished: TLS 1.3 servers check the client's certificate afterwards, so a
  // rejected client sees on_open and then on_close. Wait for the server's first frame to know
  // the server accepted you.
  std::function<void(const std::shared_ptr<Connection>&)> on_open;
  // One decoded, validated envelope, in stream order.
  std::function<void(const std::shared_ptr<Connection>&, pb::Envelope)> on_envelope;
  // The connection is closed (see the lifecycle above); no handler runs after this one.
  std::function<void(const std::shared_ptr<Connection>&, const Status&)> on_close;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using Stream = boost::asio::ssl::stream<boost::asio::ip::tcp::socket>;

  // A client connection to host:port that requires the server's certificate to carry the name
  // `server_name` (its CN or a DNS SAN, e.g. "supervisor-0"). Nothing happens until Start(). The
  // caller shares ownership; `io` and `tls` are borrowed and must outlive the connection.
  // FP_CHECKs that the handlers and options are valid.
  static std::shared_ptr<Connection> Connect(boost::asio::io_context& io,
                                             boost::asio::ssl::context& tls, std::string host,
                                             uint16_t port, std::string server_name,
                                             ConnectionHandlers handlers,
                                             ConnectionOptions options);

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Begins connecting (client) or the handshake (server). Call at most once; after Close() it
  // does nothing.
  void Start();

  // Queues `envelope` for sending; frames leave in Send order. OK once queued (not yet
  // written). Errors: InvalidArgument if the envelope fails AppendFrame; FailedPrecondition once
  // the connection is closing or closed; ResourceExhausted when max_send_queue_frames frames are
  // already waiting (the peer is not reading: back off, or Close). Frames sent before on_open
  // are written right after the handshake.
  Status Send(const pb::Envelope& envelope);

  // Closes the connection: no more Sends; frames already queued are written, then the TLS
  // close_notify, then the socket closes and on_close runs with `reason`. A non-OK reason is
  // first sent to the peer as an Error envelope. Closing before on_open aborts the connection
  // (on_close gets `reason`, or Cancelled for an OK reason). Idempotent.
  void Close(Status reason = OkStatus());

  // The peer's certificate name (PeerIdentity in tls.h); empty until on_open runs, then fixed.
  std::string peer_identity() const;
  // "host:port" of the peer, for logs.
  std::string remote_endpoint() const;
  // Frames queued by Send and not yet written.
  size_t queued_frames() const { return queued_frames_.load(); }

 private:
  friend class Listener;
  enum class State { kIdle, kConnecting, kHandshaking, kOpen, kClosing, kClosed };

  Connection(Stream stream, bool is_client, ConnectionHandlers handlers, ConnectionOptions options);
  // The server side of an accepted socket; used by Listener. The socket must live on a strand.
  static std::shared_ptr<Connection> Accept(boost::asio::ip::tcp::socket socket,
                                            boost::asio::ssl::context& tls,
                                            ConnectionHandlers handlers, ConnectionOptions options);

  void DoResolve();
  void OnResolve(const boost::system::error_code& error,
                 const boost::asio::ip::tcp::resolver::results_type& results);
  void OnConnect(const boost::system::error_code& error,
                 const boost::asio::ip::tcp::endpoint& endpoint);
  void DoHandshake();
  void OnHandshake(const boost::system::error_code& error);
  void DoRead();
  void OnRead(const boost::system::error_code& error, size_t bytes);
  void OnReadError(const boost::system::error_code& error);
  void Enqueue(Bytes frame, bool counted);
  void MaybeWrite();
  void OnWrite(const boost::system::error_code& error);
  void BeginClose(Status reason, bool peer_closed);
  void MaybeFinishClosing();
  void OnShutdown(const boost::system::error_code& error);
  void Abort(Status reason);

  // Starts `timer` for one operation; if it fires first, the connection aborts with
  // DeadlineExceeded naming `step`.
  void ArmDeadline(boost::asio::steady_timer& timer, std::chrono::milliseconds timeout,
                   const char* step);
  // Marks the operation done, so that an expiry already queued is ignored.
  static void Disarm(boost::asio::steady_timer& timer);

  // Everything below is touched only on the strand, except where marked.
  Stream stream_;
  const bool is_client_;
  ConnectionHandlers handlers_;  // cleared after on_close, breaking cycles through captures
  const ConnectionOptions options_;
  boost::asio::ip::tcp::resolver resolver_;
  boost::asio::steady_timer setup_timer_;  // connect, handshake, TLS shutdown
  boost::asio::steady_timer read_timer_;
  boost::asio::steady_timer write_timer_;
  std::string host_;         // client: whom to connect to
  uint16_t port_ = 0;        // client
  std::string server_name_;  // client: the name the server's certificate must carry
  State state_ = State::kIdle;
  Status close_reason_;
  bool reading_ = false;
  bool writing_ = false;
  bool shutdown_started_ = false;
  bool peer_closed_ = false;  // the peer's close_notify arrived
  FrameDecoder decoder_;
  std::vector<uint8_t> read_buffer_;         // kReadChunkBytes
  std::deque<Bytes> send_queue_;             // front() is being written while writing_
  std::atomic<bool> accepting_sends_{true};  // any thread; false from the start of closing
  std::atomic<size_t> queued_frames_{0};     // any thread; frames counted against the bound
  // Set once on the strand (before on_open, or at construction); readable from any thread.
  mutable std::mutex names_mutex_;
  std::string peer_identity_;    // guarded by names_mutex_
  std::string remote_endpoint_;  // guarded by names_mutex_
};

// Accepts TLS connections on one endpoint and starts a Connection for each, with the same
// handlers and options.
class Listener : public std::enable_shared_from_this<Listener> {
 public:
  // Binds and listens on `endpoint` (port 0 picks a free port; see local_endpoint()). The caller
  // shares ownership; `io` and `tls` are borrowed and must outlive the listener and its
  // connections. Unavailable if the address cannot be bound or listened on. FP_CHECKs that the
  // handlers and options are valid.
  static StatusOr<std::shared_ptr<Listener>> Create(boost::asio::io_context& io,
                                                    boost::asio::ssl::context& tls,
                                                    const boost::asio::ip::tcp::endpoint& endpoint,
                                                    ConnectionHandlers handlers,
                                                    ConnectionOptions options);

  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Begins accepting. Call once.
  void Start();
  // Stops accepting; open connections are left to their owners. Safe from any thread.
  void Stop();

  boost::asio::ip::tcp::endpoint local_endpoint() const { return local_endpoint_; }
  // Connections accepted and not yet closed; safe from any thread.
  size_t open_connections() const { return open_connections_->load(); }

 private:
  Listener(boost::asio::io_context& io, boost::asio::ssl::context& tls, ConnectionHandlers handlers,
           ConnectionOptions options);
  void DoAccept();
  void OnAccept(const boost::system::error_code& error, boost::asio::ip::tcp::socket socket);

  boost::asio::io_context& io_;     // borrowed
  boost::asio::ssl::context& tls_;  // borrowed
  ConnectionHandlers handlers_;
  const ConnectionOptions options_;
  boost::asio::ip::tcp::acceptor acceptor_;  // on its own strand; handlers run there
  boost::asio::steady_timer retry_timer_;    // delays accepting after an accept error
  boost::asio::ip::tcp::endpoint local_endpoint_;
  bool stopped_ = false;  // strand only
  // Shared with each connection's on_close wrapper, which may outlive the listener.
  std::shared_ptr<std::atomic<size_t>> open_connections_;
};

}  // namespace fp::wire
