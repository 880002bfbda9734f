#include "algorithms/metrics.h"

#include <ATen/ATen.h>

namespace allround::metrics {

ClassificationReport Report(const Confusion& confusion) {
  ClassificationReport r;
  r.confusion = confusion;
  const size_t c = confusion.size();
  r.precision.assign(c, 0.0);
  r.recall.assign(c, 0.0);
  r.f1.assign(c, 0.0);
  int64_t correct = 0;
  std::vector<int64_t> row_sum(c, 0), col_sum(c, 0);
  for (size_t t = 0; t < c; ++t) {
    for (size_t p = 0; p < c; ++p) {
      row_sum[t] += confusion[t][p];
      col_sum[p] += confusion[t][p];
      r.examples += confusion[t][p];
    }
    correct += confusion[t][t];
  }
  if (r.examples > 0) r.accuracy = static_cast<double>(correct) / static_cast<double>(r.examples);
  for (size_t k = 0; k < c; ++k) {
    const double tp = static_cast<double>(confusion[k][k]);
    if (col_sum[k] > 0) r.precision[k] = tp / static_cast<double>(col_sum[k]);
    if (row_sum[k] > 0) r.recall[k] = tp / static_cast<double>(row_sum[k]);
    const double s = r.precision[k] + r.recall[k];
    if (s > 0) r.f1[k] = 2.0 * r.precision[k] * r.recall[k] / s;
    r.macro_precision += r.precision[k];
    r.macro_recall += r.recall[k];
    r.macro_f1 += r.f1[k];
  }
  if (c > 0) {
    r.macro_precision /= static_cast<double>(c);
    r.macro_recall /= static_cast<double>(c);
    r.macro_f1 /= static_cast<double>(c);
  }
  return r;
}

void AccumulateConfusion(at::Tensor& confusion, const at::Tensor& predictions, const at::Tensor& targets) {
  const int64_t c = confusion.size(0);
  at::Tensor flat = targets.to(at::kLong) * c + predictions.to(at::kLong);
  confusion.view({-1}).add_(at::bincount(flat, {}, c * c));
}

Confusion ToConfusion(const at::Tensor& confusion) {
  at::Tensor t = confusion.to(at::kCPU).to(at::kLong).contiguous();
  const int64_t c = t.size(0);
  Confusion out(c, std::vector<int64_t>(c));
  const int64_t* data = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t j = 0; j < c; ++j) out[i][j] = data[i * c + j];
  }
  return out;
}

namespace {

// mean [D] and unbiased covariance [D, D] of rows, in double.
std::pair<at::Tensor, at::Tensor> MeanAndCovariance(const at::Tensor& x) {
  const at::Tensor d = x.to(at::kDouble);
  const at::Tensor mu = d.mean(0);
  const at::Tensor centred = d - mu;
  return {mu, centred.t().matmul(centred) / static_cast<double>(std::max<int64_t>(1, d.size(0) - 1))};
}

// The symmetric PSD square root of a symmetric matrix.
at::Tensor SqrtPsd(const at::Tensor& m) {
  auto [values, vectors] = at::linalg_eigh((m + m.t()) / 2);
  return vectors.matmul(at::diag(values.clamp_min(0).sqrt())).matmul(vectors.t());
}

}  // namespace

double FrechetDistance(const at::Tensor& a, const at::Tensor& b) {
  auto [mu_a, cov_a] = MeanAndCovariance(a);
  auto [mu_b, cov_b] = MeanAndCovariance(b);
  const at::Tensor root_a = SqrtPsd(cov_a);
  const at::Tensor inner = root_a.matmul(cov_b).matmul(root_a);
  const at::Tensor inner_values = at::linalg_eigvalsh((inner + inner.t()) / 2);
  const double cross = inner_values.clamp_min(0).sqrt().sum().item<double>();
  const double mean_term = (mu_a - mu_b).pow(2).sum().item<double>();
  return std::max(0.0, mean_term + cov_a.trace().item<double>() + cov_b.trace().item<double>() - 2 * cross);
}

}  // namespace allround::metrics
