#ifndef ALLROUND_DATA_SAMPLER_H_
#define ALLROUND_DATA_SAMPLER_H_

// Which examples each rank of a worker group visits in an epoch (after PyTorch's
// DistributedSampler). The order is a permutation seeded by (seed, epoch), the same on every rank;
// rank r takes positions r, r + W, r + 2W, ...
//  - kEven (training): every rank gets ceil(N / W) examples, so all ranks run the same number of
//    synchronous steps; the last W - (N mod W) positions wrap around to the permutation's start.
//  - kExact (evaluation): shards are disjoint and together cover every example exactly once;
//    ranks may differ by one example.
// Pure: no state beyond the arguments, so a resumed run reproduces any epoch's order.

#include <cstdint>
#include <vector>

namespace allround::data {

class DistributedSampler {
 public:
  enum class Mode { kEven, kExact };

  DistributedSampler(int64_t num_examples, int rank, int world_size, uint64_t seed, bool shuffle,
                     Mode mode);

  // This rank's example indices for `epoch`, in visiting order.
  std::vector<int64_t> Indices(int64_t epoch) const;
  // How many indices Indices() returns (the same for every epoch).
  int64_t ShardSize() const;

 private:
  int64_t num_examples_;
  int rank_;
  int world_size_;
  uint64_t seed_;
  bool shuffle_;
  Mode mode_;
};

}  // namespace allround::data

#endif  // ALLROUND_DATA_SAMPLER_H_
