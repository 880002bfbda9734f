#ifndef ALLROUND_ALGORITHMS_METRICS_H_
#define ALLROUND_ALGORITHMS_METRICS_H_

// Classification metrics from a confusion matrix (rows: true class, columns: predicted class).
// The matrix is the summable part: ranks or sites add their matrices, then metrics are computed
// once. Precision of a class never predicted, and recall of a class absent from the data, are 0
// (scikit-learn's zero_division=0); macro averages are unweighted means over all classes.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace allround::metrics {

using Confusion = std::vector<std::vector<int64_t>>;

struct ClassificationReport {
  int64_t examples = 0;
  double accuracy = 0.0;
  double macro_precision = 0.0;
  double macro_recall = 0.0;
  double macro_f1 = 0.0;
  std::vector<double> precision, recall, f1;  // per class
  Confusion confusion;
};

ClassificationReport Report(const Confusion& confusion);

// Adds predictions (int64 [B]) against targets (int64 [B]) into `confusion` (int64 [C, C]).
void AccumulateConfusion(at::Tensor& confusion, const at::Tensor& predictions, const at::Tensor& targets);

// int64 [C, C] tensor <-> nested vectors.
Confusion ToConfusion(const at::Tensor& confusion);

// The Frechet distance between Gaussians fitted to two feature sets [N, D] and [M, D] (Heusel et
// al. 2017, FID's formula on whatever features are given): ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b)
// - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2), with unbiased covariances, in double precision. Matrix
// square roots come from symmetric eigendecompositions (negative round-off eigenvalues clipped).
double FrechetDistance(const at::Tensor& a, const at::Tensor& b);

}  // namespace allround::metrics

#endif  // ALLROUND_ALGORITHMS_METRICS_H_
