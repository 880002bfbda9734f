// The runtime layer with its test doubles: the in-memory checkpoint store, a whole cluster run
// (data on disk, the round engine, the trainer, the checkpointer) in this process whose store fails
// on purpose, and a federated run of a strategy and a learning mode that exist only in this file,
// known to the system through the registries alone.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <map>
#include <future>
#include <mutex>
#include <thread>

#include "algorithms/aggregation/strategy.h"
#include "algorithms/modes/registry.h"
#include "comm/thread_communicator.h"
#include "coordinator/federated_server.h"
#include "runtime/checkpointer.h"
#include "runtime/cluster_run.h"
#include "runtime/site_runner.h"
#include "storage/memory_store.h"
#include "test_util.h"

namespace allround::runtime {
namespace {

using ::allround::testing::IdxBytes;
using ::allround::testing::ScratchDir;
using ::testing::HasSubstr;
using tensor::NamedTensors;

TEST(MemoryStore, SavesListsPrunesAndFailsTheSaveItWasToldTo) {
  auto state = storage::NewMemoryStoreState();
  auto store = storage::OpenMemoryStore(state);
  storage::FailSave(*state, 2);
  storage::CheckpointInfo info;
  const storage::NamedTensors t = {{"w", torch::arange(6, torch::kFloat)}};
  auto first = store->Save("run", info, t);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, "run/0000000001");
  auto second = store->Save("run", info, t);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("memory store: save 2 failed"));
  EXPECT_EQ(*store->Latest("run"), "run/0000000001");  // the failed save left nothing
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(store->Save("run", info, t).ok());
  EXPECT_EQ(storage::SaveCalls(*state), 5);
  EXPECT_EQ(*store->Latest("run"), "run/0000000004");
  auto pruned = store->Prune("run", {2, 0});
  ASSERT_TRUE(pruned.ok());
  EXPECT_THAT(*pruned, ::testing::ElementsAre("run/0000000001", "run/0000000002"));
  auto loaded = storage::OpenMemoryStore(state, /*read_only=*/true)->Load("run/0000000004");
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE((*loaded)[0].second.equal(t[0].second));
  EXPECT_EQ(storage::OpenMemoryStore(state, true)->Save("run", info, t).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Delete("run/0000000004").code(), absl::StatusCode::kFailedPrecondition);  // the latest
}

StoreOpener MemoryStores(std::shared_ptr<storage::MemoryStoreState> state) {
  return [state](const std::string&, bool read_only) -> absl::StatusOr<std::unique_ptr<storage::CheckpointStore>> {
    return storage::OpenMemoryStore(state, read_only);
  };
}

// 120 training and 40 test images of 8 x 8 whose label is the row that is bright (rows 0-7,
// classes 0-7; 8 and 9 unused), plus noise: learnable in a few epochs.
void WriteDataset(const std::string& dir) {
  torch::manual_seed(3);
  const auto write = [&](const std::string& images, const std::string& labels, uint32_t n) {
    std::vector<uint8_t> pixels(n * 64), y(n);
    const at::Tensor noise = torch::randint(0, 60, {n * 64}, torch::kLong);
    for (uint32_t i = 0; i < n; ++i) {
      y[i] = static_cast<uint8_t>(i % 8);
      for (int p = 0; p < 64; ++p) {
        pixels[i * 64 + p] = static_cast<uint8_t>(noise[i * 64 + p].item<int64_t>() + (p / 8 == y[i] ? 190 : 0));
      }
    }
    testing::WritePlain(dir + "/" + images, IdxBytes({n, 8, 8}, pixels));
    testing::WritePlain(dir + "/" + labels, IdxBytes({n}, y));
  };
  write("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 120);
  write("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 40);
}

Job SmallJob(const ScratchDir& dir) {
  Job job;
  job.name = "fault";
  job.data.dir = dir.path();
  job.model.name = "mlp";
  EXPECT_TRUE(SetJobKey(job, "model.hidden", "16").ok());
  job.train.epochs = 5;
  job.train.batch_size = 16;
  job.train.progress_every_s = 0;
  job.threads = 1;
  job.checkpoint.keep_last = 10;
  job.run_dir = dir / "run";
  return job;
}

// The last checkpoint's tensors of the run `state` holds.
storage::NamedTensors LastCheckpoint(const std::shared_ptr<storage::MemoryStoreState>& state, const Job& job) {
  auto store = storage::OpenMemoryStore(state, true);
  auto latest = store->Latest(job.name);
  EXPECT_TRUE(latest.ok()) << latest.status();
  auto t = store->Load(*latest);
  EXPECT_TRUE(t.ok()) << t.status();
  return *t;
}

// The store fails the 3rd save (after epoch 3): the run ends with the store's error, naming it; the
// 2nd checkpoint is the latest, and --resume auto continues from it to the very state of a run
// that never failed.
TEST(ClusterRun, AFailedSaveEndsTheRunAndTheCheckpointBeforeItResumes) {
  ScratchDir dir;
  WriteDataset(dir.path());
  const Job job = SmallJob(dir);
  auto comm = comm::MakeLocalCommunicator();

  auto whole = storage::NewMemoryStoreState();
  ClusterRunOptions options;
  options.stores = MemoryStores(whole);
  ASSERT_TRUE(RunCluster(job, options, *comm).ok());
  EXPECT_EQ(storage::SaveCalls(*whole), 5);

  auto failing = storage::NewMemoryStoreState();
  storage::FailSave(*failing, 3);
  options.stores = MemoryStores(failing);
  absl::Status s = RunCluster(job, options, *comm);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()),
              ::testing::AllOf(HasSubstr("saving checkpoint of run 'fault' (round 3"), HasSubstr("memory store: save 3 failed")));
  auto latest = storage::OpenMemoryStore(failing, true)->Latest("fault");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(*latest, "fault/0000000002");

  options.resume = "auto";
  ASSERT_TRUE(RunCluster(job, options, *comm).ok());
  const auto resumed = LastCheckpoint(failing, job), uninterrupted = LastCheckpoint(whole, job);
  ASSERT_EQ(resumed.size(), uninterrupted.size());
  int compared = 0;
  for (size_t k = 0; k < resumed.size(); ++k) {
    EXPECT_EQ(resumed[k].first, uninterrupted[k].first);
    if (resumed[k].first == "rng/torch_cpu") continue;  // the generator's state moves between runs of this process
    EXPECT_TRUE(resumed[k].second.equal(uninterrupted[k].second)) << resumed[k].first;
    ++compared;
  }
  EXPECT_GT(compared, 4);
}


