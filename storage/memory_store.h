#ifndef ALLROUND_STORAGE_MEMORY_STORE_H_
#define ALLROUND_STORAGE_MEMORY_STORE_H_

// A CheckpointStore that keeps its checkpoints in memory, for tests (after LevelDB's memenv): what
// a process would find on disk is a MemoryStoreState that several store objects share, so a test
// can "restart" a run by opening the same state again. It behaves as the RocksDB store does where
// callers can see it (ids "<run>/<10-digit sequence>", a checkpoint visible only once whole, the
// latest never pruned or deleted, read-only handles refuse writes, CRC32C checked on Load), and
// can fail on purpose: FailSave(n) makes the n-th Save from now fail, leaving the store as it was.
//
// Thread-safe: the shared state has its own lock.

#include <memory>
#include <string>

#include "storage/checkpoint_store.h"

namespace allround::storage {

class MemoryStoreState;

// One "disk": the checkpoints, and the faults planned for it.
std::shared_ptr<MemoryStoreState> NewMemoryStoreState();

// The n-th Save from now (1: the next one) fails with Unavailable, naming the store and the
// save's number; the ones before and after succeed.
void FailSave(MemoryStoreState& state, int n);

// How many Save calls reached the state (those that failed included).
int SaveCalls(const MemoryStoreState& state);

// A handle on `state`: `read_only` refuses Save, Prune and Delete; `name` appears in errors.
std::unique_ptr<CheckpointStore> OpenMemoryStore(std::shared_ptr<MemoryStoreState> state, bool read_only = false,
                                                 std::string name = "memory store");

}  // namespace allround::storage

#endif  // ALLROUND_STORAGE_MEMORY_STORE_H_
