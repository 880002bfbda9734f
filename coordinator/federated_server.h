#ifndef ALLROUND_COORDINATOR_FEDERATED_SERVER_H_
#define ALLROUND_COORDINATOR_FEDERATED_SERVER_H_

// The federated coordinator's run: the RoundManager behind the gRPC service, driven by the
// runtime's round engine (runtime/round_engine.h) as the cluster run is. Each round of the engine
// waits for the manager to close the next round (sites join, train and submit over gRPC);
// evaluation is the global model's on the job's held-out set, beside the sites' own federated
// evaluation; the observer writes metrics.jsonl, prints the round's line and checkpoints the
// coordinator's whole state (runtime/checkpointer.h, RunKind::kCoordinator). SIGTERM or SIGINT
// stops serving, evaluates the rounds closed so far and checkpoints the last one.
//
// Blocking; the gRPC server's threads call the service while the engine runs.

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "common/job.h"
#include "runtime/checkpointer.h"

namespace allround::coordinator {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // HOST:PORT; port 0 picks a free one (printed)
  std::string tokens;                      // file of "site token" lines
  bool no_auth = false;                    // no tokens, asked for explicitly
  bool insecure = false;                   // plain text, asked for explicitly
  std::string tls_cert, tls_key;           // PEM files
  std::string resume = "none";             // none | auto | a coordinator checkpoint id
  std::string dump_models;                 // a directory: every global model version as safetensors
  std::string summary_json;                // also write the summary here
  // Prometheus metrics (/metrics) and the status page (/) on HOST:PORT (coordinator/run_watch.h);
  // empty: not served. Beyond loopback only with a status token, which every request must carry.
  std::string metrics_listen;
  std::string status_token;
  double metrics_linger_s = 0;  // after the last round, keep serving them this long (a last scrape)
  runtime::StoreOpener stores = runtime::DiskStores();
  std::function<void(int port)> on_listening;  // called once the server listens (port 0's pick)
};

// Serves the job's rounds to their end, or until a stop signal (then OK, with the state saved).
absl::Status Serve(const Job& job, const ServerOptions& options);

}  // namespace allround::coordinator

#endif  // ALLROUND_COORDINATOR_FEDERATED_SERVER_H_
