#ifndef ALLROUND_STORAGE_CRC32C_H_
#define ALLROUND_STORAGE_CRC32C_H_

// CRC-32C (Castagnoli), the checksum of every stored tensor chunk. Uses the SSE4.2 crc32
// instruction when the CPU has it (~10 GB/s), a slicing table otherwise. Thread-safe.

#include <cstddef>
#include <cstdint>

namespace allround::storage {

// Extends `crc` (0 for a fresh checksum) over data[0, n).
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace allround::storage

#endif  // ALLROUND_STORAGE_CRC32C_H_
