#include "observe/http_server.h"


#include <arpa/inet.h>
#include <netinet/in.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/text_file.h"

#ifdef ALLROUND_HAVE_HTTPLIB
#include <httplib.h>

#include <thread>
#endif

namespace allround::observe {

bool IsLoopbackAddress(const std::string& host_port) {
  std::string host = host_port.substr(0, host_port.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") return true;
  // Numeric addresses only: a name such as 127.0.0.1.example.com may resolve anywhere.
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

HttpResponse PrometheusText(std::string body) {
  return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", std::move(body)};
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(const std::string& listen,
                                                               std::map<std::string, HttpHandler> handlers,
                                                               const std::string& token) {
  if (!IsLoopbackAddress(listen) && token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen ", listen, " is beyond loopback: give --status-token too"));
  }
  const bool status_page = handlers.count("/") > 0;
  auto server = HttpServer::Start(listen, std::move(handlers), token);
  if (!server.ok()) {
    return absl::Status(server.status().code(), absl::StrCat("--metrics-listen: ", server.status().message()));
  }
  const std::string host = listen.substr(0, listen.rfind(':'));
  const int port = (*server)->port();
  log::Info("metrics on http://{}:{}/metrics{}", host, port,
            status_page ? absl::StrCat(", status page on http://", host, ":", port, "/") : "");
  return server;
}

HttpServer::HttpServer(std::map<std::string, HttpHandler> handlers, std::string token)
    : handlers_(std::move(handlers)), token_(std::move(token)) {}

HttpResponse HttpServer::Answer(const std::string& method, const std::string& path, const std::string& query,
                                const std::string& authorization) const {
  if (method != "GET" && method != "HEAD") return {405, "text/plain; charset=utf-8", "read-only: GET only\n"};
  if (!token_.empty()) {
    bool ok = absl::StartsWith(authorization, "Bearer ") && SameToken(token_, authorization.substr(7));
    for (absl::string_view part : absl::StrSplit(query, '&')) {
      if (absl::StartsWith(part, "token=") && SameToken(token_, std::string(part.substr(6)))) ok = true;
    }
    if (!ok) return {401, "text/plain; charset=utf-8", "give the status token (Authorization: Bearer, or ?token=)\n"};
  }
  auto it = handlers_.find(path);
  if (it == handlers_.end()) return {404, "text/plain; charset=utf-8", "not found\n"};
  return it->second();
}

#ifdef ALLROUND_HAVE_HTTPLIB

bool HttpServerAvailable() { return true; }

struct HttpServer::Impl {
  httplib::Server server;
  std::thread thread;
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& listen,
                                                              std::map<std::string, HttpHandler> handlers,
                                                              std::string token) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("'", listen, "' is not HOST:PORT"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::unique_ptr<HttpServer> server(new HttpServer(std::move(handlers), std::move(token)));
  server->impl_ = std::make_unique<Impl>();
  httplib::Server& http = server->impl_->server;
  // Two threads answer; a client that stops sending is dropped after 10 s; one request per
  // connection.
  http.new_task_queue = [] { return new httplib::ThreadPool(2); };
  http.set_read_timeout(std::chrono::seconds(10));
  http.set_write_timeout(std::chrono::seconds(10));
  http.set_keep_alive_max_count(1);
  // GET only: a request body is never read, so none may be large (an unread multi-GB body would
  // otherwise be buffered whole before any check).
  http.set_payload_max_length(1024);
  // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, with which a second process could
  // silently bind the same port and take half the scrapes.
  http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  const HttpServer* self = server.get();
  const auto answer = [self](const httplib::Request& req, httplib::Response& res) {
    const std::string query = req.has_param("token") ? "token=" + req.get_param_value("token") : "";
    const HttpResponse r = self->Answer(req.method == "HEAD" ? "GET" : req.method, req.path, query,
                                        req.get_header_value("Authorization"));
    res.status = r.status;
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'");
    res.set_content(r.body, r.content_type.c_str());
  };
  http.Get(".*", answer);
  http.Post(".*", answer);
  http.Put(".*", answer);
  http.Patch(".*", answer);
  http.Delete(".*", answer);
  http.Options(".*", answer);
  const int bound = port == 0 ? http.bind_to_any_port(host) : (http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", listen, " (in use, or not an address here?)"));
  }
  server->port_ = bound;
  server->impl_->thread = std::thread([&http] { http.listen_after_bind(); });
  // stop() only ends a loop that is running: wait for it, so that a server destroyed right away
  // (the run failed just after) does not leave its thread listening forever.
  for (int i = 0; i < 5000 && !http.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!http.is_running()) return absl::InternalError(absl::StrCat("the HTTP server on ", listen, " did not start"));
  return server;
}

HttpServer::~HttpServer() {
  if (!impl_) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

#else  // no cpp-httplib

bool HttpServerAvailable() { return false; }

struct HttpServer::Impl {};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string&, std::map<std::string, HttpHandler>,
                                                              std::string) {
  return absl::UnimplementedError(
      "this build has no HTTP server for metrics and the status page (install libcpp-httplib-dev and "
      "prometheus-cpp-dev, as deploy/setup.sh does, then rebuild)");
}

HttpServer::~HttpServer() = default;

#endif

}  // namespace allround::observe
