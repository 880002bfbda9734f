#include "data/partition.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/random.h"
#include "common/text_file.h"

namespace allround::data {
namespace {

// Cuts v into n contiguous parts whose sizes differ by at most one (numpy.array_split).
std::vector<std::vector<int64_t>> ArraySplit(const std::vector<int64_t>& v, int64_t n) {
  std::vector<std::vector<int64_t>> out(n);
  const int64_t base = static_cast<int64_t>(v.size()) / n;
  const int64_t extra = static_cast<int64_t>(v.size()) % n;
  int64_t pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = base + (i < extra ? 1 : 0);
    out[i].assign(v.begin() + pos, v.begin() + pos + len);
    pos += len;
  }
  return out;
}

std::vector<std::vector<int64_t>> IndicesByClass(const std::vector<int64_t>& labels, int64_t num_classes) {
  std::vector<std::vector<int64_t>> by_class(num_classes);
  for (size_t i = 0; i < labels.size(); ++i) by_class[labels[i]].push_back(static_cast<int64_t>(i));
  return by_class;
}

void SortSites(Partition& p) {
  for (auto& site : p) std::sort(site.begin(), site.end());
}

absl::Status CheckLabels(const std::vector<int64_t>& labels, int64_t num_classes) {
  for (int64_t y : labels) {
    if (y < 0 || y >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("label ", y, " outside [0, ", num_classes, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Partition> PartitionIid(int64_t num_examples, int64_t sites, uint64_t seed) {
  if (sites < 1 || sites > num_examples) {
    return absl::InvalidArgumentError(absl::StrCat("iid partition: cannot split ", num_examples,
                                                   " examples among ", sites, " sites"));
  }
  Rng rng(DeriveSeed(seed, "partition-iid"));
  Partition p = ArraySplit(rng.Permutation(num_examples), sites);
  SortSites(p);
  return p;
}

absl::StatusOr<Partition> PartitionDirichlet(const std::vector<int64_t>& labels, int64_t num_classes,
                                             int64_t sites, double beta, int64_t min_per_site,
                                             uint64_t seed) {
  if (auto s = CheckLabels(labels, num_classes); !s.ok()) return s;
  const int64_t n = static_cast<int64_t>(labels.size());
  if (sites < 1 || beta <= 0 || min_per_site * sites > n) {
    return absl::InvalidArgumentError(absl::StrCat("dirichlet partition: cannot give ", sites, " sites ",
                                                   min_per_site, " of ", n, " examples each"));
  }
  Rng rng(DeriveSeed(seed, "partition-dirichlet"));
  const auto by_class = IndicesByClass(labels, num_classes);
  constexpr int kMaxTries = 10000;
  for (int attempt = 0; attempt < kMaxTries; ++attempt) {
    Partition p(sites);
    for (int64_t k = 0; k < num_classes; ++k) {
      std::vector<int64_t> idx = by_class[k];
      rng.Shuffle(idx);
      std::vector<double> prop = rng.Dirichlet(beta, static_cast<int>(sites));
      // Balance: a site that already has its share takes no more.
      double sum = 0.0;
      for (int64_t j = 0; j < sites; ++j) {
        if (static_cast<int64_t>(p[j].size()) >= n / sites) prop[j] = 0.0;
        sum += prop[j];
      }
      if (sum <= 0.0) continue;
      double cum = 0.0;
      int64_t start = 0;
      for (int64_t j = 0; j < sites; ++j) {
        cum += prop[j] / sum;
        const int64_t end = j + 1 == sites ? static_cast<int64_t>(idx.size())
                                           : static_cast<int64_t>(cum * static_cast<double>(idx.size()));
        const int64_t e = std::clamp<int64_t>(end, start, static_cast<int64_t>(idx.size()));
        p[j].insert(p[j].end(), idx.begin() + start, idx.begin() + e);
        start = e;
      }
    }
    int64_t smallest = n;
    for (const auto& site : p) smallest = std::min<int64_t>(smallest, static_cast<int64_t>(site.size()));
    if (smallest >= min_per_site) {
      SortSites(p);
      return p;
    }
  }
  return absl::FailedPreconditionError(absl::StrCat("dirichlet partition: no draw in ", kMaxTries,
                                                    " gave every site ", min_per_site, " examples"));
}

namespace {

// Splits each label's examples evenly among the sites whose set holds it, in site order; a label
// that no site holds goes unused. `rng` has drawn the sets already, or is fresh when they were given.
Partition SplitAmongHolders(const std::vector<int64_t>& labels, int64_t num_classes,
                            const std::vector<std::vector<int64_t>>& contains, Rng& rng) {
  const int64_t sites = static_cast<int64_t>(contains.size());
  std::vector<int64_t> times(num_classes, 0);
  for (const auto& set : contains) {
    for (int64_t c : set) times[c]++;
  }
  Partition p(sites);
  auto by_class = IndicesByClass(labels, num_classes);
  for (int64_t k = 0; k < num_classes; ++k) {
    if (times[k] == 0) continue;
    rng.Shuffle(by_class[k]);
    auto parts = ArraySplit(by_class[k], times[k]);
    int64_t next = 0;
    for (int64_t j = 0; j < sites; ++j) {
      if (std::find(contains[j].begin(), contains[j].end(), k) != contains[j].end()) {
        p[j].insert(p[j].end(), parts[next].begin(), parts[next].end());
        ++next;
      }
    }
  }
  SortSites(p);
  return p;
}

}  // namespace

absl::StatusOr<Partition> PartitionLabels(const std::vector<int64_t>& labels, int64_t num_classes,
                                          int64_t sites, int64_t labels_per_site, uint64_t seed) {
  if (auto s = CheckLabels(labels, num_classes); !s.ok()) return s;
  if (sites < 1 || labels_per_site < 1 || labels_per_site > num_classes) {
    return absl::InvalidArgumentError(absl::StrCat("#C=", labels_per_site, " partition: needs 1 <= k <= ",
                                                   num_classes, " and at least one site"));
  }
  Rng rng(DeriveSeed(seed, "partition-labels"));
  // Which labels each site holds: label i mod C, then distinct draws.
  std::vector<std::vector<int64_t>> contains(sites);
  for (int64_t i = 0; i < sites; ++i) {
    contains[i].push_back(i % num_classes);
    while (static_cast<int64_t>(contains[i].size()) < labels_per_site) {
      const int64_t c = static_cast<int64_t>(rng.UniformInt(num_classes));
      if (std::find(contains[i].begin(), contains[i].end(), c) == contains[i].end()) contains[i].push_back(c);
    }
  }
  return SplitAmongHolders(labels, num_classes, contains, rng);
}

absl::StatusOr<Partition> PartitionGivenLabels(const std::vector<int64_t>& labels, int64_t num_classes,
                                               const std::vector<std::vector<int64_t>>& site_labels,
                                               uint64_t seed) {
  if (auto s = CheckLabels(labels, num_classes); !s.ok()) return s;
  if (site_labels.empty()) return absl::InvalidArgumentError("given label sets: no sites");
  for (size_t i = 0; i < site_labels.size(); ++i) {
    const auto& set = site_labels[i];
    if (set.empty()) return absl::InvalidArgumentError(absl::StrCat("given label sets: site ", i, " has none"));
    for (size_t a = 0; a < set.size(); ++a) {
      if (set[a] < 0 || set[a] >= num_classes) {
        return absl::InvalidArgumentError(absl::StrCat("given label sets: site ", i, " holds label ", set[a],
                                                       "; the data has labels 0 to ", num_classes - 1));
      }
      if (std::find(set.begin(), set.begin() + a, set[a]) != set.begin() + a) {
        return absl::InvalidArgumentError(absl::StrCat("given label sets: site ", i, " holds label ", set[a],
                                                       " twice"));
      }
    }
  }
  Rng rng(DeriveSeed(seed, "partition-labels"));
  return SplitAmongHolders(labels, num_classes, site_labels, rng);
}

absl::StatusOr<Partition> ReadPartitionFile(const std::string& path, int64_t num_examples, int64_t sites) {
  auto text = ReadTextFile(path, "job key 'partition.file'");
  if (!text.ok()) return text.status();
  const auto bad = [&](int64_t line, const auto&... why) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'partition.file' (", path, ") line ", line, ": ", why...));
  };
  Partition p;
  std::vector<int64_t> owner(static_cast<size_t>(num_examples), -1);  // the line that holds each example
  int64_t line = 0;
  for (absl::string_view row : absl::StrSplit(*text, '\n')) {
    ++line;
    row = absl::StripAsciiWhitespace(row);
    if (row.empty() || row[0] == '#') continue;
    std::vector<int64_t> site;
    for (absl::string_view field : absl::StrSplit(row, absl::ByAnyChar(", \t\r"), absl::SkipEmpty())) {
      int64_t i = 0;
      if (!absl::SimpleAtoi(field, &i)) return bad(line, "'", field, "' is not an example index");
      if (i < 0 || i >= num_examples) {
        return bad(line, "example ", i, " outside the ", num_examples, " training examples");
      }
      if (owner[i] == line) return bad(line, "example ", i, " appears twice");
      if (owner[i] >= 0) return bad(line, "example ", i, " is on line ", owner[i], " too");
      owner[i] = line;
      site.push_back(i);
    }
    if (site.empty()) return bad(line, "a site without examples");
    p.push_back(std::move(site));
  }
  if (static_cast<int64_t>(p.size()) != sites) {
    return absl::InvalidArgumentError(absl::StrCat("job key 'partition.file' (", path, "): ", p.size(),
                                                   " sites (lines of indices) for partition.sites = ", sites));
  }
  SortSites(p);
  return p;
}

absl::StatusOr<Partition> MakePartition(const std::vector<int64_t>& labels, int64_t num_classes,
                                        const PartitionSpec& spec, uint64_t seed) {
  if (spec.scheme == "file") return ReadPartitionFile(spec.file, static_cast<int64_t>(labels.size()), spec.sites);
  if (spec.scheme == "iid") return PartitionIid(static_cast<int64_t>(labels.size()), spec.sites, seed);
  if (spec.scheme == "dirichlet") {
    return PartitionDirichlet(labels, num_classes, spec.sites, spec.beta, spec.min_per_site, seed);
  }
  if (spec.scheme == "labels" && !spec.site_labels.empty()) {
    if (static_cast<int64_t>(spec.site_labels.size()) != spec.sites) {
      return absl::InvalidArgumentError(absl::StrCat("job key 'partition.site_labels': ", spec.site_labels.size(),
                                                     " label sets for ", spec.sites, " sites"));
    }
    return PartitionGivenLabels(labels, num_classes, spec.site_labels, seed);
  }
  if (spec.scheme == "labels") {
    return PartitionLabels(labels, num_classes, spec.sites, spec.labels_per_site, seed);
  }
  return absl::InvalidArgumentError(absl::StrCat("job key 'partition.scheme': unknown '", spec.scheme, "'"));
}

std::vector<std::vector<int64_t>> LabelCounts(const Partition& p, const std::vector<int64_t>& labels,
                                              int64_t num_classes) {
  std::vector<std::vector<int64_t>> counts(p.size(), std::vector<int64_t>(num_classes, 0));
  for (size_t s = 0; s < p.size(); ++s) {
    for (int64_t i : p[s]) counts[s][labels[i]]++;
  }
  return counts;
}

}  // namespace allround::data
