#ifndef ALLROUND_DATA_PARTITION_H_
#define ALLROUND_DATA_PARTITION_H_

// Seeded partitioners that split a labelled dataset among federated sites, with the semantics of
// NIID-Bench (Li et al., "Federated Learning on Non-IID Data Silos", ICDE 2022):
//  - IID: a random permutation cut into `sites` near-equal parts;
//  - Dirichlet(beta) label skew: for each class, proportions ~ Dir(beta) over the sites (a site
//    already holding >= N/sites examples gets none of the next class), resampled until every
//    site holds >= min_per_site examples;
//  - #C=k: each site gets k distinct labels (site i always holds label i mod C), and each label's
//    examples are split evenly among the sites holding it. The label sets can also be given
//    (job key partition.site_labels), so a run can use another run's draw.
//  - file: each site's example indices read from a file (job key partition.file), so a run can
//    use the very examples of another system's run, not only its label sets.
// Pure functions of (labels, spec, seed), and for file of the file's text: the same arguments give
// the same partition.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/job.h"

namespace allround::data {

using Partition = std::vector<std::vector<int64_t>>;  // per site, example indices (ascending)

absl::StatusOr<Partition> PartitionIid(int64_t num_examples, int64_t sites, uint64_t seed);
absl::StatusOr<Partition> PartitionDirichlet(const std::vector<int64_t>& labels, int64_t num_classes,
                                             int64_t sites, double beta, int64_t min_per_site,
                                             uint64_t seed);
absl::StatusOr<Partition> PartitionLabels(const std::vector<int64_t>& labels, int64_t num_classes,
                                          int64_t sites, int64_t labels_per_site, uint64_t seed);
// The same split of each label's examples among its holders, with each site's label set given.
absl::StatusOr<Partition> PartitionGivenLabels(const std::vector<int64_t>& labels, int64_t num_classes,
                                               const std::vector<std::vector<int64_t>>& site_labels,
                                               uint64_t seed);

// Reads a partition of `num_examples` training examples among `sites` sites from a text file: one
// line per site (in site order), its example indices (0-based) separated by commas or white
// space; lines that start with '#' are comments. A site without examples, an index outside
// [0, num_examples) or one that appears twice (in one site or two) is an error naming the line.
absl::StatusOr<Partition> ReadPartitionFile(const std::string& path, int64_t num_examples, int64_t sites);

// Dispatches on spec.scheme.
absl::StatusOr<Partition> MakePartition(const std::vector<int64_t>& labels, int64_t num_classes,
                                        const PartitionSpec& spec, uint64_t seed);

// counts[site][class], for reports and tests.
std::vector<std::vector<int64_t>> LabelCounts(const Partition& p, const std::vector<int64_t>& labels,
                                              int64_t num_classes);

}  // namespace allround::data

#endif  // ALLROUND_DATA_PARTITION_H_
