#ifndef ALLROUND_ALGORITHMS_MODES_DINO_H_
#define ALLROUND_ALGORITHMS_MODES_DINO_H_

// DINO (Caron et al. 2021): self-distillation without labels. A student and a teacher of the same
// architecture (a backbone from algorithms/models emitting dino.embed_dim features, then a
// 3-layer MLP head with GELU (and batch norm, dino.head_bn), an L2-normalized bottleneck and a weight-normalized last layer of
// dino.out_dim prototypes). Each step makes 2 global and dino.local_crops local views of every
// image; the teacher sees the global ones, the student all; the loss is the cross-entropy
// between the teacher's centred, sharpened softmax of each global view and the student's
// log-softmax of every other view. Only the student gets gradients (the Reducer averages them
// across ranks); after the step the teacher moves to an exponential moving average of the
// student (momentum cosine from dino.momentum to 1 over the run) and the center to a moving
// average (dino.center_momentum) of the teacher's outputs, averaged over ranks, so teacher and
// center stay identical everywhere.
//
// Evaluation: weighted k-NN (k dino.knn_k, temperature dino.knn_temp) on the teacher backbone's
// L2-normalized features, voting with a bank of labelled training images; with
// dino.knn_features "pixels", on raw pixels (the baseline). Beside it a linear probe
// (dino.probe_steps > 0): logistic regression fitted on the same bank's frozen features, reported
// as "linear_accuracy". Collapse monitors come with it: the teacher's output entropy and the mean
// per-dimension std of the normalized features.
//
// Federated (see README): a round averages everything under "model/" (student, teacher with its
// batch-norm statistics, and the center); each site starts the round's optimizer afresh, and its
// teacher momentum and temperature follow the whole run's progress. Sites evaluate with their own
// training share as the bank; the coordinator with dino.knn_bank images of the job's training set.
// Checkpoints hold student, teacher, center and the optimizer ("model/student/...",
// "model/teacher/...", "model/center", "optim/...").

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

// The mode's keys (dino.*), registered in dino.cc with these defaults.
struct DinoSpec {
  int64_t embed_dim = 128;
  int64_t hidden_dim = 256;
  int64_t bottleneck_dim = 64;
  int64_t out_dim = 1024;
  bool head_bn = true;               // batch norm in the head's hidden layers (DINO's use_bn, for CNNs)
  int64_t local_crops = 4;
  int64_t local_size = 28;           // local crops are resized to this (CNN backbones need 28)
  double student_temp = 0.1;
  double teacher_temp = 0.04;
  double warmup_teacher_temp = 0.04;  // teacher temperature at the start, linear to teacher_temp
  double warmup_fraction = 0.0;       // over this fraction of the run
  double momentum = 0.996;            // teacher EMA momentum, cosine to 1 over the run
  double center_momentum = 0.9;
  int64_t knn_k = 20;
  double knn_temp = 0.07;
  int64_t knn_bank = 10000;           // labelled training images the k-NN evaluation votes with
  std::string knn_features = "backbone";  // backbone (the teacher's) | pixels (the baseline)
  int64_t probe_steps = 300;          // linear probe on the same features and bank: full-batch Adam steps (0: off)
  double probe_lr = 0.05;
};

// The job's dino.* keys.
DinoSpec DinoSpecFromJob(const Job& job);

// The DINO loss: `student` holds V views' outputs stacked [V*B, K], `teacher` the 2 global views'
// [2*B, K] (no gradient flows to it). Mean over the (teacher view i, student view v != i) pairs
// of the batch mean of sum_k -softmax((t_i - center) / teacher_temp)_k log_softmax(s_v /
// student_temp)_k.
at::Tensor DinoLoss(const at::Tensor& student, const at::Tensor& teacher, const at::Tensor& center, int64_t views,
                    double student_temp, double teacher_temp);

// teacher = m teacher + (1 - m) student, tensor by tensor, in place.
void EmaUpdate(const std::vector<at::Tensor>& teacher, const std::vector<at::Tensor>& student, double m);

// The teacher momentum at `progress` in [0, 1]: 1 - (1 - m0) (cos(pi progress) + 1) / 2.
double TeacherMomentum(double m0, double progress);

// center = m center + (1 - m) batch_mean, in place.
void UpdateCenter(at::Tensor& center, const at::Tensor& batch_mean, double m);

// Weighted k-NN (Wu et al. 2018, as DINO evaluates): each query's k most similar bank rows vote
// for their labels with weight exp(similarity / temp); features must be L2-normalized.
// Returns the predicted labels.
at::Tensor WeightedKnn(const at::Tensor& bank, const at::Tensor& bank_labels, const at::Tensor& queries, int64_t k,
                       double temp, int64_t classes);

// A linear probe: multinomial logistic regression on fixed features, standardized by the fitting
// set's mean and std, fitted by full-batch Adam from zero weights (deterministic).
struct LinearProbe {
  at::Tensor mean, std, weight, bias;
  at::Tensor Predict(const at::Tensor& x) const;  // labels [N]
};
LinearProbe FitLinearProbe(const at::Tensor& x, const at::Tensor& labels, int64_t classes, int64_t steps, double lr);

// bank_inputs / bank_labels: the labelled images the k-NN evaluation votes with and the probe fits
// on (at most dino.knn_bank of them); may be empty, then Evaluate needs SetEvaluationBank first.
absl::StatusOr<std::unique_ptr<LearningMode>> MakeDinoMode(const Job& job, const InputInfo& input, at::Device device,
                                                           const at::Tensor& bank_inputs,
                                                           const at::Tensor& bank_labels);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_DINO_H_
