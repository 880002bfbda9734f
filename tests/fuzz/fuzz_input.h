#ifndef ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_
#define ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_

// The decoders under fuzzing read files (that is how outside bytes reach them): each input is
// written to one file in /dev/shm (memory, not disk), named by the process, and read back.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace allround::fuzz {

inline std::string InputFile(const uint8_t* data, size_t size, const char* suffix) {
  const std::string path = "/dev/shm/allround-fuzz-" + std::to_string(getpid()) + suffix;
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size > 0) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  return path;
}

}  // namespace allround::fuzz

#endif  // ALLROUND_TESTS_FUZZ_FUZZ_INPUT_H_
