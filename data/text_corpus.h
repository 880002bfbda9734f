#ifndef ALLROUND_DATA_TEXT_CORPUS_H_
#define ALLROUND_DATA_TEXT_CORPUS_H_

// Plain-text corpora for the masked-LM mode: a file, or the regular files of a directory (sorted
// by name; not recursive; symbolic links and strfile indexes, *.dat, skipped: the layout of
// Debian's fortunes). Documents are the pieces between lines that are empty or a lone "%" (the
// fortune separator).

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/bpe_tokenizer.h"

namespace allround::data {

absl::StatusOr<std::vector<std::string>> ReadCorpus(const std::string& path);

// Documents as fixed-length rows [N, seq_len] of int64 ids: each document's tokens in windows of
// seq_len - 1 behind a [CLS], padded with [PAD]; documents without tokens are skipped.
at::Tensor EncodeDocuments(const BpeTokenizer& tokenizer, const std::vector<std::string>& docs, int64_t seq_len);

}  // namespace allround::data

#endif  // ALLROUND_DATA_TEXT_CORPUS_H_
