#ifndef ALLROUND_STORAGE_CHECKPOINT_STORE_H_
#define ALLROUND_STORAGE_CHECKPOINT_STORE_H_

// Checkpoints: a named set of tensors plus a manifest, saved atomically and durably. A checkpoint
// is visible (listed, "latest", loadable) only once all of it is on disk: a crash at any moment
// leaves the store with the checkpoints that were complete before it, and nothing half-written.
// Every tensor carries a CRC32C; Load and Verify recompute it and name any tensor that differs.
//
// One process opens a store for writing at a time (the store refuses a second writer); any number
// may open it read-only. Thread-compatible: one thread uses a store object.
// Nothing outside storage/rocksdb/ sees RocksDB.

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tensor/named_tensors.h"

namespace allround::storage {

using tensor::NamedTensors;

// What the caller says about a checkpoint; the store adds id, sequence, time and the tensor list.
struct CheckpointInfo {
  int64_t round = 0;
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t step_in_epoch = 0;
  std::string mode;
  std::string job_hash;
  std::map<std::string, double> metrics;
};

struct TensorSummary {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
  uint32_t chunks = 0;
  uint32_t crc32c = 0;
};

// A stored checkpoint as listed: its manifest without the tensor bytes.
struct CheckpointRecord {
  std::string id;
  std::string run_id;
  uint64_t sequence = 0;
  CheckpointInfo info;
  int64_t created_unix_ms = 0;
  std::map<std::string, std::string> versions;
  std::vector<TensorSummary> tensors;
  uint64_t total_bytes = 0;
};

struct RetentionPolicy {
  int64_t keep_last = 3;    // the newest N
  int64_t keep_every = 0;   // and every checkpoint whose sequence is a multiple of M (0: none)
};

class CheckpointStore {
 public:
  virtual ~CheckpointStore() = default;

  // Saves `tensors` (CPU or not; copied to CPU) as the run's next checkpoint and makes it the
  // run's latest, atomically, after its bytes are durable. Returns the new id.
  virtual absl::StatusOr<std::string> Save(const std::string& run_id, const CheckpointInfo& info,
                                           const NamedTensors& tensors) = 0;

  // Every complete checkpoint of every run, oldest first.
  virtual absl::StatusOr<std::vector<CheckpointRecord>> List() = 0;
  virtual absl::StatusOr<CheckpointRecord> Get(const std::string& id) = 0;
  // The id the run's "latest" pointer names; NotFound when the run has none.
  virtual absl::StatusOr<std::string> Latest(const std::string& run_id) = 0;

  // Reads every tensor back, checking sizes and CRC32C; DataLoss names each bad tensor.
  virtual absl::StatusOr<NamedTensors> Load(const std::string& id) = 0;
  // Like Load, without keeping the bytes: the names of the tensors whose checksum fails (empty if
  // all are good).
  virtual absl::StatusOr<std::vector<std::string>> Verify(const std::string& id) = 0;

  // Deletes checkpoints of `run_id` that the policy does not keep; never the latest. Returns the
  // deleted ids.
  virtual absl::StatusOr<std::vector<std::string>> Prune(const std::string& run_id,
                                                         const RetentionPolicy& policy) = 0;
  // Deletes one checkpoint (not the latest of its run).
  virtual absl::Status Delete(const std::string& id) = 0;
};

struct StoreOptions {
  bool read_only = false;
  bool create_if_missing = true;
  uint64_t chunk_bytes = 4 << 20;
};

// Opens (creating it if asked) a RocksDB store at `path`. On a writable open, the chunks of a
// save that a crash cut short are deleted. Every open checks that the store still holds every
// checkpoint it committed: one whose files are damaged so that RocksDB would recover an older
// state is refused (DataLoss, naming the files) before anything is changed or deleted. A new
// store is created only in a missing or empty directory (FailedPrecondition otherwise).
absl::StatusOr<std::unique_ptr<CheckpointStore>> OpenCheckpointStore(const std::string& path,
                                                                     const StoreOptions& options = {});

// What RepairCheckpointStore found.
struct RepairReport {
  std::vector<std::string> kept;     // listed and every tensor's checksum good
  std::vector<std::string> damaged;  // listed, but a tensor is missing or fails its checksum (with why)
  std::vector<std::string> lost;     // committed once, no longer in the store
  std::vector<std::string> notes;    // e.g. the committed list itself was unreadable
  std::string backup;                // where the store as it was is kept, untouched
};

// The explicit way on for a store that OpenCheckpointStore refuses. The store is moved aside,
// whole, to `path`.before-repair-<time> and never written again; every checkpoint whose bytes
// can still be found in its table, log and blob files, with the sizes and CRC32C of its
// manifest, is written into a new store at `path` under its old id (storage/rocksdb/repair.cc
// says how). Refuses a store another process has open.
absl::StatusOr<RepairReport> RepairCheckpointStore(const std::string& path);

}  // namespace allround::storage

#endif  // ALLROUND_STORAGE_CHECKPOINT_STORE_H_
