// allround-ckpt: lists, shows, verifies, exports, prunes, compares and repairs checkpoints in a store.

#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cli.h"
#include "common/log.h"
#include "storage/checkpoint_store.h"
#include "storage/safetensors.h"

namespace allround::storage {
namespace {

int Fail(const absl::Status& s) {
  log::Error("{}", s.message());
  return 1;
}

std::string Time(int64_t ms) {
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
  return buf;
}

std::string Size(uint64_t b) {
  if (b >= (1u << 30)) return absl::StrFormat("%.2f GiB", b / double(1 << 30));
  if (b >= (1u << 20)) return absl::StrFormat("%.2f MiB", b / double(1 << 20));
  return absl::StrFormat("%.1f KiB", b / 1024.0);
}

absl::StatusOr<std::unique_ptr<CheckpointStore>> OpenRead(const std::string& db) {
  StoreOptions o;
  o.read_only = true;
  return OpenCheckpointStore(db, o);
}

int List(const std::string& db) {
  auto store = OpenRead(db);
  if (!store.ok()) return Fail(store.status());
  auto list = (*store)->List();
  if (!list.ok()) return Fail(list.status());
  std::printf("%-28s %6s %9s %-19s %11s  %s\n", "id", "round", "step", "created (UTC)", "size", "metrics");
  for (const auto& r : *list) {
    std::vector<std::string> m;
    for (const auto& [k, v] : r.info.metrics) m.push_back(absl::StrFormat("%s=%.4f", k, v));
    std::printf("%-28s %6lld %9lld %-19s %11s  %s\n", r.id.c_str(), static_cast<long long>(r.info.round),
                static_cast<long long>(r.info.step), Time(r.created_unix_ms).c_str(), Size(r.total_bytes).c_str(),
                absl::StrJoin(m, " ").c_str());
  }
  return 0;
}

int Show(const std::string& db, const std::string& id) {
  auto store = OpenRead(db);
  if (!store.ok()) return Fail(store.status());
  auto r = (*store)->Get(id);
  if (!r.ok()) return Fail(r.status());
  std::printf("id: %s\nrun: %s\nsequence: %llu\nround: %lld\nstep: %lld\nepoch: %lld\nstep_in_epoch: %lld\n"
              "mode: %s\njob_hash: %s\ncreated: %s UTC\nsize: %s\n",
              r->id.c_str(), r->run_id.c_str(), static_cast<unsigned long long>(r->sequence),
              static_cast<long long>(r->info.round), static_cast<long long>(r->info.step),
              static_cast<long long>(r->info.epoch), static_cast<long long>(r->info.step_in_epoch), r->info.mode.c_str(),
              r->info.job_hash.c_str(), Time(r->created_unix_ms).c_str(), Size(r->total_bytes).c_str());
  for (const auto& [k, v] : r->versions) std::printf("version %s: %s\n", k.c_str(), v.c_str());
  for (const auto& [k, v] : r->info.metrics) std::printf("metric %s: %.6g\n", k.c_str(), v);
  // A differentially private run's spend so far (the accountant's state is the privacy/rdp tensor).
  const auto eps = r->info.metrics.find("epsilon"), delta = r->info.metrics.find("delta");
  if (eps != r->info.metrics.end() && delta != r->info.metrics.end()) {
    // DP-SGD counts steps; the coordinator's site-level DP counts rounds (its checkpoints' step is 0).
    const bool rounds = r->info.step == 0 && r->info.round > 0;
    std::printf("privacy: epsilon %.6g at delta %.3g after %lld %s\n", eps->second, delta->second,
                static_cast<long long>(rounds ? r->info.round : r->info.step), rounds ? "rounds" : "steps");
  }
  std::printf("tensors (%zu):\n", r->tensors.size());
  for (const auto& t : r->tensors) {
    std::printf("  %-48s %-8s [%s] %s, %u chunk(s), crc32c %08x\n", t.name.c_str(), t.dtype.c_str(),
                absl::StrJoin(t.shape, ", ").c_str(), Size(t.bytes).c_str(), t.chunks, t.crc32c);
  }
  return 0;
}

int Verify(const std::string& db, const std::string& only) {
  auto store = OpenRead(db);
  if (!store.ok()) return Fail(store.status());
  std::vector<std::string> ids;
  if (!only.empty()) {
    ids.push_back(only);
  } else {
    auto list = (*store)->List();
    if (!list.ok()) return Fail(list.status());
    for (const auto& r : *list) ids.push_back(r.id);
  }
  int bad_count = 0;
  for (const auto& id : ids) {
    auto bad = (*store)->Verify(id);
    if (!bad.ok()) return Fail(bad.status());
    if (bad->empty()) {
      std::printf("ok   %s\n", id.c_str());
    } else {
      ++bad_count;
      std::printf("BAD  %s: checksum mismatch in %s\n", id.c_str(), absl::StrJoin(*bad, ", ").c_str());
    }
  }
  std::printf("%zu checkpoint(s) verified, %d bad\n", ids.size(), bad_count);
  return bad_count == 0 ? 0 : 1;
}

int Export(const std::string& db, const std::string& id, const std::string& format, const std::string& out) {
  if (format != "safetensors") return Fail(absl::InvalidArgumentError("--format: only safetensors is supported"));
  auto store = OpenRead(db);
  if (!store.ok()) return Fail(store.status());
  auto tensors = (*store)->Load(id);
  if (!tensors.ok()) return Fail(tensors.status());
  if (auto s = WriteSafetensors(out, *tensors, {{"checkpoint", id}, {"format", "pt"}}); !s.ok()) return Fail(s);
  uint64_t bytes = 0;
  for (const auto& [name, t] : *tensors) bytes += t.numel() * t.element_size();
  std::printf("exported %zu tensors (%s) of %s to %s\n", tensors->size(), Size(bytes).c_str(), id.c_str(), out.c_str());
  return 0;
}

// Stores a safetensors file (weights trained elsewhere) as a checkpoint of `run`; names without a
// "model/" prefix get one, so a job can start from it (model.init, or --resume).
int Import(const std::string& db, const std::string& file, const std::string& run) {
  auto tensors = ReadSafetensors(file);
  if (!tensors.ok()) return Fail(tensors.status());
  for (auto& [name, t] : *tensors) {
    if (name.rfind("model/", 0) != 0 && name.rfind("optim/", 0) != 0) name = "model/" + name;
  }
  auto store = OpenCheckpointStore(db);
  if (!store.ok()) return Fail(store.status());
  CheckpointInfo info;
  info.mode = "imported";
  auto id = (*store)->Save(run, info, *tensors);
  if (!id.ok()) return Fail(id.status());
  std::printf("imported %zu tensors from %s as %s\n", tensors->size(), file.c_str(), id->c_str());
  return 0;
}

int Prune(const std::string& db, const std::string& run, int64_t keep, int64_t keep_every) {
  auto store = OpenCheckpointStore(db, {false, false});
  if (!store.ok()) return Fail(store.status());
  std::vector<std::string> runs;
  if (!run.empty()) {
    runs.push_back(run);
  } else {
    auto list = (*store)->List();
    if (!list.ok()) return Fail(list.status());
    for (const auto& r : *list) {
      if (runs.empty() || runs.back() != r.run_id) runs.push_back(r.run_id);
    }
  }
  for (const auto& r : runs) {
    auto deleted = (*store)->Prune(r, {keep, keep_every});
    if (!deleted.ok()) return Fail(deleted.status());
    for (const auto& id : *deleted) std::printf("deleted %s\n", id.c_str());
  }
  return 0;
}

int Diff(const std::string& db, const std::string& a, const std::string& b, const std::string& db_b) {
  auto sa = OpenRead(db);
  if (!sa.ok()) return Fail(sa.status());
  auto ta = (*sa)->Load(a);
  if (!ta.ok()) return Fail(ta.status());
  auto sb = db_b.empty() ? std::move(sa) : OpenRead(db_b);
  if (!sb.ok()) return Fail(sb.status());
  auto tb = (*sb)->Load(b);
  if (!tb.ok()) return Fail(tb.status());
  std::map<std::string, at::Tensor> other(tb->begin(), tb->end());
  double worst = 0;
  int mismatched = 0;
  for (const auto& [name, t] : *ta) {
    auto it = other.find(name);
    if (it == other.end()) {
      std::printf("%-48s only in %s\n", name.c_str(), a.c_str());
      ++mismatched;
      continue;
    }
    if (it->second.sizes() != t.sizes() || it->second.scalar_type() != t.scalar_type()) {
      std::printf("%-48s shape or dtype differs\n", name.c_str());
      ++mismatched;
    } else {
      const double d = t.numel() == 0 ? 0.0
                                      : (t.to(at::kDouble) - it->second.to(at::kDouble)).abs().max().item<double>();
      worst = std::max(worst, d);
      std::printf("%-48s max_abs_diff %.9g\n", name.c_str(), d);
    }
    other.erase(it);
  }
  for (const auto& [name, t] : other) {
    std::printf("%-48s only in %s\n", name.c_str(), b.c_str());
    ++mismatched;
  }
  std::printf("max_abs_diff=%.9g tensors_not_comparable=%d\n", worst, mismatched);
  return mismatched == 0 ? 0 : 1;
}

// Rebuilds a store that no longer opens (a damaged MANIFEST, CURRENT or log), then says what it
// kept, what is damaged and what is lost. Exit 0 only when nothing was lost or damaged.
int Repair(const std::string& db) {
  auto report = RepairCheckpointStore(db);
  if (!report.ok()) return Fail(report.status());
  for (const auto& note : report->notes) std::printf("note: %s\n", note.c_str());
  for (const auto& id : report->kept) std::printf("kept %s\n", id.c_str());
  for (const auto& why : report->damaged) std::printf("damaged %s\n", why.c_str());
  for (const auto& id : report->lost) std::printf("lost %s\n", id.c_str());
  std::printf("repaired %s: %zu kept, %zu damaged, %zu lost; the store as it was is kept, untouched, at %s\n",
              db.c_str(), report->kept.size(), report->damaged.size(), report->lost.size(), report->backup.c_str());
  return report->damaged.empty() && report->lost.empty() ? 0 : 1;
}

}  // namespace
}  // namespace allround::storage

