// Test helper: saves checkpoints of a few MiB into a store, forever (or N times), pruning as the
// worker does, so a crash test can SIGKILL it at any moment of a save.
//   checkpoint_stress_writer DB [COUNT]

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>

#include "storage/checkpoint_store.h"

int main(int argc, char** argv) {
  using namespace allround::storage;
  if (argc < 2) return 2;
  const int64_t count = argc > 2 ? std::atoll(argv[2]) : -1;
  StoreOptions options;
  options.chunk_bytes = 256 << 10;
  auto store = OpenCheckpointStore(argv[1], options);
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", std::string(store.status().message()).c_str());
    return 1;
  }
  for (int64_t i = 0; count < 0 || i < count; ++i) {
    // Values that depend on i, so a checkpoint mixing two saves would fail its checksums.
    NamedTensors t = {{"a", torch::full({512, 1024}, static_cast<float>(i))},
                      {"b", torch::arange(300000, torch::kDouble) + static_cast<double>(i)},
                      {"small", torch::tensor({i})}};
    CheckpointInfo info;
    info.step = i;
    auto id = (*store)->Save("stress", info, t);
    if (!id.ok() || !(*store)->Prune("stress", {4, 0}).ok()) return 1;
    std::printf("saved %s\n", id->c_str());
    std::fflush(stdout);
  }
  return 0;
}
