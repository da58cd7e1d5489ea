// The metrics server's request handler: a pure mapping from a parsed request to a response, so
// it is testable without sockets.
//
// Thread-safety: pure apart from reading the registry, which is thread-safe.
#pragma once

#include <boost/beast/http.hpp>

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace fp::metrics::internal {

// GET or HEAD /metrics (any query string ignored): 200 with the registry in the Prometheus text
// format; another path: 404; another method on /metrics: 405 with an Allow header. The response
// carries the request's HTTP version; keep-alive is left for the caller to set.
boost::beast::http::response<boost::beast::http::string_body> HandleMetricsRequest(
    const boost::beast::http::request<boost::beast::http::string_body>& request,
    const prometheus::Registry& registry);

}  // namespace fp::metrics::internal