int main(int argc, char** argv) {
  using namespace allround::storage;
  CLI::App app{"allround-ckpt: inspect and manage checkpoint stores (RocksDB directories)."};
  app.require_subcommand(1);
  std::string db, id, id_b, out, format = "safetensors", run, db_b;
  int64_t keep = 3, keep_every = 0;
  auto* ls = app.add_subcommand("ls", "list every checkpoint: id, round, step, time, size, metrics");
  ls->add_option("db", db, "checkpoint store")->required();
  auto* show = app.add_subcommand("show", "a checkpoint's manifest and tensors");
  show->add_option("db", db)->required();
  show->add_option("id", id)->required();
  auto* verify = app.add_subcommand("verify", "recompute every checksum; non-zero exit naming each bad tensor");
  verify->add_option("db", db)->required();
  verify->add_option("id", id, "one checkpoint (default: all)");
  auto* exp = app.add_subcommand("export", "write a checkpoint's tensors to a file");
  exp->add_option("db", db)->required();
  exp->add_option("id", id)->required();
  exp->add_option("out", out)->required();
  exp->add_option("--format", format, "safetensors");
  std::string file;
  auto* imp = app.add_subcommand("import", "store a safetensors file (weights from elsewhere) as a checkpoint");
  imp->add_option("db", db)->required();
  imp->add_option("file", file, "FILE.safetensors")->required();
  // Its own variable: CLI11 writes a default into the variable when the option is made, so a
  // shared one made 'prune' without --run prune only the run "imported".
  std::string import_run = "imported";
  imp->add_option("--run", import_run, "run id to store it under")->capture_default_str();
  auto* prune = app.add_subcommand("prune", "delete all but the newest N (and every M-th) of each run");
  prune->add_option("db", db)->required();
  prune->add_option("--keep", keep, "newest checkpoints to keep (the run's latest always stays)")
      ->required()
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max()));
  prune->add_option("--keep-every", keep_every, "also keep every M-th (0: none)")->check(CLI::NonNegativeNumber);
  prune->add_option("--run", run, "only this run");
  auto* diff = app.add_subcommand("diff", "max abs difference per tensor between two checkpoints");
  diff->add_option("db", db)->required();
  diff->add_option("a", id)->required();
  diff->add_option("b", id_b)->required();
  diff->add_option("--db-b", db_b, "B lives in this other store");
  auto* repair = app.add_subcommand("repair", "rebuild a store that no longer opens; say what was kept and what was lost");
  repair->add_option("db", db)->required();
  if (auto code = allround::ParseCommandLine(app, argc, argv, "allround-ckpt")) return *code;
  if (*repair) return Repair(db);
  if (*ls) return List(db);
  if (*show) return Show(db, id);
  if (*verify) return Verify(db, id);
  if (*exp) return Export(db, id, format, out);
  if (*imp) return Import(db, file, import_run);
  if (*prune) return Prune(db, run, keep, keep_every);
  if (*diff) return Diff(db, id, id_b, db_b);
  return 2;
}
