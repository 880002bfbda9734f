#ifndef ALLROUND_ALGORITHMS_MODES_MLM_H_
#define ALLROUND_ALGORITHMS_MODES_MLM_H_

// The masked-LM mode (BERT, Devlin et al. 2019) on rows of token ids [B, T] (data.name text): token
// and learned position embeddings, the pre-norm transformer encoder of algorithms/models
// (mlm.layers, mlm.hidden, mlm.heads, GELU, layer norm; padding masked out of attention), and a
// head Linear-GELU-LayerNorm-Linear to the vocabulary. mlm.mask_prob of the real tokens are
// selected (at least one per batch); of those 80% become [MASK], 10% a random token and 10% stay;
// the loss is the cross-entropy on the selected tokens only. Masks come from the step's seed.
//
// Evaluation on held-out rows, masked from a fixed seed: test_loss is the mean cross-entropy per
// selected token (so perplexity = exp(test_loss)), "mlm_accuracy" the share predicted right, and,
// given the training rows (SetEvaluationBank), "unigram_loss": the same tokens under the
// add-one-smoothed unigram model of the training tokens. "mlm_ppl" and "unigram_ppl" are their
// exponentials (on one rank; across ranks exponentiate the averaged losses).

#include <ATen/core/Tensor.h>

#include <memory>

#include "absl/status/statusor.h"
#include "algorithms/modes/learning_mode.h"
#include "algorithms/modes/supervised.h"

namespace allround::modes {

// Token ids the mode treats specially; the BPE tokenizer (worker/data) uses the same.
constexpr int64_t kTokenPad = 0, kTokenMask = 1, kTokenCls = 2, kTokenSep = 3, kFirstRealToken = 4;

struct MaskedTokens {
  at::Tensor inputs;  // the ids with the selected ones replaced
  at::Tensor labels;  // the original id where selected, -100 elsewhere
};
MaskedTokens MaskTokens(const at::Tensor& ids, int64_t vocab, double prob, uint64_t seed);

// The mode's keys (mlm.*), registered in mlm.cc with these defaults.
struct MlmSpec {
  int64_t layers = 2;
  int64_t hidden = 128;              // a multiple of heads
  int64_t heads = 2;
  double mask_prob = 0.15;           // tokens selected; of them 80% [MASK], 10% random, 10% unchanged
};

// The job's mlm.* keys.
MlmSpec MlmSpecFromJob(const Job& job);

// input.height is the sequence length, input.num_classes the vocabulary size.
absl::StatusOr<std::unique_ptr<LearningMode>> MakeMlmMode(const Job& job, const InputInfo& input, at::Device device,
                                                          const at::Tensor& train_rows);

}  // namespace allround::modes

#endif  // ALLROUND_ALGORITHMS_MODES_MLM_H_
