// The coordinator's unmasking alone (bench/secagg's unmask_100_s and unmask_500_s): a real
// SecAgg+ round in this process with N sampled sites and a model of L words, timed from the
// moment every masked input is in until the sum comes out (CloseMaskedInput, the unmask
// responses arriving, Finish), with no training and no network. The sites run the real protocol
// (X25519 keys, Shamir shares, authenticated encryption) on their own; only their masked inputs
// are stand-ins: uniform words of the model's length, which cost the server exactly what real
// ones do (it adds them and removes masks whatever they hold; tests/secagg_protocol_test.cc checks
// the sum), and which keep the set-up from spending N * (k + 1) mask expansions per repeat.
// `--dropouts D` drops D sites after their shares (spread evenly around the ring), so their
// pairwise masks are rebuilt too.
// Prints one line per repeat and the median as unmask_s=X (and sum_inputs_s=X: adding the masked
// inputs as they arrive, which the coordinator does during the round).
//   secagg_unmask_bench --sites 500 [--model fedavg_cnn | --length L] [--dropouts 0] [--threads 2] [--repeats 3]

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "algorithms/modes/supervised.h"
#include "common/job.h"
#include "privacy/secagg_quantize.h"
#include "privacy/secagg_server.h"
#include "privacy/secagg_site.h"
#include "privacy/secure_aggregation.h"

using namespace allround;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point since) { return std::chrono::duration<double>(Clock::now() - since).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "secagg_unmask_bench: %s\n", s.ToString().c_str());
  return 1;
}

struct Timing {
  double sum_inputs_s = 0;
  double unmask_s = 0;
  size_t counted = 0;
};

// One round, round index `round`. The words stand in for masked inputs (see the header).
absl::StatusOr<Timing> OneRound(const privacy::SecAggConfig& config, int dropouts, int threads, uint64_t seed) {
  auto server = privacy::SecAggServer::Create(config);
  if (!server.ok()) return server.status();
  privacy::SecAggConfig site_config = config;
  site_config.vector_length = 16;  // the sites' own masking is not what is timed
  std::map<uint32_t, std::unique_ptr<privacy::SecAggSite>> sites;
  for (uint32_t id : config.sampled_ids) {
    auto site = privacy::SecAggSite::Create(site_config, id);
    if (!site.ok()) return site.status();
    auto msg = (*site)->AdvertiseKeys();
    if (!msg.ok()) return msg.status();
    if (auto s = (*server)->AddAdvertisement(*msg); !s.ok()) return s;
    sites[id] = *std::move(site);
  }
  auto keys = (*server)->CloseAdvertise();
  if (!keys.ok()) return keys.status();
  for (const auto& m : *keys) {
    auto msg = sites.at(m.recipient)->ShareKeys(m);
    if (!msg.ok()) return msg.status();
    if (auto s = (*server)->AddShareKeys(*msg); !s.ok()) return s;
  }
  auto relayed = (*server)->CloseShareKeys();
  if (!relayed.ok()) return relayed.status();
  // `dropouts` sites spread evenly around the graph's ring never send their masked input (the
  // ring is a random permutation, so this is where random dropouts fall on average; a block of
  // adjacent ones would take more than k + 1 - t holders from the sites beside it).
  std::set<uint32_t> gone;
  const auto& ring = (*server)->graph().ring();
  for (int i = 0; i < dropouts && i < static_cast<int>(ring.size()); ++i) {
    gone.insert(ring[static_cast<size_t>(i) * ring.size() / static_cast<size_t>(dropouts)]);
  }
  Timing timing;
  privacy::MaskedInputMsg input{config.round, 0, std::vector<uint32_t>(config.vector_length)};
  uint64_t state = seed | 1;
  const std::vector<uint32_t> zeros(site_config.vector_length, 0);
  for (const auto& m : *relayed) {
    if (gone.count(m.recipient)) continue;
    auto own = sites.at(m.recipient)->MaskInput(m, zeros);  // moves the site on to the unmask stage
    if (!own.ok()) return own.status();
    for (uint32_t& w : input.masked) {  // xorshift64*: fast uniform words
      state ^= state >> 12;
      state ^= state << 25;
      state ^= state >> 27;
      w = static_cast<uint32_t>((state * 0x2545F4914F6CDD1DULL) >> 32);
    }
    input.site_id = m.recipient;
    const auto start = Clock::now();
    if (auto s = (*server)->AddMaskedInput(input); !s.ok()) return s;
    timing.sum_inputs_s += Seconds(start);
  }
  const auto start = Clock::now();
  auto requests = (*server)->CloseMaskedInput();
  if (!requests.ok()) return requests.status();
  for (const auto& r : *requests) {
    auto msg = sites.at(r.recipient)->Unmask(r);
    if (!msg.ok()) return msg.status();
    if (auto s = (*server)->AddUnmaskResponse(*msg); !s.ok()) return s;
  }
  auto result = (*server)->Finish(threads);
  if (!result.ok()) return result.status();
  timing.unmask_s = Seconds(start);
  timing.counted = result->counted.size();
  return timing;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"secagg_unmask_bench: the coordinator's SecAgg+ unmasking without training"};
  int sites = 500, dropouts = 0, threads = 2, repeats = 3;
  size_t length = 0;
  std::string model_name = "fedavg_cnn";
  app.add_option("--sites", sites, "sampled sites")->check(CLI::Range(2, 100000));
  app.add_option("--model", model_name, "the model whose parameters (and the weight word) are masked");
  app.add_option("--length", length, "words per masked input instead of a model's");
  app.add_option("--dropouts", dropouts, "sites that drop after sending their shares")->check(CLI::Range(0, 100000));
  app.add_option("--threads", threads, "the coordinator's threads for removing masks")->check(CLI::Range(1, 1024));
  app.add_option("--repeats", repeats)->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);

  if (length == 0) {
    Job job;
    job.model.name = model_name;
    auto mode = modes::MakeSupervisedMode(job, modes::InputInfo{});
    if (!mode.ok()) return Fail(mode.status());
    length = privacy::SecureVectorLength(modes::ModelTensors((*mode)->State()));
  }
  privacy::SecureAggregationSpec spec;
  spec.enabled = true;
  const privacy::GraphShape shape = privacy::SecAggShapeFor(spec, sites);
  privacy::SecAggConfig config;
  for (int i = 0; i < sites; ++i) config.sampled_ids.push_back(static_cast<uint32_t>(i + 1));
  config.degree = shape.degree;
  config.threshold = shape.threshold;
  config.graph_seed = 1;
  config.vector_length = length;
  std::printf("sites=%d degree=%d threshold=%d length=%zu dropouts=%d threads=%d\n", sites, shape.degree,
              shape.threshold, length, dropouts, threads);
  std::vector<double> unmask, sums;
  for (int r = 0; r < repeats; ++r) {
    config.round = static_cast<uint64_t>(r);
    auto t = OneRound(config, dropouts, threads, 0x9E3779B97F4A7C15ULL + r);
    if (!t.ok()) return Fail(t.status());
    std::printf("repeat %d: counted %zu sites, unmask %.3f s, adding masked inputs %.3f s\n", r, t->counted,
                t->unmask_s, t->sum_inputs_s);
    std::fflush(stdout);
    unmask.push_back(t->unmask_s);
    sums.push_back(t->sum_inputs_s);
  }
  std::printf("unmask_s=%.3f\nsum_inputs_s=%.3f\n", Median(unmask), Median(sums));
  return 0;
}
