#ifndef ALLROUND_ALGORITHMS_MODES_GAN_H_
#define ALLROUND_ALGORITHMS_MODES_GAN_H_

// The GAN mode: DCGAN (Radford et al. 2016) for 28x28 images. The generator maps gan.noise_dim
// standard-normal numbers through a linear layer to 2w x 7 x 7, then two stride-2 transposed
// convolutions (batch norm and ReLU between, tanh at the end); the discriminator has two stride-2
// convolutions with LeakyReLU 0.2 (batch norm on the second) and a linear layer to one logit
// (w = gan.width). Weights start as DCGAN's (N(0, 0.02), batch-norm scales N(1, 0.02), biases 0;
// gan.init torch keeps LibTorch's defaults). Two optimizers of the job's kind (Adam lr 2e-4,
// beta1 0.5 in the shipped job).
// Each step updates D on a real batch and a generated one (real 1, fake 0), then G with the
// non-saturating loss -log D(G(z)): two backward passes, each reduced by the Reducer under mpirun.
// The noise comes from the step's seed (or Batch::noise). gan.batch_norm false drops batch norm, so
// a step under N ranks equals one process's step on their batches together (tested).
//
// Evaluation: the Frechet distance between the penultimate features of a Fashion-MNIST classifier
// (the FedAvg CNN with a gan.classifier_features-unit hidden layer, 128 by default, trained by the
// mode itself, seeded, SGD lr 0.02 momentum 0.9, for gan.classifier_epochs on the labelled bank it
// is given: the job's training set) of the test images and of gan.eval_samples generated ones
// (fixed noise), reported as "fd" and as test_loss. With gan.ema > 0 the generator evaluated (and
// drawn in the grids) is an exponential moving average of the trained one's weights, that decay
// per step (Yazici et al. 2019), with batch-norm statistics recomputed for those weights over
// fixed noise, and "fd_raw" is the trained generator's own distance; gan.ema 0 (the default)
// evaluates the generator itself.
// Then "min_class_frac", the smallest share of any class among the generated images under that
// classifier (mode collapse shows as a class near 0), and "classifier_accuracy" on the test images.
// WriteImages writes samples-epoch<N>.png (10 x 10). Checkpoints hold "model/generator...",
// "model/discriminator...", with gan.ema "model/generator_ema...", and both optimizers' state (a
// federated round averages all of these networks); the evaluation classifier is retrained
// identically when needed.

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

// The mode's keys (gan.*), registered in gan.cc with these defaults: DCGAN for 28x28 images.
struct GanSpec {
  int64_t noise_dim = 100;
  int64_t width = 64;                // discriminator channels w, 2w; generator 2w, w
  int64_t eval_samples = 10000;      // generated images the Frechet distance compares
  int64_t classifier_epochs = 2;     // the evaluation classifier's training on the labelled bank
  int64_t classifier_features = 128; // its penultimate width: the features the distance compares
  double ema = 0;                    // evaluate (and sample) an exponential moving average of the
                                     // generator's weights with this decay per step (e.g. 0.999);
                                     // 0: the generator itself. In 10 epochs of the shipped job (from
                                     // LibTorch's initial weights) the average did not beat it
                                     // (Frechet distance 8.09 vs 7.54).
  bool batch_norm = true;            // in both networks (DCGAN's); off, a step under N ranks equals
                                     // one process's step on the N batches together
  std::string init = "dcgan";        // initial weights: "dcgan" (Radford et al.: every convolution and
                                     // linear weight N(0, 0.02), batch-norm scales N(1, 0.02), biases
                                     // 0), or "torch" (LibTorch's defaults)
};

// The job's gan.* keys.
GanSpec GanSpecFromJob(const Job& job);

absl::StatusOr<std::unique_ptr<LearningMode>> MakeGanMode(const Job& job, const InputInfo& input, at::Device device,
                                                          const at::Tensor& bank_inputs, const at::Tensor& bank_labels);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_GAN_H_
