#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace allround::data {
namespace {

uint64_t Key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

bool IsSpace(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
// Letters and digits, and every byte of a multi-byte UTF-8 character (so words of any script
// stay together).
bool IsWordByte(unsigned char c) { return std::isalnum(c) || c >= 0x80; }

constexpr char kHeader[] = "allround-bpe v1";

}  // namespace

std::vector<std::string> PreTokenize(const std::string& text) {
  std::vector<std::string> chunks;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const size_t start = i;
    const auto c = static_cast<unsigned char>(text[i]);
    // A single space before a word or a run of symbols belongs to it.
    size_t body = (c == ' ' && i + 1 < n && !IsSpace(static_cast<unsigned char>(text[i + 1]))) ? i + 1 : i;
    const auto b = static_cast<unsigned char>(text[body]);
    if (IsSpace(b)) {
      while (i < n && IsSpace(static_cast<unsigned char>(text[i]))) ++i;
      // Leave the last space of a run to the word that follows it.
      if (i < n && i - start > 1 && text[i - 1] == ' ') --i;
    } else if (IsWordByte(b)) {
      i = body;
      while (i < n && IsWordByte(static_cast<unsigned char>(text[i]))) ++i;
    } else {
      i = body;
      while (i < n && !IsSpace(static_cast<unsigned char>(text[i])) && !IsWordByte(static_cast<unsigned char>(text[i]))) {
        ++i;
      }
    }
    chunks.push_back(text.substr(start, i - start));
  }
  return chunks;
}

absl::StatusOr<BpeTokenizer> BpeTokenizer::Train(const std::string& text, int32_t vocab_size) {
  if (vocab_size < kBaseVocab) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer: a vocabulary of ", vocab_size, " is below the ",
                                                   kBaseVocab, " special and byte tokens"));
  }
  // Unique chunks with their counts, as id sequences; in first-seen order (deterministic).
  std::unordered_map<std::string, int64_t> index;
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  for (const std::string& chunk : PreTokenize(text)) {
    auto [it, fresh] = index.emplace(chunk, static_cast<int64_t>(words.size()));
    if (fresh) {
      std::vector<int32_t> ids;
      for (unsigned char c : chunk) ids.push_back(kFirstByte + c);
      words.push_back(std::move(ids));
      counts.push_back(0);
    }
    ++counts[it->second];
  }
  // Pair counts, and which words hold each pair.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::set<int64_t>> where;
  const auto add_pairs = [&](int64_t w, int64_t sign) {
    const auto& ids = words[w];
    for (size_t k = 0; k + 1 < ids.size(); ++k) {
      const uint64_t key = Key(ids[k], ids[k + 1]);
      pair_count[key] += sign * counts[w];
      if (sign > 0) where[key].insert(w);
    }
  };
  for (int64_t w = 0; w < static_cast<int64_t>(words.size()); ++w) add_pairs(w, +1);
  // Candidates ordered by (count desc, key asc); rebuilt lazily from pair_count.
  std::set<std::pair<int64_t, uint64_t>> queue;
  for (const auto& [key, c] : pair_count) queue.emplace(-c, key);

  BpeTokenizer tok;
  while (tok.vocab_size() < vocab_size && !queue.empty()) {
    auto [neg, key] = *queue.begin();
    queue.erase(queue.begin());
    auto pc = pair_count.find(key);
    if (pc == pair_count.end() || pc->second != -neg) continue;  // stale entry
    if (pc->second < 2) break;
    const int32_t a = static_cast<int32_t>(key >> 32), b = static_cast<int32_t>(key & 0xFFFFFFFFu);
    const int32_t made = tok.vocab_size();
    tok.merges_.emplace_back(a, b);
    const std::set<int64_t> holders = where[key];
    std::set<uint64_t> touched;
    for (int64_t w : holders) {
      auto& ids = words[w];
      for (size_t k = 0; k + 1 < ids.size(); ++k) touched.insert(Key(ids[k], ids[k + 1]));
      add_pairs(w, -1);
      std::vector<int32_t> merged;
      for (size_t k = 0; k < ids.size(); ++k) {
        if (k + 1 < ids.size() && ids[k] == a && ids[k + 1] == b) {
          merged.push_back(made);
          ++k;
        } else {
          merged.push_back(ids[k]);
        }
      }
      ids = std::move(merged);
      add_pairs(w, +1);
      for (size_t k = 0; k + 1 < ids.size(); ++k) touched.insert(Key(ids[k], ids[k + 1]));
    }
    where.erase(key);
    pair_count.erase(key);
    for (uint64_t t : touched) {
      auto it = pair_count.find(t);
      if (it != pair_count.end() && it->second > 0) queue.emplace(-it->second, t);
    }
  }
  tok.Rebuild();
  return tok;
}

