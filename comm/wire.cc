#include "comm/wire.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "comm/dtype.h"

namespace allround::comm {

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
        c.set_dtype(DtypeName(t.scalar_type()));
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
    if (c.name().empty()) return absl::InvalidArgumentError("a tensor chunk at offset 0 has no name");
    auto known = DtypeFromName(c.dtype());
    if (!known.ok()) return absl::InvalidArgumentError(absl::StrCat("tensor ", c.name(), ": ", known.status().message()));
    const at::ScalarType type = *known;
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
  if (!c.data().empty()) {  // an empty tensor has no storage: no pointer to copy to
    std::memcpy(static_cast<char*>(current_.data_ptr()) + filled_, c.data().data(), c.data().size());
  }
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