// ---- A toy strategy and a toy learning mode, registered here and nowhere else. ----

// The example-weighted mean of the sites' weights plus strategy.toy_shift. It records what it
// returned, so the test can find it in the coordinator's checkpoint.
struct ToyLog {
  std::mutex mu;
  std::vector<size_t> updates_per_round;
  NamedTensors last;
};
ToyLog& Log() {
  static ToyLog* log = new ToyLog;
  return *log;
}

class ShiftedMean : public aggregation::Strategy {
 public:
  explicit ShiftedMean(double shift) : shift_(shift) {}
  std::string name() const override { return "toy_shifted_mean"; }
  absl::StatusOr<NamedTensors> Aggregate(const NamedTensors& global,
                                         const std::vector<aggregation::SiteUpdate>& updates) override {
    double total = 0;
    for (const auto& u : updates) total += static_cast<double>(u.examples);
    NamedTensors out;
    for (size_t k = 0; k < global.size(); ++k) {
      at::Tensor sum = torch::zeros_like(global[k].second);
      for (const auto& u : updates) sum += u.weights[k].second * (static_cast<double>(u.examples) / total);
      out.emplace_back(global[k].first, sum + shift_);
    }
    std::lock_guard<std::mutex> lock(Log().mu);
    Log().updates_per_round.push_back(updates.size());
    Log().last.clear();
    for (const auto& [n, t] : out) Log().last.emplace_back(n, t.clone());
    return out;
  }

 private:
  double shift_;
};

[[maybe_unused]] const bool kToyStrategy = aggregation::RegisterStrategy(
    {"strategy", "toy_shifted_mean", "the weighted mean, shifted (a test's)",
     {NumberKey("strategy.toy_shift", 0.0, "added to every aggregated weight", -1, 1)}},
    [](const Job& job) -> absl::StatusOr<std::unique_ptr<aggregation::Strategy>> {
      return std::make_unique<ShiftedMean>(JobNumber(job, "strategy.toy_shift"));
    });

// Softmax regression on the flattened image, plain SGD at lr x toy.lr_scale.
std::atomic<int64_t> toy_steps{0};

class ToyLinear : public modes::LearningMode {
 public:
  ToyLinear(const modes::InputInfo& in, double lr_scale)
      : w_(torch::zeros({in.channels * in.height * in.width, in.num_classes}, torch::requires_grad())),
        b_(torch::zeros({in.num_classes}, torch::requires_grad())),
        classes_(in.num_classes),
        lr_scale_(lr_scale) {}

  absl::StatusOr<modes::StepResult> TrainStep(const modes::Batch& batch, double lr, modes::GradientSync* sync) override {
    w_.mutable_grad().reset();
    b_.mutable_grad().reset();
    const at::Tensor loss = torch::cross_entropy_loss(Logits(batch.inputs), batch.targets);
    loss.backward();
    if (sync != nullptr) {
      if (auto s = sync->AfterBackward(); !s.ok()) return s;
    }
    {
      torch::NoGradGuard no_grad;
      w_ -= lr * lr_scale_ * w_.grad();
      b_ -= lr * lr_scale_ * b_.grad();
    }
    ++toy_steps;
    return modes::StepResult{loss.item<double>(), batch.inputs.size(0)};
  }

  absl::StatusOr<modes::EvalSums> Evaluate(const at::Tensor& inputs, const at::Tensor& targets, int64_t) override {
    torch::NoGradGuard no_grad;
    const at::Tensor logits = Logits(inputs);
    modes::EvalSums sums;
    sums.confusion = torch::zeros({classes_, classes_}, torch::kLong);
    sums.confusion.view(-1).index_add_(0, targets * classes_ + logits.argmax(1), torch::ones_like(targets));
    sums.loss_sum = torch::cross_entropy_loss(logits, targets).item<double>() * static_cast<double>(inputs.size(0));
    sums.examples = inputs.size(0);
    return sums;
  }

