#ifndef ALLROUND_RUNTIME_CLUSTER_RUN_H_
#define ALLROUND_RUNTIME_CLUSTER_RUN_H_

// A training run of one worker group (one process, or the ranks of an mpirun): the round engine
// drives the Trainer over the job's epochs; rank 0 writes the run directory (job.yaml, metrics.jsonl
// with a record per round, summary.json, a generative mode's sample grids) and the checkpoints the
// job's policy asks for; every rank resumes from the same checkpoint. SIGTERM or SIGINT on any rank
// stops every rank after the same step, with a checkpoint.
//
// Blocking. Every rank calls RunCluster with the same job; `comm` must outlive the call.

#include <string>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "common/job.h"
#include "runtime/checkpointer.h"

namespace allround::runtime {

struct ClusterRunOptions {
  std::string resume = "none";  // none | auto | a checkpoint id (ReadCheckpointForResume)
  std::string summary_path;     // also write summary.json's object here ("" : only in the run dir)
  StoreOpener stores = DiskStores();
};

// Trains the job to its end (or its step budget). A failed checkpoint save ends the run with the
// store's error; the checkpoints saved before it stay, and --resume auto continues from the last.
absl::Status RunCluster(const Job& job, const ClusterRunOptions& options, comm::Communicator& comm);

}  // namespace allround::runtime

#endif  // ALLROUND_RUNTIME_CLUSTER_RUN_H_
