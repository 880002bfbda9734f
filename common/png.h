#ifndef ALLROUND_COMMON_PNG_H_
#define ALLROUND_COMMON_PNG_H_

// Grayscale PNG encoding with no image library: 8-bit gray, one filter-0 scanline per row, zlib
// stream of stored (uncompressed) deflate blocks, CRC-32 per chunk and Adler-32 over the data.
// Enough for sample grids of small images (a 10x10 grid of 28x28 images is ~80 KiB).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace allround {

// An 8-bit grayscale picture a run shows (a sample grid, a confusion matrix): written as a PNG file
// and into the TensorBoard event file. `name` is its kind ("samples", "reconstructions").
struct GrayImage {
  std::string name;
  int64_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height rows of width bytes
};

// The PNG file's bytes; `pixels` holds height rows of width bytes. Fails on a size mismatch.
absl::StatusOr<std::string> EncodeGrayPng(int64_t width, int64_t height, const std::vector<uint8_t>& pixels);

// Encodes and writes it (to a temporary name, then renamed into place).
absl::Status WriteGrayPng(const std::string& path, int64_t width, int64_t height, const std::vector<uint8_t>& pixels);

// CRC-32 (ISO 3309, as PNG and zlib use) and Adler-32 (RFC 1950).
uint32_t Crc32(const std::string& bytes, uint32_t crc = 0);
uint32_t Adler32(const std::string& bytes);

}  // namespace allround

#endif  // ALLROUND_COMMON_PNG_H_
