// One side of bench/allreduce, run under mpirun: for each message size, the average time of an
// in-place float32 sum-allreduce through allround's Communicator and through raw MPI_Allreduce on
// the same buffer, alternating. Rank 0 prints one line per size and implementation:
//   impl=allround bytes=67108864 ranks=2 us=12345.6 algbw_GBps=5.43 busbw_GBps=5.43
// (nccl-tests definitions: algbw = bytes / time, busbw = algbw * 2 (n - 1) / n).

#include <mpi.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "comm/registry.h"

namespace {

double Seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

int Iterations(int64_t bytes) { return bytes <= (1 << 20) ? 200 : bytes <= (16 << 20) ? 20 : 5; }

}  // namespace

int main(int argc, char** argv) {
  using namespace allround;
  auto context = comm::InitComm("mpi", "cpu", &argc, &argv);
  if (!context.ok()) {
    std::fprintf(stderr, "allreduce bench: %s\n", std::string(context.status().message()).c_str());
    return 1;
  }
  comm::Communicator& c = (*context)->comm();
  const int n = c.size();
  int64_t max_bytes = int64_t{256} << 20;
  if (argc > 1) max_bytes = std::atoll(argv[1]);
  for (int64_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    at::Tensor t = torch::ones({bytes / 4});
    const int iters = Iterations(bytes);
    double ours = 0, raw = 0;
    // Warm-up of both paths, then alternate timed rounds so drift affects both alike.
    c.AllReduce(t, comm::ReduceOp::kSum)->Wait(std::chrono::minutes(5)).IgnoreError();
    for (int round = 0; round < 3; ++round) {
      MPI_Barrier(MPI_COMM_WORLD);
      double start = Seconds();
      for (int i = 0; i < iters; ++i) {
        absl::Status s = c.AllReduce(t, comm::ReduceOp::kSum)->Wait(std::chrono::minutes(5));
        if (!s.ok()) {
          std::fprintf(stderr, "allreduce bench: %s\n", std::string(s.message()).c_str());
          return 1;
        }
      }
      ours += Seconds() - start;
      MPI_Barrier(MPI_COMM_WORLD);
      start = Seconds();
      for (int i = 0; i < iters; ++i) {
        MPI_Allreduce(MPI_IN_PLACE, t.data_ptr<float>(), static_cast<int>(t.numel()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      }
      raw += Seconds() - start;
    }
    if (c.rank() == 0) {
      for (auto [name, total] : {std::pair<const char*, double>{"allround", ours}, {"mpi", raw}}) {
        const double sec = total / (3.0 * iters);
        const double algbw = static_cast<double>(bytes) / sec / 1e9;
        std::printf("impl=%s bytes=%lld ranks=%d us=%.1f algbw_GBps=%.3f busbw_GBps=%.3f\n", name,
                    static_cast<long long>(bytes), n, sec * 1e6, algbw, algbw * 2.0 * (n - 1) / n);
      }
      std::fflush(stdout);
    }
  }
  return 0;
}
