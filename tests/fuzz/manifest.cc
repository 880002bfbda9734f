// Fuzz target: what the checkpoint store reads back from disk that a damaged file can change
// before RocksDB's or our checksums see it: a checkpoint's manifest (DecodeManifest, which every
// listing, load and repair goes through) and the store's committed-ids file (ReadCommitted). The
// first input byte picks the decoder; the rest is its bytes. Invariants: an accepted manifest's
// tensors each have a known dtype, non-negative dimensions whose product times the element size is
// the recorded byte count (so allocating it cannot overflow), and at least one chunk; an accepted
// committed-ids file's checksum line matches what precedes it.

#include <ATen/ATen.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "storage/crc32c.h"
#include "storage/rocksdb/store_format.h"
#include "tensor/dtype.h"
#include "tests/fuzz/fuzz_input.h"

namespace fmt = allround::storage::rocksdb_format;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    auto m = fmt::DecodeManifest(bytes, "m/run/0000000001");
    if (!m.ok()) return 0;
    for (const auto& e : m->tensors()) {
      auto dtype = allround::tensor::DtypeFromName(e.dtype());
      if (!dtype.ok() || e.chunks() == 0) std::abort();
      uint64_t product = at::elementSize(*dtype);
      for (int64_t d : e.shape()) {
        if (d < 0 || __builtin_mul_overflow(product, static_cast<uint64_t>(d), &product)) std::abort();
      }
      if (product != e.bytes()) std::abort();
      if (e.bytes() <= (1 << 16)) {  // small enough to allocate here as the store would
        at::Tensor t = at::empty(std::vector<int64_t>(e.shape().begin(), e.shape().end()),
                                 at::TensorOptions().dtype(*dtype));
        if (static_cast<uint64_t>(t.numel()) * t.element_size() != e.bytes()) std::abort();
      }
    }
    return 0;
  }
  // The committed-ids file lives in the store's directory under a fixed name.
  static const std::string* dir = [] {
    auto* d = new std::string("/dev/shm/allround-fuzz-store-" + std::to_string(getpid()));
    std::filesystem::create_directories(*d);
    std::atexit([] { std::filesystem::remove_all(*dir); });
    return d;
  }();
  const std::string file = allround::fuzz::InputFile(data + 1, size - 1, ".committed");
  std::filesystem::copy_file(file, *dir + "/" + fmt::kCommittedFile, std::filesystem::copy_options::overwrite_existing);
  auto ids = fmt::ReadCommitted(*dir);
  if (!ids.ok() || !ids->has_value()) return 0;
  const size_t last = bytes.rfind("crc32c ");
  if (last == std::string_view::npos) std::abort();
  (void)allround::storage::Crc32c(0, bytes.data(), last);
  return 0;
}
