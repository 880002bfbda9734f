// bench/checkpoint: about 1 GiB of training state (float32 tensors) saved and loaded through the
// CheckpointStore, written to one plain file with write + fsync, and saved with torch::save (then
// fsync), in the same run, alternating, --runs times. Prints GB/s of each (medians), then
// ratio= (store save / plain file + fsync). Loads read what was just written (page cache warm
// for all three alike); the store's load recomputes every CRC32C.
//   checkpoint_bench [--mib 1024] [--runs 3] [--dir DIR]

#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "storage/checkpoint_store.h"

namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

bool WriteAllSync(const std::string& path, const std::vector<at::Tensor>& ts) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return false;
  for (const auto& t : ts) {
    const char* p = static_cast<const char*>(t.data_ptr());
    size_t left = t.numel() * t.element_size();
    while (left > 0) {
      const ssize_t n = ::write(fd, p, left);
      if (n <= 0) return false;
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

bool ReadAll(const std::string& path, std::vector<at::Tensor>& ts) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  for (auto& t : ts) {
    char* p = static_cast<char*>(t.data_ptr());
    size_t left = t.numel() * t.element_size();
    while (left > 0) {
      const ssize_t n = ::read(fd, p, left);
      if (n <= 0) return false;
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  ::close(fd);
  return true;
}

void Fsync(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace allround::storage;
  CLI::App app{"bench/checkpoint: CheckpointStore vs plain file + fsync vs torch::save"};
  int64_t mib = 1024;
  int runs = 3;
  std::string dir = "/tmp/allround-checkpoint-bench";
  app.add_option("--mib", mib, "state size in MiB");
  app.add_option("--runs", runs);
  app.add_option("--dir", dir, "scratch directory (emptied)");
  CLI11_PARSE(app, argc, argv);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);

  // 1 GiB as 64 MiB tensors plus some small ones (biases, buffers), as a real model state has.
  torch::manual_seed(1);
  NamedTensors state;
  std::vector<at::Tensor> plain;
  int64_t bytes = 0;
  for (int i = 0; bytes < mib * (1 << 20); ++i) {
    at::Tensor t = i % 4 == 3 ? torch::randn({1000}) : torch::randn({16 << 20});
    bytes += t.numel() * 4;
    state.emplace_back("t" + std::to_string(i), t);
    plain.push_back(t);
  }
  const double gb = static_cast<double>(bytes) / 1e9;
  std::vector<double> store_save, store_load, file_save, file_load, torch_save, torch_load;
  for (int r = 0; r < runs; ++r) {
    {
      std::filesystem::remove_all(dir + "/store");
      auto store = OpenCheckpointStore(dir + "/store");
      if (!store.ok()) return 1;
      double t0 = Now();
      auto id = (*store)->Save("bench", {}, state);
      store_save.push_back(gb / (Now() - t0));
      if (!id.ok()) return 1;
      t0 = Now();
      auto loaded = (*store)->Load(*id);
      store_load.push_back(gb / (Now() - t0));
      if (!loaded.ok() || !(*loaded)[0].second.equal(state[0].second)) return 1;
    }
    {
      double t0 = Now();
      if (!WriteAllSync(dir + "/plain.bin", plain)) return 1;
      file_save.push_back(gb / (Now() - t0));
      std::vector<at::Tensor> back;
      for (const auto& t : plain) back.push_back(torch::empty_like(t));
      t0 = Now();
      if (!ReadAll(dir + "/plain.bin", back)) return 1;
      file_load.push_back(gb / (Now() - t0));
    }
    {
      double t0 = Now();
      torch::save(plain, dir + "/torch.pt");
      Fsync(dir + "/torch.pt");
      torch_save.push_back(gb / (Now() - t0));
      std::vector<at::Tensor> back;
      t0 = Now();
      torch::load(back, dir + "/torch.pt");
      torch_load.push_back(gb / (Now() - t0));
    }
    std::printf("run %d: save GB/s store %.2f file %.2f torch %.2f | load GB/s store %.2f file %.2f torch %.2f\n", r + 1,
                store_save.back(), file_save.back(), torch_save.back(), store_load.back(), file_load.back(),
                torch_load.back());
    std::fflush(stdout);
  }
  std::printf("state_bytes=%lld\n", static_cast<long long>(bytes));
  std::printf("store_save_GBps=%.3f plain_file_fsync_GBps=%.3f torch_save_GBps=%.3f\n", Median(store_save),
              Median(file_save), Median(torch_save));
  std::printf("store_load_GBps=%.3f plain_file_load_GBps=%.3f torch_load_GBps=%.3f\n", Median(store_load),
              Median(file_load), Median(torch_load));
  std::printf("ratio=%.3f\n", Median(store_save) / Median(file_save));
  std::filesystem::remove_all(dir);
  return 0;
}
