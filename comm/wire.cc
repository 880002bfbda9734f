#include "comm/wire.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace allround::comm {
namespace {

const std::vector<std::pair<at::ScalarType, std::string>>& Dtypes() {
  static const auto* d = new std::vector<std::pair<at::ScalarType, std::string>>{
      {at::kFloat, "float32"}, {at::kDouble, "float64"}, {at::kHalf, "float16"}, {at::kBFloat16, "bfloat16"},
      {at::kLong, "int64"},    {at::kInt, "int32"},      {at::kShort, "int16"},  {at::kChar, "int8"},
      {at::kByte, "uint8"},    {at::kBool, "bool"}};
  return *d;
}

}  // namespace

std::vector<allround::v1::TensorChunk> EncodeTensors(const NamedTensors& tensors, uint64_t chunk_bytes) {
  std::vector<allround::v1::TensorChunk> out;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t n = t.numel() * t.element_size();
    const char* data = static_cast<const char*>(t.data_ptr());
    uint64_t off = 0;
    do {
      allround::v1::TensorChunk c;
      if (off == 0) {
        c.set_name(name);
        for (const auto& [type, dname] : Dtypes()) {
          if (type == t.scalar_type()) c.set_dtype(dname);
        }
        for (int64_t d : t.sizes()) c.add_shape(d);
        c.set_total_bytes(n);
      }
      const uint64_t len = std::min(chunk_bytes, n - off);
      c.set_offset(off);
      c.set_data(data + off, len);
      out.push_back(std::move(c));
      off += len;
    } while (off < n);
  }
  return out;
}

absl::Status TensorAssembler::Add(const allround::v1::TensorChunk& c) {
  if (c.offset() == 0) {
    if (current_.defined() && filled_ != expected_) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name_, " ended after ", filled_, " of ", expected_,
                                                     " bytes"));
    }
    if (current_.defined()) done_.emplace_back(name_, current_);
    at::ScalarType type = at::kFloat;
    bool known = false;
    for (const auto& [t, dname] : Dtypes()) {
      if (dname == c.dtype()) {
        type = t;
        known = true;
      }
    }
    if (c.name().empty()) return absl::InvalidArgumentError("a tensor chunk at offset 0 has no name");
    if (!known) return absl::InvalidArgumentError(absl::StrCat("tensor ", c.name(), ": unknown dtype '", c.dtype(), "'"));
    int64_t numel = 1;
    for (int64_t d : c.shape()) {
      if (d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", c.name(), ": bad shape"));
      }
      numel *= d;
    }
    const uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(type);
    if (bytes != c.total_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", c.name(), ": ", c.total_bytes(),
                                                     " bytes do not fit its dtype and shape (", bytes, ")"));
    }
    if (total_ + bytes > max_total_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat("stream exceeds the limit of ", max_total_bytes_, " bytes"));
    }
    total_ += bytes;
    name_ = c.name();
    current_ = at::empty(std::vector<int64_t>(c.shape().begin(), c.shape().end()), at::TensorOptions().dtype(type));
    expected_ = bytes;
    filled_ = 0;
  } else if (!current_.defined() || c.offset() != filled_) {
    return absl::InvalidArgumentError(absl::StrCat("chunk at offset ", c.offset(), " does not continue ",
                                                   current_.defined() ? "tensor " + name_ : "any tensor",
                                                   current_.defined() ? absl::StrCat(" (at ", filled_, ")") : ""));
  }
  if (filled_ + c.data().size() > expected_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name_, ": more than its ", expected_, " bytes"));
  }
  std::memcpy(static_cast<char*>(current_.data_ptr()) + filled_, c.data().data(), c.data().size());
  filled_ += c.data().size();
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> TensorAssembler::Finish() {
  if (current_.defined()) {
    if (filled_ != expected_) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name_, " ended after ", filled_, " of ", expected_,
                                                     " bytes"));
    }
    done_.emplace_back(name_, current_);
    current_ = at::Tensor();
  }
  return std::move(done_);
}

}  // namespace allround::comm
