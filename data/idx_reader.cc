#include "data/idx_reader.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/stat.h>
#include <vector>

#include "absl/strings/str_cat.h"

namespace allround::data {
namespace {

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat("IDX file '", path, "': ", what));
}

// The size an IDX file's header promises (header and data), once `bytes` holds the header; SIZE_MAX
// before that, or for a header the reader will refuse anyway.
size_t PromisedSize(const std::vector<uint8_t>& bytes) {
  if (bytes.size() < 4) return SIZE_MAX;
  const size_t header = 4 + 4 * static_cast<size_t>(bytes[3]);
  if (bytes.size() < header) return SIZE_MAX;
  uint64_t count = 1;
  for (size_t d = 0; d < bytes[3]; ++d) {
    const uint64_t dim = (uint64_t{bytes[4 + 4 * d]} << 24) | (uint64_t{bytes[5 + 4 * d]} << 16) |
                         (uint64_t{bytes[6 + 4 * d]} << 8) | uint64_t{bytes[7 + 4 * d]};
    if (__builtin_mul_overflow(count, dim, &count) || count > (uint64_t{1} << 40)) return SIZE_MAX;
  }
  return header + count;
}

// The (decompressed) content, up to one byte past what the header promises: a gzip stream that
// inflates to far more than its header says (a gzip bomb) is read no further than that. zlib reads
// plain files transparently.
absl::StatusOr<std::vector<uint8_t>> ReadAll(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("IDX file '", path, "': ", std::strerror(errno)));
  }
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("IDX file '", path, "': cannot open: ", std::strerror(errno)));
  }
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose(f);
      return FileError(path, absl::StrCat("corrupt gzip stream: ", msg));
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
    const size_t promised = PromisedSize(out);
    if (promised != SIZE_MAX && out.size() > promised) {
      gzclose(f);
      return out;  // more than promised: the caller says so, without reading the rest
    }
  }
  int code = 0;
  const char* msg = gzerror(f, &code);
  if (code != Z_OK && code != Z_STREAM_END) {
    std::string m = msg;
    gzclose(f);
    return FileError(path, absl::StrCat("corrupt gzip stream: ", m));
  }
  if (gzclose(f) != Z_OK) return FileError(path, "truncated or corrupt gzip stream");
  return out;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

}  // namespace

absl::StatusOr<at::Tensor> ReadIdxUint8(const std::string& path, int expected_dims) {
  auto content = ReadAll(path);
  if (!content.ok()) return content.status();
  const std::vector<uint8_t>& bytes = *content;
  if (bytes.size() < 4) return FileError(path, absl::StrCat("only ", bytes.size(), " bytes, no IDX header"));
  if (bytes[0] != 0 || bytes[1] != 0) {
    return FileError(path, absl::StrCat("bad magic number 0x", absl::Hex(BigEndian32(bytes.data())),
                                        " (an IDX file starts with two zero bytes)"));
  }
  if (bytes[2] != 0x08) {
    return FileError(path, absl::StrCat("element type 0x", absl::Hex(bytes[2]),
                                        " is not unsigned byte (0x08)"));
  }
  const int ndims = bytes[3];
  if (ndims == 0 || (expected_dims > 0 && ndims != expected_dims)) {
    return FileError(path, absl::StrCat("has ", ndims, " dimensions, expected ", expected_dims));
  }
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) return FileError(path, "truncated header");
  std::vector<int64_t> dims(ndims);
  uint64_t count = 1, extent = 1;
  for (int d = 0; d < ndims; ++d) {
    dims[d] = BigEndian32(bytes.data() + 4 + 4 * d);
    // Checked before it can wrap: 2^20 x 2^20 x 2^24 is 2^64, which a plain product would make 0.
    // The product with zeros counted as ones is bounded too: [0, 2^32-1, 2^32-1] holds no bytes but
    // its image size would overflow whatever multiplies height by width.
    if (__builtin_mul_overflow(count, static_cast<uint64_t>(dims[d]), &count) || count > (uint64_t{1} << 40) ||
        __builtin_mul_overflow(extent, std::max<uint64_t>(static_cast<uint64_t>(dims[d]), 1), &extent) ||
        extent > (uint64_t{1} << 40)) {
      return FileError(path, "dimensions too large");
    }
  }
  const uint64_t have = bytes.size() - header;
  if (have < count) {
    return FileError(path, absl::StrCat("truncated: header promises ", count, " bytes of data, file has ", have));
  }
  if (have > count) {
    return FileError(path, absl::StrCat("has at least ", have - count, " bytes after the data the header describes"));
  }
  at::Tensor t = at::empty(dims, at::kByte);
  if (count > 0) std::memcpy(t.data_ptr<uint8_t>(), bytes.data() + header, count);  // no storage when empty
  return t;
}

absl::StatusOr<LabeledImages> ReadIdxPair(const std::string& images_path,
                                          const std::string& labels_path, int64_t num_classes) {
  auto images = ReadIdxUint8(images_path, 3);
  if (!images.ok()) return images.status();
  auto labels = ReadIdxUint8(labels_path, 1);
  if (!labels.ok()) return labels.status();
  if (images->size(0) != labels->size(0)) {
    return FileError(labels_path, absl::StrCat("has ", labels->size(0), " labels but '", images_path,
                                               "' has ", images->size(0), " images"));
  }
  if (labels->numel() > 0) {
    const int64_t max_label = labels->max().item<int64_t>();
    if (max_label >= num_classes) {
      return FileError(labels_path, absl::StrCat("label ", max_label, " is not below ", num_classes, " classes"));
    }
  }
  return LabeledImages{*images, labels->to(at::kLong)};
}

}  // namespace allround::data
