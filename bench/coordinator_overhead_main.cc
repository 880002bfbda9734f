// The coordinator's own time per round: the real RoundManager and gRPC service on loopback, with
// N sites that do everything a site does except train (join, long-poll, fetch the model as a
// chunk stream, submit it back as an update). A round's time is then sampling, sending,
// receiving, validating and aggregating. The sites run in this process on their own channels,
// so the figure also carries their client-side cost: an upper bound for the coordinator alone.
// Prints, per round, the wall time from the first task handed out to the new model, and the
// median as s_per_round=X; aggregate_s=X is the strategy's share.
//   coordinator_overhead_allround --sites 100 --model fedavg_cnn --rounds 5 [--threads 2] [--timeout 600]
// Every call has a deadline and the run a timeout: a site whose call fails says which call and
// why, and the run exits 1 instead of waiting.

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
#include "coordinator/limits.h"
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

// Every call has a deadline, so a call that never completes fails the run instead of hanging it.
void SetDeadline(grpc::ClientContext* ctx, int seconds) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// A site without training: returns the global model it fetched as its update, chunk for chunk. Stops when the
// coordinator says STOP or *stop is set; a failed call sets *failed and says which and why.
void EchoSite(const std::string& address, int index, const std::atomic<bool>* stop, std::atomic<bool>* failed) {
  const auto fail = [&](const char* call, const grpc::Status& s) {
    std::fprintf(stderr, "site %d: %s failed: code %d: %s\n", index, call, static_cast<int>(s.error_code()),
                 s.error_message().c_str());
    *failed = true;
  };
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = v1::Coordinator::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  v1::JoinReply joined;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 60);
    ctx.set_wait_for_ready(true);  // the server is up, but 100 channels connect at once
    v1::JoinRequest req;
    req.set_site_name("echo-" + std::to_string(index));
    req.set_examples(600);
    req.set_protocol_version(allround::comm::kProtocolVersion);
    if (auto s = stub->Join(&ctx, req, &joined); !s.ok()) return fail("Join", s);
  }
  while (!*stop) {
    v1::TaskReply task;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 60);  // the long poll holds a WAIT for at most 10 s
    v1::TaskRequest req;
    req.set_site_id(joined.site_id());
    if (auto s = stub->GetTask(&ctx, req, &task); !s.ok()) return fail("GetTask", s);
    if (task.kind() == v1::TaskReply::STOP) return;
    if (task.kind() != v1::TaskReply::TRAIN) continue;
    grpc::ClientContext fetch_ctx;
    SetDeadline(&fetch_ctx, 120);
    v1::FetchRequest fetch;
    fetch.set_site_id(joined.site_id());
    fetch.set_model_version(task.model_version());
    auto reader = stub->FetchModel(&fetch_ctx, fetch);
    // The chunks come back as they came: the coordinator decodes and checks them as it does any
    // update, and the site spends no time decoding and re-encoding what is not coordinator work.
    std::vector<v1::TensorChunk> chunks;
    for (v1::TensorChunk chunk; reader->Read(&chunk);) chunks.push_back(std::move(chunk));
    if (auto s = reader->Finish(); !s.ok()) {
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) continue;  // the round moved on
      return fail("FetchModel", s);
    }
    grpc::ClientContext submit_ctx;
    SetDeadline(&submit_ctx, 120);
    v1::SubmitReply reply;
    auto writer = stub->SubmitUpdate(&submit_ctx, &reply);
    for (size_t k = 0; k < chunks.size(); ++k) {
      v1::UpdateChunk msg;
      if (k == 0) {
        msg.set_site_id(joined.site_id());
        msg.set_round(task.round());
        msg.set_examples(600);
      }
      *msg.mutable_chunk() = std::move(chunks[k]);
      if (!writer->Write(msg)) break;
    }
    writer->WritesDone();
    if (auto s = writer->Finish(); !s.ok()) return fail("SubmitUpdate", s);  // an echo is never refused
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"coordinator_overhead_allround: the coordinator's time per round without training"};
  int sites = 100, rounds = 5, threads = 2;
  double timeout_s = 600;
  std::string model_name = "fedavg_cnn";
  app.add_option("--sites", sites);
  app.add_option("--rounds", rounds);
  app.add_option("--model", model_name);
  app.add_option("--threads", threads);
  app.add_option("--timeout", timeout_s, "seconds before the run is given up as failed");
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
  // The job's limits, as allround-coordinator sets them, except that every site may stream at
  // once: this measures a round's own cost, not the wait for a stream slot.
  o.limits = coordinator::MakeLimits(job.federated, initial);
  o.limits.max_streams = std::max<int64_t>(o.limits.max_streams, sites);
  coordinator::RoundManager manager(o, initial, *aggregation::MakeStrategy({"fedavg"}));
  coordinator::ServiceOptions service_options;
  service_options.limits = o.limits;
  coordinator::CoordinatorService service(&manager, service_options);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(o.limits.max_message_bytes);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  const std::string address = "127.0.0.1:" + std::to_string(port);

  std::atomic<bool> stop{false}, failed{false};
  std::vector<std::thread> clients;
  for (int i = 0; i < sites; ++i) clients.emplace_back(EchoSite, address, i, &stop, &failed);
  const auto give_up = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  // Round k runs from the moment round k-1 closed (the next round opens at once) to its own close.
  std::vector<double> per_round, aggregate;
  int64_t seen = 0;
  Clock::time_point open;
  while (!manager.finished() && !failed) {
    if (Clock::now() > give_up) {
      std::fprintf(stderr, "rounds not done after %.0f s (round %lld open)\n", timeout_s,
                   static_cast<long long>(seen));
      failed = true;
      break;
    }
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
  stop = true;  // sites still polling (after a failure) stop at their next call
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
