//===- DataPackingTest.cpp - packing, loss denominators, split, dumps -----===//
//
// What the loader does with examples once they are rows: packing documents
// into rows with their segment ids and positions, the micro-batch's loss
// denominators, the seeded train/eval split, and the rows' JSONL dump.
// DataTest.cpp covers how a line becomes an example.
//
//===----------------------------------------------------------------------===//

#include "DataTesting.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>
#include <vector>

namespace {

//===----------------------------------------------------------------------===//
// Packing
//===----------------------------------------------------------------------===//

TEST(Packing, DocumentsAreIsolated) {
  std::vector<Row> examples = {Row::single({10, 11, 12}, {10, 11, 12}),
                               Row::single({20, 21, 22, 23}, {-100, 21, 22, 23}),
                               Row::single({30, 31, 32, 33, 34}, {30, 31, 32, 33, 34})};
  std::vector<Row> rows = packRows(examples, 8);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].inputIds, (std::vector<int32_t>{10, 11, 12, 20, 21, 22, 23}));
  EXPECT_EQ(rows[0].segmentIds, (std::vector<int32_t>{1, 1, 1, 2, 2, 2, 2}));
  EXPECT_EQ(rows[0].positions, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(rows[0].labels, (std::vector<int32_t>{10, 11, 12, -100, 21, 22, 23}));
  EXPECT_EQ(rows[1].segmentIds, (std::vector<int32_t>{1, 1, 1, 1, 1}));

  MicroBatch mb;
  assembleMicroBatch(rows, {0, 1}, 3, 8, 0, mb);
  // Row 0: targets are the next label within a document only.
  std::vector<int32_t> row0(mb.targets.begin(), mb.targets.begin() + 8);
  EXPECT_EQ(row0, (std::vector<int32_t>{11, 12, -100, 21, 22, 23, -100, -100}));
  std::vector<int32_t> seg0(mb.segmentIds.begin(), mb.segmentIds.begin() + 8);
  EXPECT_EQ(seg0, (std::vector<int32_t>{1, 1, 1, 2, 2, 2, 2, 0}));
  std::vector<int32_t> pos0(mb.positions.begin(), mb.positions.begin() + 7);
  EXPECT_EQ(pos0, (std::vector<int32_t>{0, 1, 2, 0, 1, 2, 3}));
  EXPECT_EQ(mb.tokens, 12);
  // The loss denominators: the cross-entropy terms (targets, no target
  // across a document boundary), and the labels before the shift.
  EXPECT_EQ(mb.targetCount, 9);
  EXPECT_EQ(mb.lossItems(LossDenominator::Shifted), 9);
  EXPECT_EQ(mb.labelCount, 11);
  EXPECT_EQ(mb.lossItems(LossDenominator::Unshifted), 11);
  // The third row is padding.
  for (int t = 16; t < 24; ++t) {
    EXPECT_EQ(mb.inputIds[size_t(t)], 0);
    EXPECT_EQ(mb.targets[size_t(t)], kIgnoreIndex);
    EXPECT_EQ(mb.segmentIds[size_t(t)], 0);
  }
}

TEST(LossDenominator, Names) {
  LossDenominator d = LossDenominator::Shifted;
  EXPECT_TRUE(parseLossDenominator("unshifted", "x", d).ok());
  EXPECT_EQ(d, LossDenominator::Unshifted);
  EXPECT_TRUE(parseLossDenominator("shifted", "x", d).ok());
  EXPECT_EQ(d, LossDenominator::Shifted);
  Status s = parseLossDenominator("mean", "--loss-denominator", d);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "--loss-denominator: unknown loss denominator 'mean'; expected shifted or unshifted");
}

TEST_F(DataTest, PackingThroughTheLoader) {
  std::string lines;
  for (int i = 0; i < 12; ++i)
    lines += R"({"text": "Count )" + std::to_string(i) +
             R"( and then some more words."})"
             "\n";
  std::string longLine = R"({"text": ")" + std::string(300, 'a') +
                         R"("})"
                         "\n";
  std::string path = write("p.jsonl", lines + longLine);
  DataSpec unpacked = spec(path);
  unpacked.seqLen = 64;
  DataSplit single;
  ASSERT_TRUE(loadTrainingData(unpacked, single).ok());
  ASSERT_EQ(single.train.size(), 13u);
  EXPECT_EQ(single.stats.truncated, 1);

  DataSpec packed = unpacked;
  packed.packing = true;
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(packed, data).ok());
  EXPECT_LT(data.train.size(), 13u);
  EXPECT_EQ(data.stats.trainExamples, 13);
  size_t tokens = 0, documents = 0;
  std::vector<int32_t> all;
  for (const Row &r : data.train) {
    ASSERT_LE(r.size(), 64u);
    tokens += r.size();
    EXPECT_EQ(r.segmentIds.front(), 1);
    for (size_t t = 0; t < r.size(); ++t) {
      bool starts = t == 0 || r.segmentIds[t] != r.segmentIds[t - 1];
      if (starts) {
        ++documents;
        EXPECT_EQ(r.positions[t], 0);
        EXPECT_EQ(r.inputIds[t], 2); // every document starts with <bos>
        if (t > 0) {
          EXPECT_EQ(r.segmentIds[t], r.segmentIds[t - 1] + 1);
        }
      } else {
        EXPECT_EQ(r.positions[t], r.positions[t - 1] + 1);
      }
    }
    all.insert(all.end(), r.inputIds.begin(), r.inputIds.end());
  }
  EXPECT_EQ(documents, 13u);
  size_t unpackedTokens = 0;
  std::vector<int32_t> allSingle;
  for (const Row &r : single.train) {
    unpackedTokens += r.size();
    allSingle.insert(allSingle.end(), r.inputIds.begin(), r.inputIds.end());
  }
  EXPECT_EQ(tokens, unpackedTokens);
  EXPECT_EQ(all, allSingle); // same documents, same order
}

