#ifndef ALLROUND_COMM_THREAD_COMMUNICATOR_H_
#define ALLROUND_COMM_THREAD_COMMUNICATOR_H_

// A worker group whose ranks are threads of one process (as Gloo's tests run theirs): the
// collectives of the Communicator interface, computed in memory. Tests run the Reducer, the
// checked communicator and whole rounds over it in one process, fast and without mpirun; the MPI
// backend is tested with the same cases under mpirun.
//
// Every rank's thread issues its collectives in the same order (as with any backend); the n-th
// collective of every rank meets the others' n-th. It completes when the last rank has issued it:
// an allreduce sums in rank order (the same bits on every rank and every run). Ranks that call
// different collectives at the same position get FailedPrecondition naming what each called; a
// rank that waits past its timeout gets DeadlineExceeded naming the ranks that never came.
//
// Thread-safe across the group's ranks; each rank's communicator is used by its own thread.

#include <memory>
#include <vector>

#include "comm/communicator.h"

namespace allround::comm {

// `size` communicators, rank r at index r, sharing one group. They may be used from different
// threads and destroyed in any order.
std::vector<std::unique_ptr<Communicator>> MakeThreadGroup(int size);

}  // namespace allround::comm

#endif  // ALLROUND_COMM_THREAD_COMMUNICATOR_H_
