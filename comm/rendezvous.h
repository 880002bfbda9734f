#ifndef ALLROUND_COMM_RENDEZVOUS_H_
#define ALLROUND_COMM_RENDEZVOUS_H_

// Rendezvous without MPI, in the style of torchrun: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
// name this process's place in the group and where rank 0 listens. Rank 0 accepts one TCP
// connection from every other rank and hands each the same blob (e.g. NCCL's unique id); every
// step has a deadline, and a timeout names the ranks that never arrived.
//
// Blocking; thread-safe (no shared state), so tests can run ranks as threads.

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace allround::comm {

struct RendezvousConfig {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
};

// An integer environment variable: NotFound when it is unset, InvalidArgument (naming it and its
// value) when it is not a number.
absl::StatusOr<int> IntFromEnvironment(const char* name);

// From RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; a missing or malformed variable is an error
// naming it.
absl::StatusOr<RendezvousConfig> RendezvousFromEnvironment();

// Rank 0 passes the blob and returns it; the other ranks return what rank 0 sent.
absl::StatusOr<std::string> BroadcastBlob(const RendezvousConfig& config, const std::string& blob);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_RENDEZVOUS_H_
