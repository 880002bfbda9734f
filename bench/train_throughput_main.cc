// One side of bench/train_throughput: allround's round executor (sampler, batching, learning mode,
// optimizer) training a model on Fashion-MNIST held in memory. Prints samples_per_s=X.
//
//   train_throughput_allround --model simple_cnn --batch 64 --steps 300 --threads 1
//
// --ab-blocks K (a world of one) measures the Reducer's own cost: K pairs of --steps blocks in
// this one process, one block without the Reducer and one with it (hooks registered for that
// block only), the order flipped every pair. Separate processes differ by +-10% in speed on a
// shared machine, far more than the cost measured; within one process the pairs see the same
// caches and clock. Prints the median over pairs of the per-pair overhead.

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "algorithms/compute_threads.h"
#include "algorithms/modes/supervised.h"
#include "comm/communicator.h"
#include "comm/reducer.h"
#include "comm/registry.h"
#include "common/timeline.h"
#include "runtime/trainer.h"

namespace allround {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Samples/s of `steps` steps of epoch `epoch`, with the Reducer when `reducer` is set. The
// Reducer's hooks exist only while it does, so the plain blocks pay nothing for it.
absl::StatusOr<double> Block(const Job& job, const data::TrainingData& data, modes::LearningMode* mode,
                             comm::Communicator* comm, bool reducer, int64_t epoch, int64_t steps) {
  std::unique_ptr<comm::Reducer> r;
  if (reducer) r = std::make_unique<comm::Reducer>(mode->TrainableParameters(), comm);
  runtime::Trainer trainer(job, data, mode, comm, r.get());
  auto result = trainer.Execute({epoch, epoch, steps});
  if (!result.ok()) return result.status();
  return static_cast<double>(result->examples) / result->seconds;
}

int AbReducer(const Job& job, const data::TrainingData& data, modes::LearningMode* mode, comm::Communicator* comm,
              int64_t blocks, int64_t warmup, int64_t steps) {
  if (!Block(job, data, mode, comm, false, 0, warmup).ok() || !Block(job, data, mode, comm, true, 0, warmup).ok()) {
    std::fprintf(stderr, "error: training failed\n");
    return 1;
  }
  std::vector<double> plain, with, overhead;
  for (int64_t b = 0; b < blocks; ++b) {
    double rate[2];
    for (int k = 0; k < 2; ++k) {
      const bool reducer = (k + b) % 2 == 1;  // plain first in even pairs, the Reducer first in odd
      auto r = Block(job, data, mode, comm, reducer, 1 + b, steps);
      if (!r.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(r.status().message()).c_str());
        return 1;
      }
      rate[reducer ? 1 : 0] = *r;
    }
    plain.push_back(rate[0]);
    with.push_back(rate[1]);
    overhead.push_back(100 * (rate[0] - rate[1]) / rate[0]);
  }
  std::printf("plain_samples_per_s=%.1f reducer_samples_per_s=%.1f overhead_pct=%.2f min=%.2f max=%.2f pairs=%lld\n",
              Median(plain), Median(with), Median(overhead), *std::min_element(overhead.begin(), overhead.end()),
              *std::max_element(overhead.begin(), overhead.end()), static_cast<long long>(blocks));
  return 0;
}

}  // namespace
}  // namespace allround

int main(int argc, char** argv) {
  using namespace allround;
  CLI::App app{"allround side of bench/train_throughput"};
  std::string model = "simple_cnn", optimizer = "sgd", data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t batch = 64, steps = 300, warmup = 30, threads = 1;
  app.add_option("--model", model);
  app.add_option("--optimizer", optimizer);
  app.add_option("--batch", batch);
  app.add_option("--steps", steps, "timed steps");
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_option("--threads", threads);
  app.add_option("--data", data_dir);
  std::string device = "cpu";
  app.add_option("--device", device, "cpu or cuda");
  bool force_reducer = false;
  app.add_flag("--reducer", force_reducer, "use the Reducer even in a world of one (measures its overhead)");
  std::string timeline_path;
  app.add_option("--timeline", timeline_path, "record the step timeline (common/timeline.h) and write it here");
  int64_t ab_blocks = 0;
  app.add_option("--ab-blocks", ab_blocks,
                 "a world of one: K pairs of --steps blocks without and with the Reducer, in this process; "
                 "prints the Reducer's overhead");
  CLI11_PARSE(app, argc, argv);

  auto context = comm::InitComm("auto", device, &argc, &argv);
  if (!context.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(context.status().message()).c_str());
    return 1;
  }
  comm::Communicator& comm = (*context)->comm();

  Job job;
  job.model.name = model;
  job.optimizer.name = optimizer;
  job.optimizer.lr = optimizer == "sgd" ? 0.01 : 0.001;
  job.schedule.name = "constant";
  job.train.batch_size = batch;
  job.train.progress_every_s = 0;
  job.data.dir = data_dir;
  // One epoch holds every step; under mpirun each rank trains on its own shard of it.
  job.data.train_limit = batch * (steps + warmup) * comm.size();
  if (ab_blocks > 0 && comm.size() > 1) {
    std::fprintf(stderr, "error: --ab-blocks measures a world of one; run it without mpirun\n");
    return 2;
  }
  job.data.test_limit = 1;
  SetComputeThreads(static_cast<int>(threads));
  torch::set_num_interop_threads(1);

  auto data = data::LoadTrainingData(job);
  if (!data.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(data.status().message()).c_str());
    return 1;
  }
  auto mode = modes::MakeSupervisedMode(job, data->info, comm.device());
  if (!mode.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(mode.status().message()).c_str());
    return 1;
  }
  if (ab_blocks > 0) return AbReducer(job, *data, mode->get(), &comm, ab_blocks, warmup, steps);
  std::unique_ptr<comm::Reducer> reducer;
  if (comm.size() > 1 || force_reducer) {
    if (!comm::BroadcastFromRoot(comm, (*mode)->ModelState()).ok()) return 1;
    reducer = std::make_unique<comm::Reducer>((*mode)->TrainableParameters(), &comm);
  }
  runtime::Trainer trainer(job, *std::move(data), mode->get(), &comm, reducer.get());
  // Recording from the warm-up on, as a run with --timeline does; written after the timing.
  timeline::FileSession timeline(timeline_path, comm.rank(), absl::StrCat("rank ", comm.rank()));
  // Round 0 warms up (allocator, kernels); round 1 is timed.
  auto warm = trainer.Execute({0, 0, warmup});
  auto timed = trainer.Execute({1, 1, steps});
  // Each step reads its loss back (item()), so on a GPU the timing covers finished work.
  if (!warm.ok() || !timed.ok()) {
    std::fprintf(stderr, "error: training failed\n");
    return 1;
  }
  if (auto s = timeline.Finish(); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if (comm.rank() != 0) return 0;
  std::printf("samples_per_s=%.1f steps=%lld seconds=%.3f final_loss_mean=%.4f\n",
              static_cast<double>(timed->examples) / timed->seconds, static_cast<long long>(timed->steps),
              timed->seconds, timed->mean_loss);
  return 0;
}
