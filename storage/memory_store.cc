#include "storage/memory_store.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "storage/crc32c.h"
#include "tensor/dtype.h"

namespace allround::storage {

class MemoryStoreState {
 public:
  struct Stored {
    CheckpointRecord record;
    NamedTensors tensors;  // CPU copies, contiguous
  };
  mutable std::mutex mu;
  std::map<std::string, Stored> checkpoints;      // by id
  std::map<std::string, uint64_t> last_sequence;  // by run: sequences are never reused
  std::map<std::string, std::string> latest;      // by run
  int saves = 0;
  std::set<int> failing_saves;  // absolute Save numbers (1-based) that fail
};

std::shared_ptr<MemoryStoreState> NewMemoryStoreState() { return std::make_shared<MemoryStoreState>(); }

void FailSave(MemoryStoreState& state, int n) {
  std::lock_guard<std::mutex> lock(state.mu);
  state.failing_saves.insert(state.saves + n);
}

int SaveCalls(const MemoryStoreState& state) {
  std::lock_guard<std::mutex> lock(state.mu);
  return state.saves;
}

namespace {

uint32_t Checksum(const at::Tensor& t) {
  return Crc32c(0, t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size());
}

class MemoryStore final : public CheckpointStore {
 public:
  MemoryStore(std::shared_ptr<MemoryStoreState> state, bool read_only, std::string name)
      : state_(std::move(state)), read_only_(read_only), name_(std::move(name)) {}

  absl::StatusOr<std::string> Save(const std::string& run_id, const CheckpointInfo& info,
                                   const NamedTensors& tensors) override {
    if (read_only_) return absl::FailedPreconditionError(absl::StrCat(name_, ": opened read-only"));
    if (run_id.empty() || run_id.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad run id '", run_id, "' (no '/', not empty)"));
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    const int number = ++state_->saves;
    if (state_->failing_saves.count(number) > 0) {
      return absl::UnavailableError(absl::StrCat(name_, ": save ", number, " failed (a fault the test planned)"));
    }
    MemoryStoreState::Stored s;
    const uint64_t seq = ++state_->last_sequence[run_id];
    CheckpointRecord& r = s.record;
    r.id = absl::StrFormat("%s/%010d", run_id, seq);
    r.run_id = run_id;
    r.sequence = seq;
    r.info = info;
    r.created_unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count();
    r.versions["allround"] = "0.1.0";
    for (const auto& [name, t] : tensors) {
      at::Tensor copy = t.detach().to(at::kCPU).contiguous().clone();
      TensorSummary summary{name, tensor::DtypeName(copy.scalar_type()), copy.sizes().vec(),
                            static_cast<uint64_t>(copy.numel()) * copy.element_size(), 1, Checksum(copy)};
      r.total_bytes += summary.bytes;
      r.tensors.push_back(std::move(summary));
      s.tensors.emplace_back(name, std::move(copy));
    }
    state_->checkpoints[r.id] = s;
    state_->latest[run_id] = r.id;
    return r.id;
  }

  absl::StatusOr<std::vector<CheckpointRecord>> List() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    std::vector<CheckpointRecord> out;
    for (const auto& [id, s] : state_->checkpoints) out.push_back(s.record);
    std::sort(out.begin(), out.end(), [](const CheckpointRecord& a, const CheckpointRecord& b) {
      return a.created_unix_ms != b.created_unix_ms ? a.created_unix_ms < b.created_unix_ms : a.id < b.id;
    });
    return out;
  }

  absl::StatusOr<CheckpointRecord> Get(const std::string& id) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->checkpoints.find(id);
    if (it == state_->checkpoints.end()) return NoSuch(id);
    return it->second.record;
  }

  absl::StatusOr<std::string> Latest(const std::string& run_id) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->latest.find(run_id);
    if (it == state_->latest.end()) return absl::NotFoundError(absl::StrCat("run '", run_id, "' has no checkpoints"));
    return it->second;
  }

  absl::StatusOr<NamedTensors> Load(const std::string& id) override {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->checkpoints.find(id);
    if (it == state_->checkpoints.end()) return NoSuch(id);
    NamedTensors out;
    const auto& summaries = it->second.record.tensors;
    for (size_t k = 0; k < summaries.size(); ++k) {
      const at::Tensor& t = it->second.tensors[k].second;
      if (Checksum(t) != summaries[k].crc32c) {
        return absl::DataLossError(absl::StrCat("checkpoint ", id, ": tensor ", summaries[k].name, " fails its CRC32C"));
      }
      out.emplace_back(summaries[k].name, t.clone());
    }
    return out;
  }

  absl::StatusOr<std::vector<std::string>> Verify(const std::string& id) override {
    auto loaded = Load(id);
    if (absl::IsDataLoss(loaded.status())) return std::vector<std::string>{std::string(loaded.status().message())};
    if (!loaded.ok()) return loaded.status();
    return std::vector<std::string>{};
  }

  absl::StatusOr<std::vector<std::string>> Prune(const std::string& run_id, const RetentionPolicy& policy) override {
    if (read_only_) return absl::FailedPreconditionError(absl::StrCat(name_, ": opened read-only"));
    if (policy.keep_last < 1 || policy.keep_every < 0) {
      return absl::InvalidArgumentError(absl::StrCat("retention: keep_last ", policy.keep_last, " (>= 1) and keep_every ",
                                                     policy.keep_every, " (>= 0)"));
    }
    std::lock_guard<std::mutex> lock(state_->mu);
    std::vector<const CheckpointRecord*> runs;  // ids sort by sequence within a run
    for (const auto& [id, s] : state_->checkpoints) {
      if (s.record.run_id == run_id) runs.push_back(&s.record);
    }
    std::vector<std::string> deleted;
    const int64_t n = static_cast<int64_t>(runs.size());
    for (int64_t i = 0; i < n; ++i) {
      const CheckpointRecord& r = *runs[i];
      const bool keep = i >= n - policy.keep_last ||
                        (policy.keep_every > 0 && r.sequence % static_cast<uint64_t>(policy.keep_every) == 0) ||
                        state_->latest[run_id] == r.id;
      if (!keep) deleted.push_back(r.id);
    }
    for (const auto& id : deleted) state_->checkpoints.erase(id);
    return deleted;
  }

  absl::Status Delete(const std::string& id) override {
    if (read_only_) return absl::FailedPreconditionError(absl::StrCat(name_, ": opened read-only"));
    std::lock_guard<std::mutex> lock(state_->mu);
    auto it = state_->checkpoints.find(id);
    if (it == state_->checkpoints.end()) return NoSuch(id);
    if (state_->latest[it->second.record.run_id] == id) {
      return absl::FailedPreconditionError(absl::StrCat("checkpoint ", id, " is its run's latest"));
    }
    state_->checkpoints.erase(it);
    return absl::OkStatus();
  }

 private:
  absl::Status NoSuch(const std::string& id) const {
    return absl::NotFoundError(absl::StrCat(name_, ": no checkpoint '", id, "'"));
  }

  std::shared_ptr<MemoryStoreState> state_;
  const bool read_only_;
  const std::string name_;
};

}  // namespace

std::unique_ptr<CheckpointStore> OpenMemoryStore(std::shared_ptr<MemoryStoreState> state, bool read_only,
                                                 std::string name) {
  return std::make_unique<MemoryStore>(std::move(state), read_only, std::move(name));
}

}  // namespace allround::storage
