#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <set>

#include "common/random.h"
#include "data/partition.h"
#include "data/sampler.h"

namespace allround::data {
namespace {

// 10 classes, `per_class` examples each, in a shuffled but fixed order.
std::vector<int64_t> BalancedLabels(int64_t per_class) {
  std::vector<int64_t> y;
  for (int64_t k = 0; k < 10; ++k) y.insert(y.end(), per_class, k);
  Rng(99).Shuffle(y);
  return y;
}

// Every index in [0, n) appears in exactly one site (or, when `allow_unused`, at most one).
void ExpectDisjoint(const Partition& p, int64_t n, bool require_cover) {
  std::vector<int> seen(n, 0);
  for (const auto& site : p) {
    for (int64_t i : site) {
      ASSERT_GE(i, 0);
      ASSERT_LT(i, n);
      seen[i]++;
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_LE(seen[i], 1) << "index " << i << " in two sites";
    if (require_cover) {
      ASSERT_EQ(seen[i], 1) << "index " << i << " in no site";
    }
  }
}

int DistinctLabels(const std::vector<int64_t>& counts) {
  return static_cast<int>(std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; }));
}

TEST(Partition, IidIsBalancedDisjointAndCovering) {
  const auto y = BalancedLabels(600);
  auto p = MakePartition(y, 10, {"iid", 7}, 5);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 7u);
  ExpectDisjoint(*p, 6000, true);
  for (const auto& site : *p) EXPECT_NEAR(static_cast<double>(site.size()), 6000.0 / 7, 1.0);
  // Label proportions close to uniform at every site (857 examples, ~86 per class).
  for (const auto& counts : LabelCounts(*p, y, 10)) {
    for (int64_t c : counts) EXPECT_GT(c, 40);
  }
}

