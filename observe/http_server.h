#ifndef ALLROUND_OBSERVE_HTTP_SERVER_H_
#define ALLROUND_OBSERVE_HTTP_SERVER_H_

// A small read-only HTTP server for what a process shows its operators (the coordinator's
// Prometheus metrics and status page), on cpp-httplib (Debian's libcpp-httplib-dev; civetweb
// could not be used: its threads' fixed 100 KiB stacks are smaller than LibTorch's thread-local
// storage, so a process linking LibTorch cannot start them). GET and HEAD only; every other method
// is refused (405). With a token, each request must carry it as
// `Authorization: Bearer TOKEN` (what Prometheus's `authorization` setting sends) or `?token=TOKEN`
// (a browser), else 401. A build without cpp-httplib has Available() false and Start fails saying so.
//
// Handlers run on the server's two threads: they must be thread-safe.

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace allround::observe {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using HttpHandler = std::function<HttpResponse()>;

bool HttpServerAvailable();

// Whether HOST:PORT's host is this machine's loopback (127.0.0.0/8, localhost, ::1): beyond it,
// the metrics and status servers want a token.
bool IsLoopbackAddress(const std::string& host_port);

// A Prometheus text-format response (the content type scrapers expect).
HttpResponse PrometheusText(std::string body);

class HttpServer;

// The server of `--metrics-listen` (the coordinator's and the worker's): refused beyond loopback
// without a token, and errors prefixed with the flag. Logs where /metrics (and the status page "/",
// when among the handlers) are served.
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(const std::string& listen,
                                                               std::map<std::string, HttpHandler> handlers,
                                                               const std::string& token);

class HttpServer {
 public:
  // Listens on `listen` (HOST:PORT; port 0 takes a free one) and serves each path of `handlers`
  // ("/metrics", "/"): exact paths only, 404 for any other.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& listen,
                                                          std::map<std::string, HttpHandler> handlers,
                                                          std::string token);
  ~HttpServer();  // stops serving; waits for requests in flight
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }

  // How a request is answered (exposed for tests): `method`,
  // `path`, the query string and the Authorization header as received.
  HttpResponse Answer(const std::string& method, const std::string& path, const std::string& query,
                      const std::string& authorization) const;

 private:
  HttpServer(std::map<std::string, HttpHandler> handlers, std::string token);
  struct Impl;
  std::map<std::string, HttpHandler> handlers_;
  std::string token_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace allround::observe

#endif  // ALLROUND_OBSERVE_HTTP_SERVER_H_
