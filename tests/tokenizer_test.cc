// The byte-level BPE tokenizer: chunking, training, exact round trips, serialization.

#include "data/bpe_tokenizer.h"
#include "data/text_corpus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace allround::data {
namespace {

TEST(PreTokenize, KeepsOneLeadingSpaceWithAWordAndConcatenatesBack) {
  const std::string text = "Hello,  world!\n  it's 42\tok ";
  const auto chunks = PreTokenize(text);
  EXPECT_THAT(chunks, testing::ElementsAre("Hello", ",", " ", " world", "!", "\n ", " it", "'", "s", " 42", "\t",
                                           "ok", " "));
  std::string joined;
  for (const auto& c : chunks) joined += c;
  EXPECT_EQ(joined, text);
}

TEST(BpeTokenizer, LearnsFrequentWordsAndRoundTripsAnyText) {
  std::string corpus;
  for (int i = 0; i < 50; ++i) corpus += "the cat sat on the mat. the dog sat on the log.\n";
  auto tok = BpeTokenizer::Train(corpus, BpeTokenizer::kBaseVocab + 12);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), BpeTokenizer::kBaseVocab + 12);
  // Asked for more than the corpus supports, it stops once every chunk is one token.
  auto all = BpeTokenizer::Train(corpus, 8000);
  EXPECT_LT(all->vocab_size(), 8000);
  EXPECT_EQ(all->Encode(" the cat").size(), 2u);
  // " the" is frequent enough to be one token.
  const auto the = tok->Encode(" the");
  ASSERT_EQ(the.size(), 1u);
  EXPECT_EQ(tok->TokenBytes(the[0]), " the");
  EXPECT_LT(tok->Encode(corpus).size(), corpus.size() / 2);
  EXPECT_LT(all->Encode(corpus).size(), corpus.size() / 3);
  for (const std::string& text : {std::string("the cat sat on the log."), std::string("Zebras & émigrés: ünïcode ✓\n\n"),
                                 std::string("  leading, trailing  "), std::string("\x01\xff binary\x00 bytes", 16),
                                 std::string()}) {
    EXPECT_EQ(tok->Decode(tok->Encode(text)), text);
  }
  // Deterministic, and serialization gives the same tokenizer back.
  auto again = BpeTokenizer::Train(corpus, BpeTokenizer::kBaseVocab + 12);
  EXPECT_EQ(again->Serialize(), tok->Serialize());
  auto parsed = BpeTokenizer::Parse(tok->Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->Encode(corpus), tok->Encode(corpus));
  // Special tokens decode to nothing; bad input is refused with a reason.
  EXPECT_EQ(tok->Decode({BpeTokenizer::kPad, BpeTokenizer::kMask}), "");
  EXPECT_FALSE(BpeTokenizer::Train(corpus, 100).ok());
  EXPECT_FALSE(BpeTokenizer::Parse("allround-bpe v1\n1\n4 999\n").ok());
  EXPECT_FALSE(BpeTokenizer::Parse("something else").ok());
}

TEST(BpeTokenizer, StopsWhenNoPairRepeats) {
  auto tok = BpeTokenizer::Train("abcd", 8000);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->vocab_size(), BpeTokenizer::kBaseVocab);
}

TEST(BpeTokenizer, TrainsOnTheFortunesCorpusWhenInstalled) {
  std::ifstream in("/usr/share/games/fortunes/computers");
  if (!in) GTEST_SKIP() << "no fortunes";
  std::stringstream buf;
  buf << in.rdbuf();
  const std::string text = buf.str();
  auto tok = BpeTokenizer::Train(text, 2000);
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->vocab_size(), 2000);
  EXPECT_EQ(tok->Decode(tok->Encode(text)), text);
  EXPECT_LT(tok->Encode(text).size() * 2, text.size());  // under half as many tokens as bytes
}

TEST(TextCorpus, SplitsFortunesIntoDocumentsAndEncodesRows) {
  const std::string dir = testing::TempDir() + "/corpus";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/a") << "First fortune,\ntwo lines.\n%\nSecond.\n%\n";
  std::ofstream(dir + "/a.dat") << "\x01\x02 binary index";
  std::ofstream(dir + "/b") << "A paragraph.\n\nAnother paragraph here.\n";
  auto docs = ReadCorpus(dir);
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_THAT(*docs, testing::ElementsAre("First fortune,\ntwo lines.\n", "Second.\n", "A paragraph.\n",
                                          "Another paragraph here.\n"));
  EXPECT_FALSE(ReadCorpus(dir + "/missing").ok());
  auto tok = BpeTokenizer::Train("two lines", BpeTokenizer::kBaseVocab);
  const at::Tensor rows = EncodeDocuments(*tok, {"abcdefg", "xy"}, 4);
  // [CLS] + 3 tokens per row: "abc", "def", "g" + padding, "xy" + padding.
  ASSERT_EQ(rows.sizes().vec(), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(rows[0][0].item<int64_t>(), BpeTokenizer::kCls);
  EXPECT_EQ(tok->Decode({static_cast<int32_t>(rows[2][1].item<int64_t>())}), "g");
  EXPECT_EQ(rows[2][2].item<int64_t>(), BpeTokenizer::kPad);
  EXPECT_EQ(rows[3][3].item<int64_t>(), BpeTokenizer::kPad);
}

}  // namespace
}  // namespace allround::data
