#ifndef ALLROUND_COMM_MPI_MPI_COMMUNICATOR_H_
#define ALLROUND_COMM_MPI_MPI_COMMUNICATOR_H_

// The Open MPI backend: collectives on CPU tensors. One communication thread owns every MPI call
// after initialization and runs the queued collectives in issue order with blocking MPI
// (MPI_Allreduce, ...), so the issuing thread (e.g. autograd's, during backward) never blocks and
// compute overlaps communication. Blocking calls on that thread, not MPI_Iallreduce polled with
// MPI_Test: with Open MPI 4.1 on shared memory the non-blocking form took 1.2-2.3x as long from
// 4 KiB to 1 MiB. The hand-off to the thread costs about 10 us per call, which shows only for small
// messages: a 4 KiB allreduce takes about 3.5x raw MPI's time, a 1 MiB one about 1.07x
// (bench/allreduce).
//
// Failure: Work::Wait returns DeadlineExceeded after its timeout, naming the op, its sequence
// number, and the ranks on this host whose processes are gone, stopped or defunct. With ALLROUND_COMM_DEBUG=1 every
// collective first compares (op, dtype, element count) across ranks and fails with an error naming
// the ranks that disagree, instead of hanging or reducing mismatched buffers.

#include <memory>

#include "absl/status/statusor.h"
#include "comm/communicator.h"

namespace allround::comm {

// MPI_Init_thread on construction (asks for MPI_THREAD_MULTIPLE, so a program may also call MPI
// from its own threads, and needs at least MPI_THREAD_SERIALIZED: the communicator calls MPI from
// one thread at a time), MPI_Finalize on destruction. One per process; create it in main before any communicator.
class MpiEnvironment {
 public:
  static absl::StatusOr<std::unique_ptr<MpiEnvironment>> Init(int* argc, char*** argv);
  ~MpiEnvironment();
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;

  // True when this process was started by mpirun (Open MPI's environment is present).
  static bool LaunchedByMpirun();

 private:
  MpiEnvironment() = default;
};

// A communicator over all ranks of MPI_COMM_WORLD (duplicated, so it never interferes with other
// users of MPI). `env` must outlive it.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(MpiEnvironment* env);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_MPI_MPI_COMMUNICATOR_H_
