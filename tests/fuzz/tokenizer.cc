// Fuzz target: the BPE tokenizer file (data/bpe_tokenizer.h, BpeTokenizer::Parse), which a
// text job reads from text.tokenizer. Every input must parse or give an error; a parsed
// tokenizer must encode and decode a short text without crashing, its ids within the vocabulary,
// and serialize back to what parses again.

#include <cstdlib>
#include <string>

#include "data/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto tokenizer = allround::data::BpeTokenizer::Parse(text);
  if (!tokenizer.ok()) return 0;
  const std::string sample = "the quick brown fox \xe2\x80\x94 jumps";
  const auto ids = tokenizer->Encode(sample);
  for (int32_t id : ids) {
    if (id < 0 || id >= tokenizer->vocab_size()) std::abort();
  }
  if (tokenizer->Decode(ids) != sample) std::abort();
  if (!allround::data::BpeTokenizer::Parse(tokenizer->Serialize()).ok()) std::abort();
  return 0;
}
