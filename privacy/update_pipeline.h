#ifndef ALLROUND_PRIVACY_UPDATE_PIPELINE_H_
#define ALLROUND_PRIVACY_UPDATE_PIPELINE_H_

// The update pipeline (../shared/DESIGN.md, "Update transform"): the ordered steps a site's update
// passes before it leaves the site (job key `pipeline.site`, e.g. [clip]) and the steps the
// coordinator applies to what arrives before its strategy aggregates (`pipeline.coordinator`).
// Each step is a small class with its own job keys, registered beside its code like strategies
// and modes (common/registry.h, kinds "site transform" and "coordinator transform"); the strategy
// only ever sees the result.
//
// A step works on the update as a delta from the global model the site fetched (the site's new
// weights minus the global ones, floating-point tensors only; integer tensors such as BatchNorm's
// batch counter pass through unchanged), with the example weight beside it.
//
// A step declares what it needs of the rest of the job, and the job is refused when it is read
// (a check registered with RegisterJobCheck) when a combination cannot work: a site step that
// changes the update's form must be undone by its coordinator counterpart, in mirror order; a step
// that needs a sum-only strategy refuses those that need each site's update (median, trimmed mean,
// Krum).
//
// Steps may keep state that must survive a restart (error-feedback residuals): State() and
// LoadState() carry it into the checkpoint of the side that runs the step, never the other side's.
//
// At the coordinator the steps run on each arriving update in a plain round, before the strategy
// (coordinator/round_manager.h); a step that needs each update is refused under secure
// aggregation.
//
// Thread-compatible: one pipeline per site or coordinator, driven by one thread at a time.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/job.h"
#include "common/registry.h"
#include "tensor/named_tensors.h"

namespace allround::privacy {

using tensor::NamedTensors;

enum class Side { kSite, kCoordinator };

// An update as it passes the pipeline.
struct Update {
  NamedTensors delta;   // floating-point tensors: new weights minus the global ones
  double weight = 0.0;  // the example weight (the site's example count)
  int64_t count = 1;    // how many sites' updates this one sums (more than 1 after secure aggregation)
};

// Where a step runs; the seed of any randomness a step draws (stochastic rounding, noise) comes
// from here, so a rerun of the job draws the same.
struct StepContext {
  uint64_t seed = 0;  // the job seed
  int64_t round = 0;
  std::string site;   // the site's name (empty at the coordinator)
};

class UpdateTransform {
 public:
  virtual ~UpdateTransform() = default;
  virtual std::string name() const = 0;
  // Transforms `update` in place. On failure the update is left as it was where the step can
  // promise it (each step says), and the status names the step and the tensor.
  virtual absl::Status Apply(const StepContext& context, Update& update) = 0;
  // State to checkpoint on this side ("pipeline/<step>/..."), empty for stateless steps.
  virtual NamedTensors State() const { return {}; }
  virtual absl::Status LoadState(const NamedTensors& state) { return absl::OkStatus(); }
};

// What a step demands of the rest of the job.
struct TransformTraits {
  // The coordinator step that undoes this site step ("dequantize" for "quantize"); empty when the
  // step keeps the update's form (clipping, noise).
  std::string counterpart;
  // The coordinator may only learn the sum of the updates (secure aggregation): strategies that
  // look at each site's update are refused.
  bool sum_only = false;
  // A coordinator step that works on each site's update (norm_bound): refused under secure
  // aggregation, where the coordinator sees only the sum.
  bool per_update = false;
};

using TransformFactory = std::function<absl::StatusOr<std::unique_ptr<UpdateTransform>>(const Job& job)>;

// Registers a step beside its code; `info.kind` is set from `side`. Returns true, to initialize a
// static. Its job keys (info.keys) are parsed and checked as every component's.
bool RegisterTransform(Side side, ComponentInfo info, TransformTraits traits, TransformFactory factory);

// The steps a job names for `side`, in order.
std::vector<std::string> PipelineSteps(const Job& job, Side side);

// The job's steps for one side, made and run in order.
class UpdatePipeline {
 public:
  // Fails naming the step whose factory refused the job's keys.
  static absl::StatusOr<UpdatePipeline> Make(const Job& job, Side side);

  bool empty() const { return steps_.empty(); }
  // "clip" or "clip, quantize": for logs and for comparing a site's pipeline with the job's.
  std::string Describe() const;

  // Runs every step on `update`; the first failure ends the run and is returned, prefixed with
  // the step's name.
  absl::Status Apply(const StepContext& context, Update& update) const;

  // At a site: `weights` (the site's new model) becomes global + the pipeline's output, so a step
  // that keeps the update's form (clip) needs no change of the protocol. Integer tensors pass
  // through unchanged. Fails on a tensor of `weights` that `global` lacks or shapes differently.
  absl::StatusOr<NamedTensors> ApplyToWeights(const StepContext& context, const NamedTensors& global,
                                              const NamedTensors& weights, double examples) const;

  NamedTensors State() const;
  absl::Status LoadState(const NamedTensors& state);

 private:
  std::vector<std::string> names_;
  std::vector<std::shared_ptr<UpdateTransform>> steps_;
};

}  // namespace allround::privacy

#endif  // ALLROUND_PRIVACY_UPDATE_PIPELINE_H_
