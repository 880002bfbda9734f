#ifndef ALLROUND_DATA_BPE_TOKENIZER_H_
#define ALLROUND_DATA_BPE_TOKENIZER_H_

// A byte-level BPE tokenizer (Sennrich et al. 2016, on bytes as GPT-2 does), trained on a local
// corpus; the masked-LM mode's vocabulary. Text is first cut into chunks (an optional leading
// space followed by a run of letters and digits, or by a run of other visible bytes; or a run of
// whitespace), then each chunk's bytes are merged by the learned merges in the order they were
// learned. Every byte sequence encodes, and decoding concatenates the tokens' bytes, so decode
// after encode gives the text back exactly.
//
// Ids: 0 [PAD], 1 [MASK], 2 [CLS], 3 [SEP], then the 256 bytes, then one id per merge. Training is
// deterministic: the most frequent adjacent pair is merged, ties broken by the smaller ids.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace allround::data {

class BpeTokenizer {
 public:
  static constexpr int32_t kPad = 0, kMask = 1, kCls = 2, kSep = 3, kFirstByte = 4;
  static constexpr int32_t kBaseVocab = kFirstByte + 256;

  // Learns merges from `text` until the vocabulary has `vocab_size` entries or no adjacent pair
  // occurs twice. Fails if vocab_size < kBaseVocab.
  static absl::StatusOr<BpeTokenizer> Train(const std::string& text, int32_t vocab_size);

  // The serialized form (a text header and one merge per line), and back; Parse checks it.
  std::string Serialize() const;
  static absl::StatusOr<BpeTokenizer> Parse(const std::string& serialized);

  std::vector<int32_t> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;  // special tokens decode to nothing

  int32_t vocab_size() const { return kBaseVocab + static_cast<int32_t>(merges_.size()); }
  // The bytes a token stands for ("" for special tokens).
  const std::string& TokenBytes(int32_t id) const { return bytes_[id]; }

 private:
  void Rebuild();  // bytes_ and rank_ from merges_
  void EncodeChunk(const std::string& chunk, std::vector<int32_t>& out) const;

  std::vector<std::pair<int32_t, int32_t>> merges_;  // merge i makes id kBaseVocab + i
  std::vector<std::string> bytes_;
  std::vector<std::pair<uint64_t, int32_t>> rank_;  // (pair key, merge index), sorted by key
};

// Cuts text into the chunks BPE works within (see above); their concatenation is the text.
std::vector<std::string> PreTokenize(const std::string& text);

}  // namespace allround::data

#endif  // ALLROUND_DATA_BPE_TOKENIZER_H_
