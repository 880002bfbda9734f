// The coordinator's own time per round: the real RoundManager and gRPC service on loopback, with
// N sites that do everything a site does except train (join, long-poll, fetch the model as a
// chunk stream, submit it back as an update). A round's time is then sampling, sending,
// receiving, validating and aggregating. The sites run in this process on their own channels,
// so the figure also carries their client-side cost: an upper bound for the coordinator alone.
// Prints, per round, the wall time from the first task handed out to the new model, and the
// median as s_per_round=X; aggregate_s=X is the strategy's share.
//   coordinator_overhead_allround --sites 100 --model fedavg_cnn --rounds 5 [--threads 2]

#include <grpcpp/grpcpp.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "algorithms/compute_threads.h"
#include "algorithms/modes/supervised.h"
#include "comm/proto/federated.grpc.pb.h"
#include "comm/wire.h"
#include "coordinator/round_manager.h"
#include "coordinator/service.h"

namespace v1 = allround::v1;
using namespace allround;
using Clock = std::chrono::steady_clock;

namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// A site without training: returns the global model it fetched as its update.
void EchoSite(const std::string& address, int index, std::atomic<bool>* failed) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = v1::Coordinator::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  v1::JoinReply joined;
  {
    grpc::ClientContext ctx;
    v1::JoinRequest req;
    req.set_site_name("echo-" + std::to_string(index));
    req.set_examples(600);
    req.set_protocol_version(1);
    if (!stub->Join(&ctx, req, &joined).ok()) {
      *failed = true;
      return;
    }
  }
  for (;;) {
    v1::TaskReply task;
    grpc::ClientContext ctx;
    v1::TaskRequest req;
    req.set_site_id(joined.site_id());
    if (!stub->GetTask(&ctx, req, &task).ok()) {
      *failed = true;
      return;
    }
    if (task.kind() == v1::TaskReply::STOP) return;
    if (task.kind() != v1::TaskReply::TRAIN) continue;
    grpc::ClientContext fetch_ctx;
    v1::FetchRequest fetch;
    fetch.set_site_id(joined.site_id());
    fetch.set_model_version(task.model_version());
    auto reader = stub->FetchModel(&fetch_ctx, fetch);
    comm::TensorAssembler assembler(uint64_t{1} << 34);
    v1::TensorChunk chunk;
    while (reader->Read(&chunk)) (void)assembler.Add(chunk);
    if (!reader->Finish().ok()) continue;  // the round moved on
    auto model = assembler.Finish();
    if (!model.ok()) continue;
    grpc::ClientContext submit_ctx;
    v1::SubmitReply reply;
    auto writer = stub->SubmitUpdate(&submit_ctx, &reply);
    bool first = true;
    for (auto& c : comm::EncodeTensors(*model)) {
      v1::UpdateChunk msg;
      if (first) {
        msg.set_site_id(joined.site_id());
        msg.set_round(task.round());
        msg.set_examples(600);
        first = false;
      }
      *msg.mutable_chunk() = std::move(c);
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    (void)writer->Finish();
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"coordinator_overhead_allround: the coordinator's time per round without training"};
  int sites = 100, rounds = 5, threads = 2;
  std::string model_name = "fedavg_cnn";
  app.add_option("--sites", sites);
  app.add_option("--rounds", rounds);
  app.add_option("--model", model_name);
  app.add_option("--threads", threads);
  CLI11_PARSE(app, argc, argv);
  SetComputeThreads(threads);

  Job job;
  job.model.name = model_name;
  auto mode = modes::MakeSupervisedMode(job, modes::InputInfo{});
  if (!mode.ok()) {
    std::fprintf(stderr, "%s\n", std::string(mode.status().message()).c_str());
    return 1;
  }
  coordinator::NamedTensors initial = modes::ModelTensors((*mode)->State());
  for (auto& [name, t] : initial) t = t.clone();
  coordinator::RoundManagerOptions o;
  o.rounds = rounds;
  o.min_sites = sites;
  o.min_available = sites;
  coordinator::RoundManager manager(o, initial, *aggregation::MakeStrategy({"fedavg"}));
  coordinator::CoordinatorService service(&manager, {});
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  const std::string address = "127.0.0.1:" + std::to_string(port);

  std::atomic<bool> failed{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < sites; ++i) clients.emplace_back(EchoSite, address, i, &failed);
  // Round k runs from the moment round k-1 closed (the next round opens at once) to its own close.
  std::vector<double> per_round, aggregate;
  int64_t seen = 0;
  Clock::time_point open;
  while (!manager.finished() && !failed) {
    manager.Tick(Clock::now());
    const int64_t v = manager.model_version();
    if (v > seen) {
      const auto now = Clock::now();
      if (seen > 0) per_round.push_back(std::chrono::duration<double>(now - open).count());
      open = now;
      seen = v;
      for (const auto& closed : manager.TakeClosedRounds()) aggregate.push_back(closed.record.aggregate_s);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto& t : clients) t.join();
  server->Shutdown();
  if (failed) {
    std::fprintf(stderr, "a site failed\n");
    return 1;
  }
  for (size_t k = 0; k < per_round.size(); ++k) std::printf("round %zu: %.3f s\n", k + 2, per_round[k]);
  std::printf("sites=%d parameters=%lld\n", sites, static_cast<long long>((*mode)->ParameterCount()));
  std::printf("s_per_round=%.3f\n", Median(per_round));
  std::printf("aggregate_s=%.3f\n", Median(aggregate));
  return 0;
}
