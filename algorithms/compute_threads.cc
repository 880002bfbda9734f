#include "algorithms/compute_threads.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <cstdlib>

namespace allround {

bool SetComputeThreads(int threads) {
  if (threads <= 0) return false;
  at::set_num_threads(threads);
  // Looked up rather than linked: a LibTorch built against MKL (CUDA builds) has no OpenBLAS, and
  // MKL follows at::set_num_threads already.
  using SetThreads = void (*)(int);
  auto set_openblas = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_openblas == nullptr) return false;
  set_openblas(threads);
  return true;
}

void UseDeterministicKernels(bool on) {
  // What cuBLAS needs for reproducible GEMMs (CUDA 10.2 and later); a value the user set wins.
  if (on) setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
  at::Context& ctx = at::globalContext();
  ctx.setDeterministicCuDNN(on);
  ctx.setBenchmarkCuDNN(false);
  ctx.setDeterministicAlgorithms(on, /*warn_only=*/true);
}

}  // namespace allround
