// Fuzz target: the IDX reader (data/idx_reader.h), plain and gzip-compressed, as a job's
// data.dir or a site's --data gives it files. Every input must end in a tensor or an error, never
// a crash, a hang or an out-of-bounds access; a tensor must hold as many bytes as its dimensions
// say.

#include <ATen/ATen.h>

#include <cstdlib>

#include "data/idx_reader.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = allround::fuzz::InputFile(data, size, ".idx");
  for (int dims : {0, 1, 3}) {
    auto t = allround::data::ReadIdxUint8(path, dims);
    if (!t.ok()) continue;
    if (dims > 0 && t->dim() != dims) std::abort();
    if (t->scalar_type() != at::kByte || t->numel() > static_cast<int64_t>(size) * 1032 + 64) std::abort();
    volatile int64_t sum = t->numel() > 0 ? t->flatten()[t->numel() - 1].item<int64_t>() : 0;  // touch the last byte
    (void)sum;
  }
  return 0;
}
