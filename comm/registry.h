#ifndef ALLROUND_COMM_REGISTRY_H_
#define ALLROUND_COMM_REGISTRY_H_

// Picks this process's Communicator at run time: "auto" takes MPI when the process was launched
// by mpirun (and the MPI backend was built), else the single-process one; "mpi", "nccl" and
// "local" ask for one by name, and an unavailable backend is an error that says how to get it. This file is
// the only place that knows which backends were compiled in.

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace allround::comm {

// Owns the communicator and whatever runtime it needs (MPI_Init ... MPI_Finalize).
class CommContext {
 public:
  virtual ~CommContext() = default;
  virtual Communicator& comm() = 0;
};

// "nccl" takes its rank from mpirun (the unique id travels over MPI) or from torchrun-style
// variables (over the TCP rendezvous), and its GPU from LOCAL_RANK / OMPI_COMM_WORLD_LOCAL_RANK.
// `timeout` bounds the rendezvous and initialization.
absl::StatusOr<std::unique_ptr<CommContext>> InitComm(const std::string& backend, int* argc, char*** argv,
                                                      std::chrono::milliseconds timeout = std::chrono::minutes(5));

// Backends compiled into this binary, e.g. "local, mpi".
std::string AvailableBackends();

}  // namespace allround::comm

#endif  // ALLROUND_COMM_REGISTRY_H_
