#ifndef ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_
#define ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_

// The decoders under fuzzing read files (that is how outside bytes reach them): each input is
// written to one file in /dev/shm (memory, not disk), named by the process, and read back.

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <string>

namespace allround::fuzz {

// A file that cannot be written aborts the run: fuzzing stale or empty bytes would test nothing
// and report crashes that do not reproduce. The file is removed when the process exits.
inline std::string InputFile(const uint8_t* data, size_t size, const char* suffix) {
  static std::string* last = nullptr;
  const std::string path = "/dev/shm/allround-fuzz-" + std::to_string(getpid()) + suffix;
  if (last == nullptr) {
    last = new std::string(path);
    std::atexit([] { std::remove(last->c_str()); });
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::fprintf(stderr, "fuzz: cannot write the input to %s\n", path.c_str());
    std::abort();
  }
  return path;
}

}  // namespace allround::fuzz

#endif  // ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_
