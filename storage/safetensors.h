#ifndef ALLROUND_STORAGE_SAFETENSORS_H_
#define ALLROUND_STORAGE_SAFETENSORS_H_

// The safetensors file format (Hugging Face): an 8-byte little-endian header length, a JSON
// header mapping each name to {dtype, shape, data_offsets} (plus optional "__metadata__"), then
// the tensors' bytes. Lets checkpoints travel to and from PyTorch and the Python ecosystem.
// A malformed file is one error naming the file and what is wrong.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/checkpoint_store.h"

namespace allround::storage {

absl::Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata);

// Tensors in file order of their data offsets.
absl::StatusOr<NamedTensors> ReadSafetensors(const std::string& path);

}  // namespace allround::storage

#endif  // ALLROUND_STORAGE_SAFETENSORS_H_
