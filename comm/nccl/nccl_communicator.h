#ifndef ALLROUND_COMM_NCCL_NCCL_COMMUNICATOR_H_
#define ALLROUND_COMM_NCCL_NCCL_COMMUNICATOR_H_

// The NCCL backend: collectives on CUDA tensors, one rank per GPU. Each collective runs on the
// communicator's own CUDA stream after the work already queued on the default stream (an event
// orders them), so it overlaps later compute; Work::Wait polls its completion event until the
// timeout, then aborts the NCCL communicator (ncclCommAbort) and fails naming the op, so a rank
// that died cannot hang the others. Built only against the CUDA runtime and NCCL, so it compiles
// and links wherever the toolkit is, even with a CPU-only LibTorch (then no CUDA tensor exists and
// MakeNcclCommunicator says so).

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace allround::comm {

// Number of CUDA devices this process sees (0 without a driver or GPU).
int CudaDeviceCount();

// A new NCCL unique id (rank 0 makes it and hands it to the others), as bytes.
absl::StatusOr<std::string> NcclUniqueId();

// Joins the NCCL group `unique_id` names as `rank` of `world_size`, on CUDA device `device`.
// Initialization itself is bounded by `timeout`.
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(int rank, int world_size, int device,
                                                                   const std::string& unique_id,
                                                                   std::chrono::milliseconds timeout);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_NCCL_NCCL_COMMUNICATOR_H_
