#ifndef ALLROUND_COMM_CHECKED_COMMUNICATOR_H_
#define ALLROUND_COMM_CHECKED_COMMUNICATOR_H_

// The ALLROUND_COMM_DEBUG=1 check, for any backend: before each collective every rank shares
// (op, dtype, element count) through the communicator itself, and when any rank disagrees the
// collective fails on every rank with one message naming what each rank called, instead of
// hanging until the timeout or reducing buffers of different sizes (after PyTorch's
// TORCH_DISTRIBUTED_DEBUG=DETAIL). The exchange is a small allgather that every rank makes with
// the same size, so it always matches even when the calls do not.
//
// Cost: one extra allgather per collective, waited for on the issuing thread, so collectives no
// longer overlap compute. It is a debugging aid. The MPI backend makes the same check on its own
// communication thread (comm/mpi), without blocking the issuing thread; the registry wraps the
// other multi-rank backends (NCCL) in this one.

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"

namespace allround::comm {

// Whether ALLROUND_COMM_DEBUG=1 is set.
bool CommDebugEnabled();

// The collectives, numbered as the check exchanges them.
enum class CollectiveOp : int64_t { kAllReduce = 1, kBroadcast = 2, kAllGather = 3, kBarrier = 4 };

// What one rank is about to call: the op, its dtype (-1 for none) and element count.
std::vector<int64_t> CollectiveSignature(CollectiveOp op, const at::Tensor& t);

// `all` holds every rank's signature, rank after rank. OK when they agree; otherwise
// FailedPrecondition "ranks called mismatched collectives: rank 0: allreduce of 10 elements; ...".
absl::Status CompareSignatures(const std::vector<int64_t>& all, int size);

// Wraps `inner` (not owned; it must outlive the result) in the check. set_timeout on the result
// sets the inner communicator's too.
std::unique_ptr<Communicator> MakeCheckedCommunicator(Communicator* inner);
// Wraps `inner` and owns it.
std::unique_ptr<Communicator> MakeCheckedCommunicator(std::unique_ptr<Communicator> inner);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_CHECKED_COMMUNICATOR_H_