TEST(Partition, SameSeedSamePartitionOtherSeedOther) {
  const auto y = BalancedLabels(300);
  PartitionSpec spec{"dirichlet", 10, 0.5};
  auto a = MakePartition(y, 10, spec, 1), b = MakePartition(y, 10, spec, 1), c = MakePartition(y, 10, spec, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
}

TEST(Partition, DirichletSkewGrowsAsBetaShrinks) {
  const auto y = BalancedLabels(600);
  double distinct_small = 0, distinct_large = 0;
  for (uint64_t seed = 0; seed < 5; ++seed) {
    auto small = PartitionDirichlet(y, 10, 10, 0.1, 10, seed);
    auto large = PartitionDirichlet(y, 10, 10, 100.0, 10, seed);
    ASSERT_TRUE(small.ok() && large.ok());
    ExpectDisjoint(*small, 6000, true);
    ExpectDisjoint(*large, 6000, true);
    for (const auto& site : *small) EXPECT_GE(site.size(), 10u);
    // Dominant label share: near 1/10 for beta = 100, far above it for beta = 0.1.
    for (const auto& counts : LabelCounts(*small, y, 10)) distinct_small += DistinctLabels(counts);
    for (const auto& counts : LabelCounts(*large, y, 10)) {
      distinct_large += DistinctLabels(counts);
      const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
      const int64_t top = *std::max_element(counts.begin(), counts.end());
      EXPECT_LT(static_cast<double>(top) / total, 0.25);
    }
  }
  EXPECT_EQ(distinct_large, 5 * 10 * 10);     // every site sees every label
  EXPECT_LT(distinct_small, 0.6 * 5 * 10 * 10);  // strong skew: most sites miss most labels
}

TEST(Partition, DirichletRefusesImpossibleMinimum) {
  const auto y = BalancedLabels(2);
  auto p = PartitionDirichlet(y, 10, 10, 0.5, 10, 1);  // 20 examples cannot give 10 sites 10 each
  EXPECT_FALSE(p.ok());
}

TEST(Partition, LabelsGivesEachSiteExactlyKLabels) {
  const auto y = BalancedLabels(600);
  for (int64_t k : {1, 2, 3}) {
    auto p = PartitionLabels(y, 10, 10, k, 3);
    ASSERT_TRUE(p.ok()) << p.status();
    ExpectDisjoint(*p, 6000, /*require_cover=*/false);
    const auto counts = LabelCounts(*p, y, 10);
    std::vector<int64_t> holders(10, 0);
    for (int64_t s = 0; s < 10; ++s) {
      EXPECT_EQ(DistinctLabels(counts[s]), k) << "site " << s;
      EXPECT_GT(counts[s][s % 10], 0) << "site " << s << " must hold label " << s % 10;
      for (int64_t c = 0; c < 10; ++c) holders[c] += counts[s][c] > 0;
    }
    // A label's examples are split evenly among its holders, and all of them are used.
    for (int64_t c = 0; c < 10; ++c) {
      int64_t used = 0;
      for (int64_t s = 0; s < 10; ++s) {
        if (counts[s][c] > 0) {
          EXPECT_NEAR(static_cast<double>(counts[s][c]), 600.0 / holders[c], 1.0);
          used += counts[s][c];
        }
      }
      EXPECT_EQ(used, holders[c] > 0 ? 600 : 0);
    }
  }
  // #C=1 with 10 sites: site i holds exactly label i.
  auto one = PartitionLabels(y, 10, 10, 1, 3);
  for (int64_t i : (*one)[4]) EXPECT_EQ(y[i], 4);
}

TEST(Partition, GivenLabelSetsAreUsedAsGiven) {
  const auto y = BalancedLabels(600);
  // NIID-Bench's #C=2 draw for its partition seed 42: label 0 has three holders, 3 and 9 one.
  const std::vector<std::vector<int64_t>> sets = {{0, 7}, {1, 6}, {2, 4}, {3, 4}, {4, 8},
                                                  {5, 0}, {6, 2}, {7, 0}, {8, 5}, {9, 7}};
  auto p = PartitionGivenLabels(y, 10, sets, 3);
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectDisjoint(*p, 6000, /*require_cover=*/true);  // every label has a holder here
  const auto counts = LabelCounts(*p, y, 10);
  std::vector<int64_t> holders(10, 0);
  for (const auto& set : sets) {
    for (int64_t c : set) holders[c]++;
  }
  for (size_t s = 0; s < sets.size(); ++s) {
    for (int64_t c = 0; c < 10; ++c) {
      const bool held = std::find(sets[s].begin(), sets[s].end(), c) != sets[s].end();
      if (held) {
        EXPECT_NEAR(static_cast<double>(counts[s][c]), 600.0 / holders[c], 1.0) << "site " << s << " label " << c;
      } else {
        EXPECT_EQ(counts[s][c], 0) << "site " << s << " label " << c;
      }
    }
  }
  EXPECT_EQ(counts[3][3], 600);  // sole holder of label 3
  auto again = PartitionGivenLabels(y, 10, sets, 3), other = PartitionGivenLabels(y, 10, sets, 4);
  EXPECT_EQ(*again, *p);   // a function of (labels, sets, seed)
  EXPECT_NE(*other, *p);   // the seed picks which examples of a label go to which holder

  // Through the job's spec, as a worker builds it.
  PartitionSpec spec{"labels", 10};
  spec.site_labels = sets;
  auto via_spec = MakePartition(y, 10, spec, 3);
  ASSERT_TRUE(via_spec.ok()) << via_spec.status();
  EXPECT_EQ(*via_spec, *p);
  spec.sites = 9;
  EXPECT_FALSE(MakePartition(y, 10, spec, 3).ok());
}

TEST(Partition, GivenLabelSetsRefuseLabelsTheDataLacks) {
  const auto y = BalancedLabels(10);
  auto out_of_range = PartitionGivenLabels(y, 10, {{0, 1}, {2, 10}}, 1);
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_NE(std::string(out_of_range.status().message()).find("site 1 holds label 10"), std::string::npos)
      << out_of_range.status();
  EXPECT_FALSE(PartitionGivenLabels(y, 10, {{0, 0}}, 1).ok());      // twice in one set
  EXPECT_FALSE(PartitionGivenLabels(y, 10, {{0}, {}}, 1).ok());     // a site with none
  EXPECT_FALSE(PartitionGivenLabels(y, 10, {}, 1).ok());            // no sites
}

// Writes `text` to a fresh file under the test's temporary directory; its path.
std::string WriteTemp(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(Partition, ReadsEachSitesExamplesFromAFile) {
  const std::string path = WriteTemp("partition.txt",
                                     "# from elsewhere\n7, 3,1\n\n0 2\t9\n# a comment between sites\n8,5\n");
  auto p = ReadPartitionFile(path, 10, 3);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, (Partition{{1, 3, 7}, {0, 2, 9}, {5, 8}}));  // each site's indices ascending; 4 and 6 unused
  PartitionSpec spec{"file", 3};
  spec.file = path;
  auto via_spec = MakePartition(BalancedLabels(1), 10, spec, 1);
  ASSERT_TRUE(via_spec.ok()) << via_spec.status();
  EXPECT_EQ(*via_spec, *p);  // the seed plays no part
}

TEST(Partition, PartitionFileRefusesWhatIsNotAPartition) {
  const auto refused = [](const std::string& text, int64_t sites, const std::string& why) {
    auto p = ReadPartitionFile(WriteTemp("bad.txt", text), 10, sites);
    ASSERT_FALSE(p.ok()) << text;
    EXPECT_NE(std::string(p.status().message()).find(why), std::string::npos) << p.status();
  };
  refused("0,1\n2,x\n", 2, "line 2: 'x' is not an example index");
  refused("0,1\n2,10\n", 2, "line 2: example 10 outside the 10 training examples");
  refused("0,-1\n", 1, "example -1 outside");
  refused("0,1,1\n", 1, "line 1: example 1 appears twice");
  refused("0,1\n# c\n2,1\n", 2, "line 3: example 1 is on line 1 too");
  refused("0,1\n , \n", 2, "line 2: a site without examples");
  refused("0,1\n2,3\n", 3, "2 sites (lines of indices) for partition.sites = 3");
  refused("", 1, "");  // an empty file
  auto missing = ReadPartitionFile(::testing::TempDir() + "/no-such-partition.txt", 10, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("partition.file"), std::string::npos) << missing.status();
}

TEST(Sampler, ExactShardsAreDisjointAndCovering) {
  for (int64_t n : {1, 7, 100, 101}) {
    for (int w = 1; w <= 5; ++w) {
      std::vector<int> seen(n, 0);
      for (int r = 0; r < w; ++r) {
        DistributedSampler s(n, r, w, 42, true, DistributedSampler::Mode::kExact);
        const auto idx = s.Indices(3);
        EXPECT_EQ(static_cast<int64_t>(idx.size()), s.ShardSize());
        for (int64_t i : idx) seen[i]++;
      }
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << "n=" << n << " w=" << w << " i=" << i;
    }
  }
}

TEST(Sampler, EvenShardsAreEqualAndCoverWithMinimalRepeats) {
  const int64_t n = 103;
  for (int w : {2, 3, 4}) {
    std::vector<int> seen(n, 0);
    size_t shard = 0;
    for (int r = 0; r < w; ++r) {
      DistributedSampler s(n, r, w, 42, true, DistributedSampler::Mode::kEven);
      const auto idx = s.Indices(0);
      if (r == 0) shard = idx.size();
      EXPECT_EQ(idx.size(), shard);
      for (int64_t i : idx) seen[i]++;
    }
    EXPECT_EQ(shard, static_cast<size_t>((n + w - 1) / w));
    int repeats = 0;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_GE(seen[i], 1);
      repeats += seen[i] - 1;
    }
    EXPECT_EQ(repeats, static_cast<int>(shard * w - n));
  }
}

