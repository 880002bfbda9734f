#include "comm/wire.h"

#include <ATen/ATen.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "tensor/dtype.h"
#include "common/echo.h"

namespace allround::comm {

absl::StatusOr<uint32_t> SecAggSiteId(int64_t id) {
  if (id <= 0 || id > int64_t{UINT32_MAX}) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: site id ", id, " is out of range"));
  }
  return static_cast<uint32_t>(id);
}

TensorAssembler::TensorAssembler(const std::vector<TensorLayout>* expected, size_t max_echo_chars)
    : max_total_bytes_(0), max_echo_chars_(max_echo_chars), layout_(expected) {
  for (const auto& t : *expected) {
    max_total_bytes_ += static_cast<uint64_t>(c10::multiply_integers(t.shape)) * c10::elementSize(t.dtype);
  }
}

absl::Status TensorAssembler::CheckExpected(const allround::v1::TensorChunk& c, at::ScalarType dtype) const {
  const size_t k = done_.size() + (current_.defined() ? 1 : 0);  // the index this chunk starts
  if (k >= layout_->size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", Echo(c.name(), max_echo_chars_), "' is one more than the ",
                                                   layout_->size(), " of the model"));
  }
  const TensorLayout& want = (*layout_)[k];
  const std::vector<int64_t> shape(c.shape().begin(), c.shape().end());
  if (c.name() != want.name || dtype != want.dtype || shape != want.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", k, " is '", Echo(c.name(), max_echo_chars_), "' ", c10::toString(dtype), " ",
        shape.size() <= 8 ? c10::str(at::IntArrayRef(shape)) : absl::StrCat("of ", shape.size(), " dimensions"),
        ", the model's is '", want.name, "' ", c10::toString(want.dtype), " ", c10::str(at::IntArrayRef(want.shape))));
  }
  return absl::OkStatus();
}

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
        c.set_dtype(tensor::DtypeName(t.scalar_type()));
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
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Echo(name_, max_echo_chars_), " ended after ", filled_, " of ", expected_,
                                                     " bytes"));
    }
    if (c.name().empty()) return absl::InvalidArgumentError("a tensor chunk at offset 0 has no name");
    const std::string echoed = Echo(c.name(), max_echo_chars_);
    auto known = tensor::DtypeFromName(c.dtype());
    if (!known.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", echoed, ": unknown dtype '",
                                                     Echo(c.dtype(), max_echo_chars_), "'"));
    }
    const at::ScalarType type = *known;
    if (layout_ != nullptr) {
      if (auto s = CheckExpected(c, type); !s.ok()) return s;
    }
    if (current_.defined()) done_.emplace_back(name_, current_);
    current_ = at::Tensor();
    int64_t numel = 1;
    for (int64_t d : c.shape()) {
      if (d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d)) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", echoed, ": bad shape"));
      }
      numel *= d;
    }
    const uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(type);
    if (bytes != c.total_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", echoed, ": ", c.total_bytes(),
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
                                                   current_.defined() ? "tensor " + Echo(name_, max_echo_chars_) : "any tensor",
                                                   current_.defined() ? absl::StrCat(" (at ", filled_, ")") : ""));
  }
  if (filled_ + c.data().size() > expected_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", Echo(name_, max_echo_chars_), ": more than its ", expected_, " bytes"));
  }
  if (!c.data().empty()) {  // an empty tensor has no storage: no pointer to copy to
    char* dst = static_cast<char*>(current_.data_ptr()) + filled_;
    std::memcpy(dst, c.data().data(), c.data().size());
    if (current_.scalar_type() == at::kBool) {
      // A bool byte other than 0 or 1 is undefined behaviour to read as bool: taken as 0 / not 0.
      for (size_t i = 0; i < c.data().size(); ++i) dst[i] = dst[i] != 0 ? 1 : 0;
    }
  }
  filled_ += c.data().size();
  return absl::OkStatus();
}

absl::StatusOr<NamedTensors> TensorAssembler::Finish() {
  if (current_.defined()) {
    if (filled_ != expected_) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Echo(name_, max_echo_chars_), " ended after ", filled_, " of ", expected_,
                                                     " bytes"));
    }
    done_.emplace_back(name_, current_);
    current_ = at::Tensor();
  }
  if (layout_ != nullptr && done_.size() != layout_->size()) {
    return absl::InvalidArgumentError(absl::StrCat("the stream ended after ", done_.size(), " of the model's ",
                                                   layout_->size(), " tensors"));
  }
  return std::move(done_);
}

}  // namespace allround::comm
