#include "data/text_corpus.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "algorithms/modes/mlm.h"

namespace allround::data {

// The masked-LM mode's special ids are the tokenizer's.
static_assert(modes::kTokenPad == BpeTokenizer::kPad && modes::kTokenMask == BpeTokenizer::kMask &&
              modes::kTokenCls == BpeTokenizer::kCls && modes::kFirstRealToken == BpeTokenizer::kFirstByte);

namespace {

void SplitDocuments(const std::string& text, std::vector<std::string>& docs) {
  std::istringstream in(text);
  std::string line, doc;
  const auto flush = [&] {
    if (doc.find_first_not_of(" \t\n") != std::string::npos) docs.push_back(doc);
    doc.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%" || line.find_first_not_of(" \t\r") == std::string::npos) {
      flush();
    } else {
      doc += line;
      doc += '\n';
    }
  }
  flush();
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ReadCorpus(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_symlink() || !entry.is_regular_file() || absl::EndsWith(entry.path().string(), ".dat")) continue;
      files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
  } else if (fs::is_regular_file(path, ec)) {
    files.push_back(path);
  }
  if (files.empty()) return absl::NotFoundError(absl::StrCat("text corpus: no text files at '", path, "'"));
  std::vector<std::string> docs;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("text corpus: cannot read ", f.string()));
    std::stringstream buf;
    buf << in.rdbuf();
    SplitDocuments(buf.str(), docs);
  }
  if (docs.empty()) return absl::InvalidArgumentError(absl::StrCat("text corpus: no documents in '", path, "'"));
  return docs;
}

at::Tensor EncodeDocuments(const BpeTokenizer& tokenizer, const std::vector<std::string>& docs, int64_t seq_len) {
  std::vector<int64_t> rows;
  const int64_t body = seq_len - 1;
  for (const std::string& doc : docs) {
    const std::vector<int32_t> ids = tokenizer.Encode(doc);
    for (size_t at = 0; at < ids.size(); at += static_cast<size_t>(body)) {
      rows.push_back(BpeTokenizer::kCls);
      const size_t end = std::min(ids.size(), at + static_cast<size_t>(body));
      for (size_t k = at; k < end; ++k) rows.push_back(ids[k]);
      for (size_t k = end - at; k < static_cast<size_t>(body); ++k) rows.push_back(BpeTokenizer::kPad);
    }
  }
  return at::tensor(rows, at::kLong).view({-1, seq_len});
}

}  // namespace allround::data
