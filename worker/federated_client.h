#ifndef ALLROUND_WORKER_FEDERATED_CLIENT_H_
#define ALLROUND_WORKER_FEDERATED_CLIENT_H_

// A site of a federated job: joins the coordinator, polls for tasks, fetches the global model,
// trains it for the round's local epochs on the site's own data (partition `site_index` of the
// job's partitioning), and submits the new weights with its example count, until told to stop.
// An unreachable coordinator is retried with capped exponential backoff; a coordinator that no
// longer knows the site (it restarted) is joined again. Blocking.

#include <string>

#include "absl/status/status.h"
#include "common/job.h"

namespace allround::worker {

struct SiteOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::string site_name;
  std::string token;
  int64_t site_index = 0;
  std::string dump_updates;  // a directory: each submitted update also goes there (safetensors)
  double give_up_s = 120;    // stop retrying an unreachable coordinator after this long
};

absl::Status RunSite(const Job& job, const SiteOptions& options);

}  // namespace allround::worker

#endif  // ALLROUND_WORKER_FEDERATED_CLIENT_H_
