#include "data/sampler.h"

#include <numeric>

#include "common/random.h"

namespace allround::data {

DistributedSampler::DistributedSampler(int64_t num_examples, int rank, int world_size, uint64_t seed,
                                       bool shuffle, Mode mode)
    : num_examples_(num_examples),
      rank_(rank),
      world_size_(world_size),
      seed_(seed),
      shuffle_(shuffle),
      mode_(mode) {}

int64_t DistributedSampler::ShardSize() const {
  if (mode_ == Mode::kEven) return (num_examples_ + world_size_ - 1) / world_size_;
  return num_examples_ / world_size_ + (rank_ < num_examples_ % world_size_ ? 1 : 0);
}

std::vector<int64_t> DistributedSampler::Indices(int64_t epoch) const {
  std::vector<int64_t> order;
  if (shuffle_) {
    Rng rng(DeriveSeed(seed_, "sampler", static_cast<uint64_t>(epoch)));
    order = rng.Permutation(num_examples_);
  } else {
    order.resize(num_examples_);
    std::iota(order.begin(), order.end(), 0);
  }
  std::vector<int64_t> out;
  const int64_t shard = ShardSize();
  out.reserve(shard);
  for (int64_t i = 0; i < shard; ++i) {
    const int64_t pos = rank_ + i * world_size_;
    out.push_back(order[pos % num_examples_]);  // wraps only in kEven mode
  }
  return out;
}

}  // namespace allround::data
