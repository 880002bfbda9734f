#ifndef ALLROUND_RUNTIME_SITE_RUNNER_H_
#define ALLROUND_RUNTIME_SITE_RUNNER_H_

// The sites of a federated job. A site joins the coordinator, long-polls for tasks, fetches the
// global model, evaluates it on its own test split (federated evaluation), trains it for the
// round's local epochs on its own training data, and submits the new weights with its example
// count and evaluation sums, until told to stop. A heartbeat thread keeps idle sites alive. An
// unreachable coordinator is retried with capped exponential backoff; a coordinator that no
// longer knows the site (it restarted without its state) is joined again.
//
// A site's data is partition I of the job's partitioning (`site_indices`, nothing copied from
// disk), or the IDX files of its own directory (`data_dir`). One process may host many sites
// (`site_indices` "0-99"): each has its own channel, name, token and data, and they train in turn
// on `site_threads` training slots. Under mpirun (`group` of several ranks) the group is one site:
// rank 0 talks to the coordinator and the group trains each round with the Reducer. Blocking.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job.h"

namespace allround::comm {
class Communicator;
}

namespace allround::runtime {

struct SiteOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::string site_name;     // one site: its name; many: the prefix of "<name>-<index>"
  std::string token;         // the site's token (every hosted site's, if no tokens file)
  std::string tokens_file;   // "name token" lines: each hosted site's own token
  std::string token_file;    // the one site's token, alone in a private file (not in ps, unlike token)
  std::string site_indices = "0";  // "I", "A-B" or "A,B,C": the partitions this process hosts
  std::string data_dir;      // the site's own IDX files instead of a partition of the job's data
  std::string tls_ca;        // PEM: the CA that signed the coordinator's certificate
  bool insecure = false;     // plain text (must be asked for)
  int site_threads = 1;      // sites of this process training at the same time
  std::string dump_updates;  // a directory: each submitted update also goes there (safetensors)
  double give_up_s = 120;    // stop retrying an unreachable coordinator after this long
};

// "3" -> {3}; "0-3" -> {0,1,2,3}; "1,4,7" -> {1,4,7}. Refuses empty, negative, reversed or
// repeated indices, naming the flag.
absl::StatusOr<std::vector<int64_t>> ParseSiteIndices(const std::string& spec);

// `group`: the communicator of this site's worker group (nullptr or size 1: a single process).
absl::Status RunSites(const Job& job, const SiteOptions& options, comm::Communicator* group);

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_SITE_RUNNER_H_
