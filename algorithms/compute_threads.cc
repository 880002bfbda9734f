#include "algorithms/compute_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

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

}  // namespace allround
