// One side of bench/train_throughput: allround's round executor (sampler, batching, learning mode,
// optimizer) training a model on Fashion-MNIST held in memory. Prints samples_per_s=X.
//
//   train_throughput_allround --model simple_cnn --batch 64 --steps 300 --threads 1

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "algorithms/compute_threads.h"
#include "algorithms/modes/supervised.h"
#include "comm/communicator.h"
#include "comm/reducer.h"
#include "comm/registry.h"
#include "worker/trainer.h"

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
  CLI11_PARSE(app, argc, argv);

  auto context = comm::InitComm(device == "cuda" ? "nccl" : "auto", &argc, &argv);
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
  job.data.test_limit = 1;
  SetComputeThreads(static_cast<int>(threads));
  torch::set_num_interop_threads(1);

  auto data = worker::LoadTrainingData(job);
  if (!data.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(data.status().message()).c_str());
    return 1;
  }
  auto mode = modes::MakeSupervisedMode(job, data->info, comm.device());
  if (!mode.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(mode.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<comm::Reducer> reducer;
  if (comm.size() > 1 || force_reducer) {
    if (!comm::BroadcastFromRoot(comm, (*mode)->ModelState()).ok()) return 1;
    reducer = std::make_unique<comm::Reducer>((*mode)->TrainableParameters(), &comm);
  }
  worker::Trainer trainer(job, *std::move(data), mode->get(), &comm, reducer.get());
  // Round 0 warms up (allocator, kernels); round 1 is timed.
  auto warm = trainer.Execute({0, 0, warmup});
  auto timed = trainer.Execute({1, 1, steps});
  // Each step reads its loss back (item()), so on a GPU the timing covers finished work.
  if (!warm.ok() || !timed.ok()) {
    std::fprintf(stderr, "error: training failed\n");
    return 1;
  }
  if (comm.rank() != 0) return 0;
  std::printf("samples_per_s=%.1f steps=%lld seconds=%.3f final_loss_mean=%.4f\n",
              static_cast<double>(timed->examples) / timed->seconds, static_cast<long long>(timed->steps),
              timed->seconds, timed->mean_loss);
  return 0;
}