void BpeTokenizer::Rebuild() {
  bytes_.assign(kBaseVocab, "");
  for (int c = 0; c < 256; ++c) bytes_[kFirstByte + c] = std::string(1, static_cast<char>(c));
  rank_.clear();
  for (size_t i = 0; i < merges_.size(); ++i) {
    bytes_.push_back(bytes_[merges_[i].first] + bytes_[merges_[i].second]);
    rank_.emplace_back(Key(merges_[i].first, merges_[i].second), static_cast<int32_t>(i));
  }
  std::sort(rank_.begin(), rank_.end());
}

void BpeTokenizer::EncodeChunk(const std::string& chunk, std::vector<int32_t>& out) const {
  std::vector<int32_t> ids;
  for (unsigned char c : chunk) ids.push_back(kFirstByte + c);
  const auto rank_of = [&](int32_t a, int32_t b) -> int32_t {
    auto it = std::lower_bound(rank_.begin(), rank_.end(), std::make_pair(Key(a, b), int32_t{-1}));
    return it != rank_.end() && it->first == Key(a, b) ? it->second : -1;
  };
  for (;;) {
    int32_t best = -1;
    size_t at = 0;
    for (size_t k = 0; k + 1 < ids.size(); ++k) {
      const int32_t r = rank_of(ids[k], ids[k + 1]);
      if (r >= 0 && (best < 0 || r < best)) {
        best = r;
        at = k;
      }
    }
    if (best < 0) break;
    ids[at] = kBaseVocab + best;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<int32_t> BpeTokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> out;
  for (const std::string& chunk : PreTokenize(text)) EncodeChunk(chunk, out);
  return out;
}

std::string BpeTokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) out += bytes_[id];
  }
  return out;
}

std::string BpeTokenizer::Serialize() const {
  std::string out = absl::StrCat(kHeader, "\n", merges_.size(), "\n");
  for (const auto& [a, b] : merges_) absl::StrAppend(&out, a, " ", b, "\n");
  return out;
}

absl::StatusOr<BpeTokenizer> BpeTokenizer::Parse(const std::string& serialized) {
  std::vector<std::string> lines = absl::StrSplit(serialized, '\n', absl::SkipEmpty());
  int64_t n = 0;
  if (lines.size() < 2 || lines[0] != kHeader || !absl::SimpleAtoi(lines[1], &n) ||
      static_cast<int64_t>(lines.size()) != n + 2) {
    return absl::InvalidArgumentError("tokenizer: not an allround-bpe v1 vocabulary");
  }
  BpeTokenizer tok;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::string> parts = absl::StrSplit(lines[i + 2], ' ');
    int32_t a = 0, b = 0;
    const int32_t limit = kBaseVocab + static_cast<int32_t>(i);
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &a) || !absl::SimpleAtoi(parts[1], &b) || a < kFirstByte ||
        b < kFirstByte || a >= limit || b >= limit) {
      return absl::InvalidArgumentError(absl::StrCat("tokenizer: bad merge on line ", i + 3, ": '", lines[i + 2], "'"));
    }
    tok.merges_.emplace_back(a, b);
  }
  tok.Rebuild();
  return tok;
}

}  // namespace allround::data
