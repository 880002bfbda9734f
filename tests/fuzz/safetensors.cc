// Fuzz target: the safetensors reader (storage/safetensors.h), which reads what `allround-ckpt
// import` and model.init are given. Every input must end in tensors or an error, never a crash or
// an out-of-bounds read; each tensor's bytes must lie inside the input.

#include <ATen/ATen.h>

#include <cstdlib>

#include "storage/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = allround::fuzz::InputFile(data, size, ".safetensors");
  auto tensors = allround::storage::ReadSafetensors(path);
  if (!tensors.ok()) return 0;
  int64_t bytes = 0;
  for (const auto& [name, t] : *tensors) {
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
    if (t.numel() > 0) {
      volatile double last = t.flatten()[t.numel() - 1].item<double>();  // touch the last element
      (void)last;
    }
  }
  if (bytes > static_cast<int64_t>(size)) std::abort();
  return 0;
}