//===----------------------------------------------------------------------===//
// Train/eval split
//===----------------------------------------------------------------------===//

TEST(Split, SeededDeterministicAndProportional) {
  std::vector<size_t> train, eval, train2, eval2, train3, eval3;
  splitExamples(100, 0.1, 42, train, eval);
  EXPECT_EQ(eval.size(), 10u);
  EXPECT_EQ(train.size(), 90u);
  std::set<size_t> all(train.begin(), train.end());
  all.insert(eval.begin(), eval.end());
  EXPECT_EQ(all.size(), 100u);
  EXPECT_TRUE(std::is_sorted(train.begin(), train.end()));
  EXPECT_TRUE(std::is_sorted(eval.begin(), eval.end()));
  // Not simply the tail (R1's unshuffled split) nor the head.
  EXPECT_NE(eval, (std::vector<size_t>{90, 91, 92, 93, 94, 95, 96, 97, 98, 99}));
  EXPECT_NE(eval.back(), 9u);

  splitExamples(100, 0.1, 42, train2, eval2);
  EXPECT_EQ(eval, eval2);
  EXPECT_EQ(train, train2);
  splitExamples(100, 0.1, 7, train3, eval3);
  EXPECT_NE(eval, eval3);

  // HF's train_test_split rounds the test count up.
  splitExamples(15, 0.1, 42, train, eval);
  EXPECT_EQ(eval.size(), 2u);
  splitExamples(15, 0.0, 42, train, eval);
  EXPECT_TRUE(eval.empty());
  EXPECT_EQ(train.size(), 15u);
}

TEST_F(DataTest, SplitThroughTheLoader) {
  std::string lines;
  for (int i = 0; i < 20; ++i)
    lines += R"({"text": "line )" + std::to_string(i) +
             R"("})"
             "\n";
  DataSpec s = spec(write("s.jsonl", lines));
  s.testSize = 0.25;
  s.seed = 3;
  DataSplit a, b;
  ASSERT_TRUE(loadTrainingData(s, a).ok());
  ASSERT_TRUE(loadTrainingData(s, b).ok());
  EXPECT_EQ(a.eval.size(), 5u);
  EXPECT_EQ(a.train.size(), 15u);
  EXPECT_EQ(a.stats.evalExamples, 5);
  ASSERT_EQ(a.eval.size(), b.eval.size());
  for (size_t i = 0; i < a.eval.size(); ++i)
    EXPECT_EQ(a.eval[i].inputIds, b.eval[i].inputIds);

  // Packing comes after the split: eval rows hold only eval examples.
  s.packing = true;
  DataSplit packed;
  ASSERT_TRUE(loadTrainingData(s, packed).ok());
  std::vector<int32_t> evalTokens, packedEvalTokens;
  for (const Row &r : a.eval)
    evalTokens.insert(evalTokens.end(), r.inputIds.begin(), r.inputIds.end());
  for (const Row &r : packed.eval)
    packedEvalTokens.insert(packedEvalTokens.end(), r.inputIds.begin(), r.inputIds.end());
  EXPECT_EQ(evalTokens, packedEvalTokens);
  EXPECT_EQ(packed.eval.size(), 1u);

  DataSpec one = spec(write("one.jsonl", R"({"text": "a"})"
                                         "\n"));
  one.testSize = 0.5;
  Status st = loadTrainingData(one, a);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("leaves none"), std::string::npos) << st.message();
  one.testSize = 1.0;
  EXPECT_FALSE(loadTrainingData(one, a).ok());
}

TEST_F(DataTest, DumpRows) {
  std::vector<Row> rows =
      packRows({Row::single({2, 5}, {-100, 5}), Row::single({2, 6}, {2, 6})}, 8);
  std::string path = (dir / "dump.jsonl").string();
  ASSERT_TRUE(writeRowsJsonl(path, rows).ok());
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["input_ids"], nlohmann::json({2, 5, 2, 6}));
  EXPECT_EQ(j["labels"], nlohmann::json({-100, 5, 2, 6}));
  EXPECT_EQ(j["segment_ids"], nlohmann::json({1, 1, 2, 2}));
  EXPECT_EQ(j["positions"], nlohmann::json({0, 1, 0, 1}));
  EXPECT_FALSE(std::getline(in, line));
}

} // namespace
