#ifndef ALLROUND_COMM_REGISTRY_H_
#define ALLROUND_COMM_REGISTRY_H_

// Picks this process's Communicator at run time. Each backend registers its name, help and factory
// in registry.cc (common/registry.h, kind "backend"), so the job key comm.backend and --help list
// them: "auto" takes NCCL for device cuda, MPI when the process was launched by mpirun (and the MPI
// backend was built), else the single-process one; "mpi", "nccl" and "local" ask for one by name,
// and one this build lacks is an error that says how to get it. registry.cc is the only file that
// knows which backends were compiled in.

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
// `timeout` bounds the rendezvous and initialization. `device` is the job's ("cpu", "cuda").
absl::StatusOr<std::unique_ptr<CommContext>> InitComm(const std::string& backend, const std::string& device,
                                                      int* argc, char*** argv,
                                                      std::chrono::milliseconds timeout = std::chrono::minutes(5));

// The GPU that NCCL rank `rank` of `world` takes on a machine with `devices` of them: its local
// rank (as the launcher says: torchrun's LOCAL_RANK, Open MPI's OMPI_COMM_WORLD_LOCAL_RANK) modulo
// `devices`. NCCL refuses two ranks of one group on one GPU, saying only "invalid usage" and only
// once every rank has waited for the others. So where the launcher says how many ranks share
// this machine (LOCAL_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_SIZE) or which one this is, a rank of a
// machine with too few GPUs is refused here, before any exchange, saying why; with the count, every
// rank of that machine is. Without either (RANK alone, one rank per machine) it is rank % devices.
absl::StatusOr<int> GpuOfRank(int rank, int world, int devices);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_REGISTRY_H_
