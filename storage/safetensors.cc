#include "storage/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "storage/run_directory.h"

namespace allround::storage {
namespace {

const std::vector<std::pair<at::ScalarType, std::string>>& Dtypes() {
  static const auto* d = new std::vector<std::pair<at::ScalarType, std::string>>{
      {at::kFloat, "F32"}, {at::kDouble, "F64"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"},
      {at::kLong, "I64"},  {at::kInt, "I32"},    {at::kShort, "I16"}, {at::kChar, "I8"},
      {at::kByte, "U8"},   {at::kBool, "BOOL"}};
  return *d;
}

// A JSON array of integers that fit int64, or nullopt.
std::optional<std::vector<int64_t>> Integers(const nlohmann::json& a) {
  if (!a.is_array()) return std::nullopt;
  std::vector<int64_t> out;
  for (const auto& v : a) {
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      out.push_back(static_cast<int64_t>(v.get<uint64_t>()));
    } else if (v.is_number_integer()) {
      out.push_back(v.get<int64_t>());
    } else {
      return std::nullopt;
    }
  }
  return out;
}

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat("safetensors file '", path, "': ", what));
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const at::ScalarType dtype = t.scalar_type();  // a lambda may not capture a structured binding before C++20
    auto it = std::find_if(Dtypes().begin(), Dtypes().end(), [&](const auto& d) { return d.first == dtype; });
    if (it == Dtypes().end()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": dtype has no safetensors name"));
    }
    const uint64_t n = t.numel() * t.element_size();
    header[name] = {{"dtype", it->second}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  std::string out(8, '\0');
  const uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  out += h;
  out.reserve(out.size() + offset);
  for (const auto& [name, t] : tensors) {
    const at::Tensor c = t.detach().to(at::kCPU).contiguous();
    out.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  }
  return WriteFileAtomically(path, out);
}

absl::StatusOr<NamedTensors> ReadSafetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return absl::NotFoundError(absl::StrCat("safetensors file '", path, "': cannot open"));
  std::string bytes((std::istreambuf_iterator<char>(f)), {});
  if (bytes.size() < 8) return Bad(path, "shorter than its 8-byte header length");
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | static_cast<unsigned char>(bytes[i]);
  if (len > bytes.size() - 8) return Bad(path, absl::StrCat("header length ", len, " exceeds the file"));
  if (len > (uint64_t{100} << 20)) return Bad(path, absl::StrCat("header length ", len, " is over 100 MB"));
  nlohmann::json header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(len),
                                                nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) return Bad(path, "header is not a JSON object");
  const uint64_t data_size = bytes.size() - 8 - len;
  const char* data = bytes.data() + 8 + len;
  std::vector<std::pair<uint64_t, std::pair<std::string, at::Tensor>>> found;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    try {
      const std::string dt = e.at("dtype").get<std::string>();
      auto it = std::find_if(Dtypes().begin(), Dtypes().end(), [&](const auto& d) { return d.second == dt; });
      if (it == Dtypes().end()) return Bad(path, absl::StrCat("tensor ", name, ": unsupported dtype ", dt));
      // Integers only: nlohmann converts a JSON number like 2.2e21 to int64 by a plain cast,
      // undefined behaviour (found by tests/fuzz/safetensors).
      const auto shape = Integers(e.at("shape"));
      const auto offsets = Integers(e.at("data_offsets"));
      if (!shape || !offsets) return Bad(path, absl::StrCat("tensor ", name, ": shape and data_offsets must be integers"));
      std::vector<uint64_t> off;
      for (int64_t v : *offsets) {
        if (v < 0) return Bad(path, absl::StrCat("tensor ", name, ": negative data_offsets"));
        off.push_back(static_cast<uint64_t>(v));
      }
      // The size the shape asks for, checked against the file before anything is allocated: a
      // header may claim any shape (a [10^12] tensor in a 100-byte file).
      // The product of the dimensions with zeros counted as ones is bounded too: LibTorch computes
      // strides from it ([0, 2^62, 2^62] has no bytes and overflowing strides).
      uint64_t n = c10::elementSize(it->first), extent = 1;
      for (int64_t d : *shape) {
        if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) ||
            __builtin_mul_overflow(extent, static_cast<uint64_t>(std::max<int64_t>(d, 1)), &extent) ||
            extent > (uint64_t{1} << 48)) {
          return Bad(path, absl::StrCat("tensor ", name, ": shape has a negative or too large dimension"));
        }
      }
      if (off.size() != 2 || off[1] < off[0] || off[1] > data_size || off[1] - off[0] != n) {
        return Bad(path, absl::StrCat("tensor ", name, ": data_offsets do not fit its shape or the file"));
      }
      at::Tensor t = at::empty(*shape, at::TensorOptions().dtype(it->first));
      if (n > 0) std::memcpy(t.data_ptr(), data + off[0], n);  // an empty tensor has no storage
      // A bool is one byte that must be 0 or 1; any other byte read as bool is undefined.
      if (t.scalar_type() == at::kBool && n > 0) t = t.view(at::kByte).ne(0);
      found.push_back({off[0], {name, t}});
      ranges.push_back({off[0], off[1]});
    } catch (const nlohmann::json::exception& ex) {
      return Bad(path, absl::StrCat("tensor ", name, ": ", ex.what()));
    } catch (const c10::Error& ex) {
      return Bad(path, absl::StrCat("tensor ", name, ": ", ex.what_without_backtrace()));
    }
  }
  // The tensors tile the data, as the format requires: no two share bytes (K entries over one range
  // would make a small file ask for K times its size) and none is left out.
  std::sort(ranges.begin(), ranges.end());
  uint64_t end = 0;
  for (const auto& [begin, stop] : ranges) {
    if (begin != end) return Bad(path, "tensors' data_offsets overlap or leave gaps");
    end = stop;
  }
  if (end != data_size) return Bad(path, absl::StrCat(data_size - end, " bytes after the last tensor's data"));
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  NamedTensors out;
  for (auto& f2 : found) out.push_back(std::move(f2.second));
  return out;
}

}  // namespace allround::storage