TEST(Sampler, OrderDependsOnSeedAndEpochOnly) {
  DistributedSampler a(1000, 1, 4, 7, true, DistributedSampler::Mode::kEven);
  DistributedSampler b(1000, 1, 4, 7, true, DistributedSampler::Mode::kEven);
  DistributedSampler c(1000, 1, 4, 8, true, DistributedSampler::Mode::kEven);
  EXPECT_EQ(a.Indices(2), b.Indices(2));
  EXPECT_NE(a.Indices(2), a.Indices(3));
  EXPECT_NE(a.Indices(2), c.Indices(2));
  DistributedSampler plain(10, 0, 2, 7, false, DistributedSampler::Mode::kExact);
  EXPECT_EQ(plain.Indices(5), (std::vector<int64_t>{0, 2, 4, 6, 8}));
}

TEST(Random, GammaAndDirichletMoments) {
  Rng rng(123);
  for (double shape : {0.3, 1.0, 4.5}) {
    double sum = 0, sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const double x = rng.Gamma(shape);
      sum += x;
      sq += x * x;
    }
    const double mean = sum / n, var = sq / n - mean * mean;
    EXPECT_NEAR(mean, shape, 0.02 * std::max(1.0, shape));  // Gamma(k, 1): mean k, variance k
    EXPECT_NEAR(var, shape, 0.06 * std::max(1.0, shape));
  }
  const auto p = rng.Dirichlet(0.5, 10);
  EXPECT_NEAR(std::accumulate(p.begin(), p.end(), 0.0), 1.0, 1e-12);
}

}  // namespace
}  // namespace allround::data
