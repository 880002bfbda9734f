#ifndef ALLROUND_STORAGE_ROCKSDB_STORE_FORMAT_H_
#define ALLROUND_STORAGE_ROCKSDB_STORE_FORMAT_H_

// The on-disk format of the RocksDB checkpoint store, shared by the store (rocksdb_store.cc) and
// its repair (repair.cc); internal to storage/rocksdb/.
//   column family "default": "m/<run>/<sequence, 10 digits>" -> Manifest (protobuf)
//                            "latest/<run>"                   -> checkpoint id
//                            "pending/<id>"                   -> "" while a save is under way
//   column family "chunks" (BlobDB): "<id>\0<tensor index, BE32><chunk index, BE32>" -> bytes
//   ALLROUND-CHECKPOINTS beside RocksDB's files: the committed ids (a subset at every moment).

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/status.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/checkpoint_store.h"
#include "storage/proto/checkpoint.pb.h"

namespace allround::storage::rocksdb_format {

namespace pb = allround::storage::v1;

inline constexpr char kPendingPrefix[] = "pending/";
inline constexpr char kCommittedFile[] = "ALLROUND-CHECKPOINTS";

// rocksdb::Status -> absl::Status with `what` and RocksDB's own message.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& what);

std::string ManifestKey(const std::string& run, uint64_t seq);
std::string LatestKey(const std::string& run);
std::string PendingKey(const std::string& id);
std::string ChunkPrefix(const std::string& id);
std::string ChunkKey(const std::string& id, uint32_t tensor, uint32_t chunk);

// The committed-ids file: a header line, one id a line, and "crc32c <hex>" of all before it.
// Written atomically and durably.
absl::Status WriteCommitted(const std::string& store, const std::set<std::string>& ids);
// nullopt when the file does not exist (a store from before it, or a new one); DataLoss naming
// the file and `allround-ckpt repair` when it is damaged.
absl::StatusOr<std::optional<std::set<std::string>>> ReadCommitted(const std::string& store);

// A stored manifest's bytes as the store reads them (they may be damaged): parses, and checks what
// reading its tensors relies on before anything is allocated: each tensor's dtype is one we write,
// its dimensions are non-negative and their product times the element size is its byte count
// without overflow, at most 2^40 bytes, and it has at least one chunk (and, where the manifest
// records its chunk size, exactly the chunks those bytes take). DataLoss naming `key` and the
// tensor otherwise.
absl::StatusOr<pb::Manifest> DecodeManifest(std::string_view bytes, const std::string& key);

// For errors: "MANIFEST-000012 (named by CURRENT)", or that CURRENT is unreadable.
std::string ManifestName(const std::string& store);

// The store's RocksDB options and its two column families.
struct RocksOptions {
  rocksdb::DBOptions db;
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
};
RocksOptions MakeRocksOptions(const StoreOptions& options);

}  // namespace allround::storage::rocksdb_format

#endif  // ALLROUND_STORAGE_ROCKSDB_STORE_FORMAT_H_
