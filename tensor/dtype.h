#ifndef ALLROUND_TENSOR_DTYPE_H_
#define ALLROUND_TENSOR_DTYPE_H_

// The names tensors' dtypes go by outside the process: on the wire (comm/wire), in checkpoint
// manifests (storage) and in errors (tensor::Describe). One table, so the two can never disagree.

#include <c10/core/ScalarType.h>

#include <string>

#include "absl/status/statusor.h"

namespace allround::tensor {

// "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool";
// any other dtype gets LibTorch's name, which DtypeFromName does not accept.
std::string DtypeName(at::ScalarType t);
// InvalidArgument "unknown dtype '...'" for a name not in the table.
absl::StatusOr<at::ScalarType> DtypeFromName(const std::string& name);

}  // namespace allround::tensor

#endif  // ALLROUND_TENSOR_DTYPE_H_
