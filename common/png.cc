#include "common/png.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace allround {
namespace {

const std::array<uint32_t, 256>& CrcTable() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  return table;
}

void PutBigEndian(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

void PutChunk(std::string& out, const char* type, const std::string& data) {
  PutBigEndian(out, static_cast<uint32_t>(data.size()));
  const std::string typed = std::string(type, 4) + data;
  out += typed;
  PutBigEndian(out, Crc32(typed));
}

}  // namespace

uint32_t Crc32(const std::string& bytes, uint32_t crc) {
  crc = ~crc;
  for (unsigned char b : bytes) crc = CrcTable()[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t Adler32(const std::string& bytes) {
  uint32_t a = 1, b = 0;
  for (unsigned char c : bytes) {
    a = (a + c) % 65521;
    b = (b + a) % 65521;
  }
  return (b << 16) | a;
}

absl::StatusOr<std::string> EncodeGrayPng(int64_t width, int64_t height, const std::vector<uint8_t>& pixels) {
  if (width <= 0 || height <= 0 || static_cast<int64_t>(pixels.size()) != width * height) {
    return absl::InvalidArgumentError(absl::StrCat("png: ", pixels.size(), " pixels for a ", width, "x", height,
                                                   " image"));
  }
  // Raw scanlines, each behind filter type 0.
  std::string raw;
  raw.reserve(static_cast<size_t>((width + 1) * height));
  for (int64_t y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(pixels.data() + y * width), static_cast<size_t>(width));
  }
  // zlib header (deflate, 32 KiB window, no dictionary; 0x7801 is a multiple of 31), stored blocks
  // of at most 65535 bytes, Adler-32.
  std::string z = {'\x78', '\x01'};
  for (size_t at = 0; at < raw.size() || at == 0; at += 65535) {
    const size_t len = std::min<size_t>(65535, raw.size() - at);
    const bool last = at + len >= raw.size();
    z.push_back(last ? '\x01' : '\x00');
    z.push_back(static_cast<char>(len & 0xFF));
    z.push_back(static_cast<char>(len >> 8));
    z.push_back(static_cast<char>(~len & 0xFF));
    z.push_back(static_cast<char>((~len >> 8) & 0xFF));
    z.append(raw, at, len);
    if (last) break;
  }
  PutBigEndian(z, Adler32(raw));
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string header;
  PutBigEndian(header, static_cast<uint32_t>(width));
  PutBigEndian(header, static_cast<uint32_t>(height));
  header += std::string("\x08\x00\x00\x00\x00", 5);  // 8-bit, grayscale, deflate, filter 0, no interlace
  PutChunk(png, "IHDR", header);
  PutChunk(png, "IDAT", z);
  PutChunk(png, "IEND", "");
  return png;
}

absl::Status WriteGrayPng(const std::string& path, int64_t width, int64_t height, const std::vector<uint8_t>& pixels) {
  auto png = EncodeGrayPng(width, height, pixels);
  if (!png.ok()) return png.status();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(png->data(), static_cast<std::streamsize>(png->size()));
    if (!out.good()) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return absl::UnavailableError(absl::StrCat("cannot rename to ", path));
  return absl::OkStatus();
}

}  // namespace allround
