// Fuzz target: the partition file (data/partition.h, ReadPartitionFile), partition.scheme file's
// list of each site's example indices. Every input must give a partition or an error; a
// partition must name each site once with indices inside [0, examples), none twice.

#include <cstdlib>
#include <set>

#include "data/partition.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = allround::fuzz::InputFile(data, size, ".partition");
  constexpr int64_t kExamples = 64, kSites = 3;
  auto partition = allround::data::ReadPartitionFile(path, kExamples, kSites);
  if (!partition.ok()) return 0;
  if (static_cast<int64_t>(partition->size()) != kSites) std::abort();
  std::set<int64_t> seen;
  for (const auto& site : *partition) {
    if (site.empty()) std::abort();
    for (int64_t i : site) {
      if (i < 0 || i >= kExamples || !seen.insert(i).second) std::abort();
    }
  }
  return 0;
}