  std::vector<at::Tensor> TrainableParameters() override { return {w_, b_}; }
  std::vector<at::Tensor> ModelState() override { return {w_, b_}; }
  std::vector<at::Tensor> Buffers() override { return {}; }
  int64_t ParameterCount() override { return w_.numel() + b_.numel(); }
  NamedTensors State() override { return {{"model/w", w_}, {"model/b", b_}}; }
  absl::Status LoadState(const NamedTensors& state) override {
    torch::NoGradGuard no_grad;
    return modes::CopyCheckedInto(State(), std::map<std::string, at::Tensor>(state.begin(), state.end()));
  }
  absl::Status SetProximalTerm(double mu, const NamedTensors&) override {
    return mu == 0 ? absl::OkStatus() : absl::UnimplementedError("toy_linear has no proximal term");
  }

 private:
  at::Tensor Logits(const at::Tensor& x) { return x.flatten(1).matmul(w_) + b_; }
  at::Tensor w_, b_;
  int64_t classes_;
  double lr_scale_;
};

[[maybe_unused]] const bool kToyMode = modes::RegisterMode(
    {"mode", "toy_linear", "softmax regression (a test's)",
     {NumberKey("toy.lr_scale", 1.0, "multiplies the learning rate", 0, 10)}},
    modes::ModeNeeds{}, [](const modes::ModeInputs& in) -> absl::StatusOr<std::unique_ptr<modes::LearningMode>> {
      return std::make_unique<ToyLinear>(in.input, JobNumber(in.job, "toy.lr_scale"));
    });

// The job and flags reach the toy components by their registered keys; a coordinator and one
// site (a group of two thread ranks) run two rounds on loopback; the coordinator checkpoints into
// the in-memory store.
TEST(Registries, AToyStrategyAndModeRunTwoFederatedRoundsThroughTheRegistriesAlone) {
  ScratchDir dir;
  WriteDataset(dir.path());
  Job job;
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"name", "toy"}, {"mode", "toy_linear"}, {"toy.lr_scale", "0.5"}, {"strategy.name", "toy_shifted_mean"},
           {"strategy.toy_shift", "0.25"}, {"federated.rounds", "2"}, {"train.batch_size", "16"}, {"threads", "1"},
           {"optimizer.lr", "0.1"}, {"data.dir", dir.path()}, {"run_dir", dir / "run"}}) {
    ASSERT_TRUE(SetJobKey(job, key, value).ok()) << key;
  }
  const int64_t steps_before = toy_steps.load();
  auto state = storage::NewMemoryStoreState();
  coordinator::ServerOptions server;
  server.listen = "127.0.0.1:0";
  server.no_auth = true;
  server.insecure = true;
  server.stores = MemoryStores(state);
  std::promise<int> listening;
  server.on_listening = [&](int port) { listening.set_value(port); };
  absl::Status served;
  std::thread coordinator_thread([&] { served = coordinator::Serve(job, server); });
  std::future<int> port = listening.get_future();
  if (port.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    coordinator_thread.join();
    FAIL() << "the coordinator did not listen: " << served;
  }

  SiteOptions site;
  site.coordinator = absl::StrCat("127.0.0.1:", port.get());
  site.site_name = "toy-site";
  site.insecure = true;
  auto group = comm::MakeThreadGroup(2);
  std::vector<absl::Status> sites(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) ranks.emplace_back([&, r] { sites[r] = RunSites(job, site, group[r].get()); });
  for (auto& t : ranks) t.join();
  coordinator_thread.join();
  ASSERT_TRUE(served.ok()) << served;
  for (const absl::Status& s : sites) EXPECT_TRUE(s.ok()) << s;

  // The toy strategy closed both rounds, each on the one site's update; both ranks trained.
  std::lock_guard<std::mutex> lock(Log().mu);
  EXPECT_THAT(Log().updates_per_round, ::testing::ElementsAre(1, 1));
  const int64_t steps = toy_steps.load() - steps_before;
  EXPECT_GT(steps, 0);
  EXPECT_EQ(steps % 2, 0);  // the two ranks step together
  // The coordinator's last checkpoint holds the toy strategy's last model.
  auto store = storage::OpenMemoryStore(state, true);
  auto latest = store->Latest(Checkpointer::RunId(job, RunKind::kCoordinator));
  ASSERT_TRUE(latest.ok()) << latest.status();
  auto saved = store->Load(*latest);
  ASSERT_TRUE(saved.ok()) << saved.status();
  int found = 0;
  for (const auto& [name, t] : Log().last) {
    for (const auto& [saved_name, s] : *saved) {
      if (saved_name == name) {
        EXPECT_TRUE(s.equal(t)) << name;
        ++found;
      }
    }
  }
  EXPECT_EQ(found, 2);
}

}  // namespace
}  // namespace allround::runtime
