//===- DataTesting.h - shared fixture of the data tests ---------*- C++ -*-===//
//
// The fixture of DataTest.cpp and DataPackingTest.cpp: a fresh folder per
// test, the build's tiny tokenizer, and the DataSpec the loader tests start
// from. It lives in a named namespace so that both files' TEST_F(DataTest,
// ...) use one fixture type, as googletest requires of one test suite.
//
//===----------------------------------------------------------------------===//

#ifndef G3MOE_TEST_UNITTESTS_RUNTIME_DATATESTING_H
#define G3MOE_TEST_UNITTESTS_RUNTIME_DATATESTING_H

#include "runtime/data/tokenizer.h"
#include "runtime/train/data.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

using namespace g3rt;

namespace g3rt_data_testing {

namespace fs = std::filesystem;

/// The tiny tokenizer the build trains: <pad> 0, <eos> 1, <bos> 2, <unk> 3,
/// then the user-defined <start_of_turn> 4, <end_of_turn> 5,
/// <start_of_image> 6, <end_of_image> 7, <image_soft_token> 8.
inline const char *const kTinyTokenizer = G3MOE_TINY_TOKENIZER;

/// A fresh folder per test.
class DataTest : public ::testing::Test {
protected:
  void SetUp() override {
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir = fs::temp_directory_path() /
          (std::string("g3moe-data-") + info->name() + "-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    ASSERT_TRUE(Tokenizer::load(kTinyTokenizer, tok).ok());
  }
  void TearDown() override { fs::remove_all(dir); }

  std::string write(const std::string &name, const std::string &text) {
    std::string path = (dir / name).string();
    std::ofstream(path) << text;
    return path;
  }

  DataSpec spec(const std::string &path) {
    DataSpec s;
    s.path = path;
    s.tokenizerPath = kTinyTokenizer;
    s.seqLen = 256;
    s.vocabSize = 512;
    return s;
  }

  /// The labelled tokens' pieces, concatenated, with SentencePiece's
  /// space marker turned back into a space.
  std::string labelledText(const Row &row) {
    std::string out;
    for (size_t t = 0; t < row.size(); ++t)
      if (row.labels[t] != kIgnoreIndex)
        out += tok.idToPiece(row.labels[t]);
    std::string spaced;
    for (size_t i = 0; i < out.size(); ++i) {
      if (out.compare(i, 3, "\xE2\x96\x81") == 0) {
        spaced += ' ';
        i += 2;
      } else {
        spaced += out[i];
      }
    }
    return spaced;
  }

  fs::path dir;
  Tokenizer tok;
};

} // namespace g3rt_data_testing

using namespace g3rt_data_testing;

#endif // G3MOE_TEST_UNITTESTS_RUNTIME_DATATESTING_H
