//===- DataTest.cpp - tokenizer, chat template, formats, long lines -------===//
//
// From a line of a data file to one example: the chat template, the
// tokenizer, the data formats and their labels, and the bounds on long lines
// (reading them and tokenising them in chunks). DataPackingTest.cpp covers
// what happens to the examples after that. Both use the build's tiny
// tokenizer (DataTesting.h).
//
//===----------------------------------------------------------------------===//

#include "DataTesting.h"

#include "runtime/data/chat_template.h"
#include "runtime/data/formats.h"
#include "runtime/data/line_reader.h"

#include <nlohmann/json.hpp>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <cctype>
#include <sstream>

namespace {

/// `json` (possibly written over several lines) as one JSONL line.
std::string jsonl(const std::string &json) { return nlohmann::json::parse(json).dump() + "\n"; }

Status render(const std::string &messagesJson, RenderedChat &out) {
  std::vector<ChatMessage> messages;
  G3RT_RETURN_IF_ERROR(parseChatMessages(nlohmann::json::parse(messagesJson), messages));
  return renderChat(messages, out);
}

std::string renderOk(const std::string &messagesJson) {
  RenderedChat chat;
  Status s = render(messagesJson, chat);
  EXPECT_TRUE(s.ok()) << s.message();
  return chat.text;
}

std::string renderError(const std::string &messagesJson) {
  RenderedChat chat;
  Status s = render(messagesJson, chat);
  EXPECT_FALSE(s.ok()) << "rendered: " << chat.text;
  return s.message();
}

//===----------------------------------------------------------------------===//
// Chat template
//===----------------------------------------------------------------------===//

TEST(ChatTemplate, UserAndAssistantTurns) {
  RenderedChat chat;
  ASSERT_TRUE(render(R"([{"role": "user", "content": "  Hi there \n"},
                         {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": " See you. "}])",
                     chat)
                  .ok());
  EXPECT_EQ(chat.text, "<bos><start_of_turn>user\nHi there<end_of_turn>\n"
                       "<start_of_turn>model\nHello!<end_of_turn>\n"
                       "<start_of_turn>user\nBye<end_of_turn>\n"
                       "<start_of_turn>model\nSee you.<end_of_turn>\n");
  ASSERT_EQ(chat.assistantSpans.size(), 2u);
  auto span = [&](size_t i) {
    return chat.text.substr(chat.assistantSpans[i].begin,
                            chat.assistantSpans[i].end - chat.assistantSpans[i].begin);
  };
  EXPECT_EQ(span(0), "Hello!<end_of_turn>");
  EXPECT_EQ(span(1), "See you.<end_of_turn>");
  EXPECT_EQ(chat.imageParts, 0);
}

TEST(ChatTemplate, SystemTurnAndListContent) {
  RenderedChat chat;
  ASSERT_TRUE(render(R"([
      {"role": "system", "content": [{"type": "text", "text": " Be brief. "},
                                     {"type": "text", "text": "ignored"}]},
      {"role": "user", "content": [{"type": "image", "text": null},
                                   {"type": "text", "text": " What is this? "},
                                   {"type": "image"},
                                   {"type": "text", "text": "\nAnd this?"}]},
      {"role": "assistant", "content": [{"type": "text", "text": "A boat."},
                                        {"type": "text", "text": " A cat. "}]}])",
                     chat)
                  .ok());
  // List items are trimmed and joined without separators; a system list
  // content contributes its first item only (the seed's template).
  EXPECT_EQ(chat.text, "<bos><start_of_turn>system\nBe brief.<end_of_turn>\n"
                       "<start_of_turn>user\n<start_of_image>What is this?<start_of_image>"
                       "And this?<end_of_turn>\n"
                       "<start_of_turn>model\nA boat.A cat.<end_of_turn>\n");
  EXPECT_EQ(chat.imageParts, 2);
  ASSERT_EQ(chat.assistantSpans.size(), 1u);
}

TEST(ChatTemplate, ColumnWiseMessages) {
  EXPECT_EQ(renderOk(R"({"role": ["user", "assistant"], "content": ["a", "b"]})"),
            "<bos><start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n");
}

TEST(ChatTemplate, TrimIsPythonStrip) {
  // U+00A0, U+3000, U+2028 and U+0085 are whitespace to str.strip(); é and
  // U+200B (zero-width space) are not.
  EXPECT_EQ(trimWhitespace("\xC2\xA0\xE3\x80\x80 x y\xE2\x80\xA8\xC2\x85\t"), "x y");
  EXPECT_EQ(trimWhitespace("\xC3\xA9 "), "\xC3\xA9");
  EXPECT_EQ(trimWhitespace("\xE2\x80\x8Bz"), "\xE2\x80\x8Bz");
  EXPECT_EQ(trimWhitespace(" \n\r\v\f "), "");
  EXPECT_EQ(trimWhitespace(""), "");
}

TEST(ChatTemplate, AlternationErrorsNameTheMessage) {
  std::string e = renderError(R"([{"role": "assistant", "content": "hi"}])");
  EXPECT_NE(e.find("messages[0] (assistant)"), std::string::npos) << e;
  EXPECT_NE(e.find("expected a user message"), std::string::npos) << e;

  e = renderError(R"([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])");
  EXPECT_NE(e.find("messages[1] (user)"), std::string::npos) << e;
  EXPECT_NE(e.find("expected a assistant message"), std::string::npos) << e;

  e = renderError(R"([{"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}])");
  EXPECT_NE(e.find("messages[1] (assistant)"), std::string::npos) << e;

  e = renderError(R"([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}])");
  EXPECT_NE(e.find("messages[1] (system)"), std::string::npos) << e;
  EXPECT_NE(e.find("may only come first"), std::string::npos) << e;
}

TEST(ChatTemplate, BadMessagesAreErrors) {
  EXPECT_NE(renderError(R"([{"role": "bot", "content": "a"}])").find("unknown role 'bot'"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "user", "content": " \n "}])").find("empty content"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "user", "content": []}])").find("empty content"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "user", "content": [{"type": "text", "text": null}]}])")
                .find("content[0]"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "user", "content": [{"type": "audio", "text": "x"}]}])")
                .find("unknown type 'audio'"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "user", "content": 5}])").find("'content' must be"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"role": 1, "content": "a"}])").find("'role' must be a string"),
            std::string::npos);
  EXPECT_NE(renderError(R"([{"content": "a"}])").find("has no 'role'"), std::string::npos);
  EXPECT_NE(renderError(R"([])").find("empty"), std::string::npos);
  EXPECT_NE(renderError(R"("hello")").find("list"), std::string::npos);
  EXPECT_NE(renderError(R"([{"role": "system", "content": [{"type": "image"}]},
                            {"role": "user", "content": "a"}])")
                .find("first content part must be text"),
            std::string::npos);
}

//===----------------------------------------------------------------------===//
// Tokenizer
//===----------------------------------------------------------------------===//

TEST_F(DataTest, TokenizerResolvesSpecialTokensByName) {
  const SpecialTokenIds &s = tok.special();
  EXPECT_EQ(s.pad, 0);
  EXPECT_EQ(s.eos, 1);
  EXPECT_EQ(s.bos, 2);
  EXPECT_EQ(s.startOfTurn, 4);
  EXPECT_EQ(s.endOfTurn, 5);
  EXPECT_EQ(s.startOfImage, 6);
  EXPECT_EQ(s.endOfImage, 7);
  EXPECT_EQ(s.imageSoft, 8);
  EXPECT_EQ(tok.vocabSize(), 512);
  EXPECT_EQ(tok.idToPiece(s.startOfTurn), "<start_of_turn>");

  // The folder works as well as the file.
  Tokenizer fromFolder;
  ASSERT_TRUE(Tokenizer::load(fs::path(kTinyTokenizer).parent_path().string(), fromFolder).ok());
  EXPECT_EQ(fromFolder.modelPath(), fs::path(kTinyTokenizer).string());
}

TEST_F(DataTest, TemplatedTextKeepsSpecialTokensWhole) {
  std::vector<int32_t> ids;
  std::vector<TokenSpan> spans;
  std::string text = "<bos><start_of_turn>user\nhi<start_of_image><end_of_turn>\n<eos>";
  tok.encodeTemplated(text, ids, &spans);
  ASSERT_EQ(ids.size(), spans.size());
  ASSERT_GE(ids.size(), 6u);
  EXPECT_EQ(ids.front(), 2);
  EXPECT_EQ(ids[1], 4);
  EXPECT_EQ(ids.back(), 1);
  int count4 = 0, count5 = 0, count6 = 0;
  for (int32_t id : ids) {
    count4 += id == 4;
    count5 += id == 5;
    count6 += id == 6;
  }
  EXPECT_EQ(count4, 1);
  EXPECT_EQ(count5, 1);
  EXPECT_EQ(count6, 1);
  // Spans cover the string in order.
  EXPECT_EQ(spans.front().begin, 0u);
  EXPECT_EQ(spans.front().end, 5u);
  EXPECT_EQ(spans.back().end, text.size());
  // <bos> is a control symbol: plain encode() leaves it as text, as the
  // Python sentencepiece package does.
  std::vector<int32_t> plain;
  tok.encode("<bos>", plain);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 2), 0);
}

TEST_F(DataTest, TokenizerErrorsNameTheFile) {
  Tokenizer t;
  Status s = Tokenizer::load((dir / "missing.model").string(), t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing.model"), std::string::npos) << s.message();

  s = Tokenizer::load(dir.string(), t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("has no tokenizer.model"), std::string::npos) << s.message();

  std::string garbage = write("garbage.model", "this is not a protobuf");
  s = Tokenizer::load(garbage, t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(garbage), std::string::npos) << s.message();
  EXPECT_FALSE(t.loaded());

  std::ifstream in(kTinyTokenizer, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string truncated = write("truncated.model", bytes.substr(0, bytes.size() / 3));
  s = Tokenizer::load(truncated, t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(truncated), std::string::npos) << s.message();
}

TEST_F(DataTest, TokenizerWithoutGemmaTokensIsRefused) {
  // A default SentencePiece model: <unk>, <s>, </s>, no turn markers.
  std::string corpus = write(
      "corpus.txt",
      std::string("the cat sat on the mat\nthe dog ran in the park\na bird sang in a tree\n"));
  std::string prefix = (dir / "plain").string();
  auto trained = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + corpus + " --model_prefix=" + prefix +
      " --vocab_size=40 --model_type=bpe --num_threads=1 --minloglevel=2");
  ASSERT_TRUE(trained.ok()) << trained.ToString();
  Tokenizer t;
  Status s = Tokenizer::load(prefix + ".model", t);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(prefix + ".model"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("<start_of_turn>"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("<pad>"), std::string::npos) << s.message();
}

//===----------------------------------------------------------------------===//
// Formats and labels
//===----------------------------------------------------------------------===//

TEST_F(DataTest, TextIsBosTextEos) {
  DataSplit data;
  std::string path = write("t.jsonl", R"({"text": "The cat sat. 42"})"
                                      "\n");
  ASSERT_TRUE(loadTrainingData(spec(path), data).ok());
  ASSERT_EQ(data.train.size(), 1u);
  std::vector<int32_t> expected = {2};
  tok.encode("The cat sat. 42", expected);
  expected.push_back(1);
  EXPECT_EQ(data.train[0].inputIds, expected);
  EXPECT_EQ(data.train[0].labels, expected);
}

TEST_F(DataTest, MessagesTokenizeTheRenderedConversation) {
  std::string line =
      R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is two plus three?"}]},
                       {"role": "assistant", "content": [{"type": "text", "text": "It is five."}]}]})";
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(spec(write("m.jsonl", jsonl(line))), data).ok());
  ASSERT_EQ(data.train.size(), 1u);
  std::vector<int32_t> expected = {2};
  tok.encode("<start_of_turn>user\nWhat is two plus three?<end_of_turn>\n"
             "<start_of_turn>model\nIt is five.<end_of_turn>\n",
             expected);
  EXPECT_EQ(data.train[0].inputIds, expected);
  // Full-sequence loss by default, as upstream.
  EXPECT_EQ(data.train[0].labels, expected);
}

TEST_F(DataTest, AssistantOnlyLossTrainsAssistantTurns) {
  std::string line = R"({"messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello there."},
      {"role": "user", "content": "Count"},
      {"role": "assistant", "content": "one two"}]})";
  DataSpec s = spec(write("m.jsonl", jsonl(line)));
  s.assistantOnlyLoss = true;
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  ASSERT_EQ(data.train.size(), 1u);
  const Row &row = data.train[0];
  EXPECT_EQ(labelledText(row), "Hello there.<end_of_turn>one two<end_of_turn>");
  // The labelled tokens are the input tokens themselves.
  for (size_t t = 0; t < row.size(); ++t) {
    if (row.labels[t] != kIgnoreIndex) {
      EXPECT_EQ(row.labels[t], row.inputIds[t]);
    }
  }
  EXPECT_EQ(row.labels[0], kIgnoreIndex);
}

TEST_F(DataTest, PromptCompletion) {
  std::string path =
      write("pc.jsonl", R"({"prompt": "Question: capital?\nAnswer:", "completion": " Paris."})"
                        "\n");
  DataSplit full;
  ASSERT_TRUE(loadTrainingData(spec(path), full).ok());
  std::vector<int32_t> expected = {2};
  tok.encode("Question: capital?\nAnswer: Paris.", expected);
  expected.push_back(1);
  EXPECT_EQ(full.train[0].inputIds, expected);
  EXPECT_EQ(full.train[0].labels, expected);

  DataSpec s = spec(path);
  s.assistantOnlyLoss = true;
  DataSplit completionOnly;
  ASSERT_TRUE(loadTrainingData(s, completionOnly).ok());
  EXPECT_EQ(completionOnly.train[0].inputIds, expected);
  EXPECT_EQ(labelledText(completionOnly.train[0]), " Paris.<eos>");

  // Conversational prompt/completion: the completion's assistant turn only.
  std::string conv = write("pcc.jsonl", jsonl(R"({"prompt": [{"role": "user", "content": "a"},
      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
      "completion": [{"role": "assistant", "content": "d"}]})"));
  DataSpec cs = spec(conv);
  cs.assistantOnlyLoss = true;
  DataSplit chat;
  ASSERT_TRUE(loadTrainingData(cs, chat).ok());
  EXPECT_EQ(labelledText(chat.train[0]), "d<end_of_turn>");
}

TEST_F(DataTest, PreTokenizedLinesStillWork) {
  DataSplit data;
  std::string path =
      write("tok.jsonl", "{\"input_ids\": [2, 10, 11, 1], \"labels\": [-100, 10, 11, 1]}\n"
                         "{\"input_ids\": [2, 12]}\n");
  DataSpec s = spec(path);
  s.tokenizerPath.clear();
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  ASSERT_EQ(data.train.size(), 2u);
  EXPECT_EQ(data.train[0].labels, (std::vector<int32_t>{-100, 10, 11, 1}));
  EXPECT_EQ(data.train[1].labels, (std::vector<int32_t>{2, 12}));

  std::string bad = write("bad.jsonl", "{\"input_ids\": [2, 512]}\n");
  s = spec(bad);
  Status st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(bad + ":1: field 'input_ids'[1] = 512"), std::string::npos)
      << st.message();
}

TEST_F(DataTest, ImagesDroppedOrMasked) {
  std::string lines =
      R"({"messages": [{"role": "user", "content": [{"type": "image", "text": null}, {"type": "text", "text": "What is it?"}]}, {"role": "assistant", "content": "A boat."}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]})"
      "\n";
  std::string path = write("img.jsonl", lines);
  DataSplit dropped;
  ASSERT_TRUE(loadTrainingData(spec(path), dropped).ok());
  EXPECT_EQ(dropped.stats.imageSamples, 1);
  ASSERT_EQ(dropped.train.size(), 1u);
  EXPECT_EQ(std::count(dropped.train[0].inputIds.begin(), dropped.train[0].inputIds.end(), 6), 0);

  DataSpec s = spec(path);
  s.images = "mask";
  DataSplit masked;
  ASSERT_TRUE(loadTrainingData(s, masked).ok());
  EXPECT_EQ(masked.stats.imageSamples, 1);
  ASSERT_EQ(masked.train.size(), 2u);
  const Row &row = masked.train[0];
  size_t images = 0;
  for (size_t t = 0; t < row.size(); ++t) {
    if (row.inputIds[t] == 6) {
      ++images;
      EXPECT_EQ(row.labels[t], kIgnoreIndex);
    } else {
      EXPECT_EQ(row.labels[t], row.inputIds[t]);
    }
  }
  EXPECT_EQ(images, 1u);

  // Only image samples, dropped: the error says why there is nothing left.
  std::string onlyImages = write("only.jsonl", lines.substr(0, lines.find('\n') + 1));
  Status st = loadTrainingData(spec(onlyImages), dropped);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no training examples"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("--images mask"), std::string::npos) << st.message();

  s.images = "blur";
  EXPECT_FALSE(loadTrainingData(s, masked).ok());
}

TEST_F(DataTest, RightTruncation) {
  std::string path = write(
      "long.jsonl",
      R"({"text": "The library is open from nine in the morning until eight in the evening."})"
      "\n"
      R"({"text": "Hi"})"
      "\n");
  DataSpec s = spec(path);
  s.seqLen = 8;
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  EXPECT_EQ(data.stats.truncated, 1);
  ASSERT_EQ(data.train.size(), 2u);
  EXPECT_EQ(data.train[0].size(), 8u);
  EXPECT_EQ(data.train[0].inputIds[0], 2);
  EXPECT_NE(data.train[0].inputIds.back(), 1); // the tail, eos included, is cut
  EXPECT_LT(data.train[1].size(), 8u);
}

TEST_F(DataTest, FormatDetection) {
  DataSplit data;
  Status s = loadTrainingData(spec(write("amb.jsonl", R"({"text": "a", "messages": []})"
                                                      "\n")),
                              data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(":1: ambiguous format"), std::string::npos) << s.message();

  s = loadTrainingData(spec(write("unk.jsonl", R"({"content": "a"})"
                                               "\n")),
                       data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(":1: unknown format"), std::string::npos) << s.message();

  s = loadTrainingData(spec(write("half.jsonl", R"({"prompt": "a"})"
                                                "\n")),
                       data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'completion' is missing"), std::string::npos) << s.message();

  DataSpec forced = spec(write("forced.jsonl", R"({"text": "a"})"
                                               "\n"));
  forced.format = "messages";
  s = loadTrainingData(forced, data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("field 'messages' is missing"), std::string::npos) << s.message();

  // An explicit format settles a line that has several formats' fields.
  DataSpec text = spec(write("both.jsonl", R"({"text": "a b", "messages": 5})"
                                           "\n"));
  text.format = "text";
  DataSplit ok;
  ASSERT_TRUE(loadTrainingData(text, ok).ok());
  EXPECT_EQ(ok.train.size(), 1u);

  forced.format = "chat";
  s = loadTrainingData(forced, data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("unknown data format 'chat'"), std::string::npos);
}

TEST_F(DataTest, BadLinesAreFatalOrSkipped) {
  std::string path = write("mixed.jsonl", R"({"text": "good one"})"
                                          "\n"
                                          R"({"messages": [{"role": "assistant", "content": "x"}]})"
                                          "\n"
                                          "\n"
                                          R"({"messages": [{"role": "robot", "content": "x"}]})"
                                          "\n"
                                          "{not json\n"
                                          R"({"text": ""})"
                                          "\n"
                                          R"({"text": "good two"})"
                                          "\n");
  DataSplit data;
  Status s = loadTrainingData(spec(path), data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(path + ":2: messages[0] (assistant)"), std::string::npos)
      << s.message();

  DataSpec skip = spec(path);
  skip.skipBadLines = true;
  DataSplit skipped;
  ASSERT_TRUE(loadTrainingData(skip, skipped).ok());
  EXPECT_EQ(skipped.stats.lines, 7);
  EXPECT_EQ(skipped.stats.skipped, 4);
  EXPECT_EQ(skipped.train.size(), 2u);
  ASSERT_EQ(skipped.warnings.size(), 4u);
  EXPECT_NE(skipped.warnings[0].find(path + ":2:"), std::string::npos);
  EXPECT_NE(skipped.warnings[1].find(path + ":4: messages[0] has unknown role 'robot'"),
            std::string::npos)
      << skipped.warnings[1];
  EXPECT_NE(skipped.warnings[2].find(path + ":5: not valid JSON"), std::string::npos);
  EXPECT_NE(skipped.warnings[3].find(path + ":6: field 'text' is empty"), std::string::npos);
}

TEST_F(DataTest, TextWithoutTokenizerIsASetupError) {
  DataSpec s = spec(write("t.jsonl", R"({"input_ids": [2, 3]})"
                                     "\n"
                                     R"({"text": "a"})"
                                     "\n"));
  s.tokenizerPath.clear();
  s.skipBadLines = true; // not a bad line: skipping would drop every text line
  DataSplit data;
  Status st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(":2: a text line needs a tokenizer"), std::string::npos)
      << st.message();
}

TEST_F(DataTest, EmptyDataAndBadTokenizerAreErrors) {
  DataSplit data;
  std::string empty = write("empty.jsonl", "\n  \n");
  Status s = loadTrainingData(spec(empty), data);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), empty + ": no training examples");

  DataSpec small = spec(write("a.jsonl", R"({"text": "a"})"
                                         "\n"));
  small.vocabSize = 100;
  s = loadTrainingData(small, data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("more than the model's vocab_size 100"), std::string::npos);

  DataSpec missing = spec(write("b.jsonl", R"({"text": "a"})"
                                           "\n"));
  missing.tokenizerPath = (dir / "nothing").string();
  s = loadTrainingData(missing, data);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("nothing"), std::string::npos);
}

TEST_F(DataTest, FoldersWhereFilesAreExpected) {
  // A folder as the data file is named as one (it used to read as empty:
  // "no training examples").
  fs::create_directories(dir / "data.jsonl");
  DataSplit data;
  Status s = loadTrainingData(spec((dir / "data.jsonl").string()), data);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "data file " + (dir / "data.jsonl").string() + " is a directory");

  // A tokenizer folder whose tokenizer.model is a folder.
  fs::create_directories(dir / "tok" / "tokenizer.model");
  Tokenizer t;
  s = Tokenizer::load((dir / "tok").string(), t);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(),
            "tokenizer " + (dir / "tok" / "tokenizer.model").string() + " is a directory");
  EXPECT_FALSE(t.loaded());
}

//===----------------------------------------------------------------------===//
// Long lines: bounded reading and tokenisation
//===----------------------------------------------------------------------===//

/// Varied text of about `bytes` bytes: words, digits, punctuation, runs of
/// spaces and newlines, two- and three-byte characters, and a turn marker.
std::string variedText(size_t bytes) {
  static const char *words[] = {"The",
                                "library",
                                "opens",
                                "at",
                                "nine,",
                                "and",
                                "closes",
                                "at",
                                "8.",
                                "Caf\xC3\xA9",
                                "\xE6\x97\xA5\xE6\x9C\xAC",
                                "x  y",
                                "(42)",
                                "\n",
                                "--",
                                "<start_of_turn>",
                                "tab\t",
                                "well-known",
                                "A",
                                "\n\n"};
  std::string out;
  for (size_t i = 0; out.size() < bytes; ++i) {
    out += words[(i * 7 + i / 5) % (sizeof(words) / sizeof(words[0]))];
    out += i % 3 ? " " : "";
  }
  return out;
}

TEST(LineReader, SplitsAsGetlineDoes) {
  for (std::string text :
       {std::string(""), std::string("\n"), std::string("a"), std::string("a\n"),
        std::string("a\n\nb"), std::string("x\r\ny\n"), std::string(200000, 'z') + "\nq"}) {
    std::istringstream expected(text), in(text);
    LineReader reader(in, 1 << 20);
    std::string want, got;
    while (std::getline(expected, want)) {
      ASSERT_TRUE(reader.next(got));
      EXPECT_FALSE(reader.tooLong());
      EXPECT_EQ(got, want);
      EXPECT_EQ(reader.lineBytes(), want.size());
    }
    EXPECT_FALSE(reader.next(got));
  }
}

TEST(LineReader, LongLinesAreNotKept) {
  std::string text =
      std::string(10, 'a') + "\n" + std::string(11, 'b') + "\n" + std::string(300000, 'c') + "\nd";
  std::istringstream in(text);
  LineReader reader(in, 10);
  std::string line;
  ASSERT_TRUE(reader.next(line));
  EXPECT_FALSE(reader.tooLong()); // exactly the limit
  EXPECT_EQ(line, std::string(10, 'a'));
  ASSERT_TRUE(reader.next(line));
  EXPECT_TRUE(reader.tooLong());
  EXPECT_EQ(reader.lineBytes(), 11u);
  EXPECT_TRUE(line.empty());
  ASSERT_TRUE(reader.next(line));
  EXPECT_TRUE(reader.tooLong());
  EXPECT_EQ(reader.lineBytes(), 300000u);
  EXPECT_LE(line.capacity(), 64u * 1024);
  ASSERT_TRUE(reader.next(line));
  EXPECT_FALSE(reader.tooLong());
  EXPECT_EQ(line, "d");
  EXPECT_FALSE(reader.next(line));
}

TEST_F(DataTest, LineOverMaxLineBytesIsAnErrorOrSkipped) {
  std::string longLine = R"({"text": ")" + std::string(2000, 'a') + R"("})";
  std::string path = write("long.jsonl", R"({"text": "first"})"
                                         "\n" +
                                             longLine + "\n" +
                                             R"({"text": "third"})"
                                             "\n");
  DataSpec s = spec(path);
  s.maxLineBytes = 1000;
  DataSplit data;
  Status st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.message(), path + ":2: the line has " + std::to_string(longLine.size()) +
                              " bytes, more than max_line_bytes (1000; --max-line-bytes sets "
                              "it) (use --skip-bad-lines to skip such lines)");

  s.skipBadLines = true;
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  EXPECT_EQ(data.stats.lines, 3);
  EXPECT_EQ(data.stats.skipped, 1);
  ASSERT_EQ(data.train.size(), 2u);
  ASSERT_EQ(data.warnings.size(), 1u);
  EXPECT_NE(data.warnings[0].find(path + ":2: the line has"), std::string::npos)
      << data.warnings[0];
  EXPECT_NE(data.warnings[0].find("; line skipped"), std::string::npos);

  // The default limit reads it; a limit that is not positive is refused.
  EXPECT_TRUE(loadTrainingData(spec(path), data).ok());
  EXPECT_EQ(data.train.size(), 3u);
  s.maxLineBytes = 0;
  st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("max_line_bytes must be positive"), std::string::npos);
}

TEST_F(DataTest, ChunkedEncodingEqualsTheWholeText) {
  ASSERT_TRUE(tok.exactChunks()); // identity, no dummy prefix, BPE
  std::string text = variedText(40000);
  tok.setChunkBytes(size_t(1) << 40);
  std::vector<int32_t> whole;
  std::vector<TokenSpan> wholeSpans;
  tok.encodeTemplated(text, whole, &wholeSpans);
  for (size_t chunk : {size_t(64), size_t(1000), size_t(4096)}) {
    tok.setChunkBytes(chunk);
    std::vector<int32_t> ids, plain;
    std::vector<TokenSpan> spans;
    tok.encodeTemplated(text, ids, &spans);
    EXPECT_EQ(ids, whole) << "chunks of " << chunk;
    ASSERT_EQ(spans.size(), wholeSpans.size());
    for (size_t i = 0; i < spans.size(); ++i) {
      ASSERT_EQ(spans[i].begin, wholeSpans[i].begin) << i;
      ASSERT_EQ(spans[i].end, wholeSpans[i].end) << i;
    }
    tok.encodeTemplated(text, plain);
    EXPECT_EQ(plain, whole);
    // The first tokens only: the same prefix.
    for (size_t n : {size_t(0), size_t(1), size_t(300), whole.size(), whole.size() + 5}) {
      std::vector<int32_t> first = {-1};
      std::vector<TokenSpan> firstSpans;
      tok.encodeTemplated(text, first, &firstSpans, n);
      size_t kept = std::min(n, whole.size());
      ASSERT_EQ(first.size(), kept + 1);
      EXPECT_TRUE(std::equal(first.begin() + 1, first.end(), whole.begin()));
      EXPECT_EQ(firstSpans.size(), kept);
    }
  }
}

TEST_F(DataTest, ChunksWithoutASafeCutStillCoverTheText) {
  // A character that some piece holds twice in a row: a run of it offers
  // no cut that splits no token, so the chunks end at token boundaries.
  std::string repeated;
  for (int32_t id = 0; id < tok.vocabSize() && repeated.empty(); ++id) {
    std::string piece = tok.idToPiece(id);
    if (piece.rfind("<0x", 0) == 0) // byte pieces match no text
      continue;
    for (size_t i = 0; i + 1 < piece.size(); ++i)
      if (std::isalpha(static_cast<unsigned char>(piece[i])) && piece[i] == piece[i + 1])
        repeated = piece.substr(i, 1);
  }
  if (repeated.empty())
    GTEST_SKIP() << "no piece holds a doubled letter";
  std::string text(20000, repeated[0]);
  tok.setChunkBytes(1000);
  std::vector<int32_t> ids;
  std::vector<TokenSpan> spans;
  tok.encode(text, ids, &spans);
  ASSERT_EQ(ids.size(), spans.size());
  ASSERT_FALSE(spans.empty());
  EXPECT_EQ(spans.front().begin, 0u);
  for (size_t i = 1; i < spans.size(); ++i)
    ASSERT_EQ(spans[i].begin, spans[i - 1].end) << i;
  EXPECT_EQ(spans.back().end, text.size());
  std::string joined;
  for (int32_t id : ids)
    joined += tok.idToPiece(id);
  EXPECT_EQ(joined, text);
  std::vector<int32_t> first;
  tok.encode(text, first, nullptr, 10);
  EXPECT_EQ(first, std::vector<int32_t>(ids.begin(), ids.begin() + 10));
}

TEST_F(DataTest, ChunksOfADummyPrefixModelAreApproximate) {
  // SentencePiece's defaults: NFKC normalisation and a dummy prefix at the
  // start of every chunk, so chunks are not exact; they still give the
  // first tokens and about as many tokens as the whole text.
  std::string corpus = write("corpus.txt", variedText(3000));
  std::string prefix = (dir / "nfkc").string();
  auto trained = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + corpus + " --model_prefix=" + prefix +
      " --vocab_size=80 --hard_vocab_limit=false --model_type=unigram --num_threads=1"
      " --minloglevel=2"
      " --pad_id=0 --pad_piece=<pad> --eos_id=1 --eos_piece=<eos> --bos_id=2"
      " --bos_piece=<bos> --unk_id=3 --user_defined_symbols=<start_of_turn>,<end_of_turn>");
  ASSERT_TRUE(trained.ok()) << trained.ToString();
  Tokenizer nfkc;
  ASSERT_TRUE(Tokenizer::load(prefix + ".model", nfkc).ok());
  EXPECT_FALSE(nfkc.exactChunks());
  std::string text = variedText(20000);
  std::vector<int32_t> whole, chunked;
  nfkc.encode(text, whole);
  nfkc.setChunkBytes(1000);
  nfkc.encode(text, chunked);
  ASSERT_GE(chunked.size(), 100u);
  EXPECT_EQ(std::vector<int32_t>(chunked.begin(), chunked.begin() + 100),
            std::vector<int32_t>(whole.begin(), whole.begin() + 100));
  EXPECT_NEAR(double(chunked.size()), double(whole.size()), 0.05 * double(whole.size()));
}

TEST_F(DataTest, LongTextAndChatLinesKeepTheirFirstTokens) {
  // A 4 MB text and a 4 MB user turn: the rows hold the first seqLen tokens
  // of the whole encoding (that of a 20 kB prefix, tokenised in one piece).
  std::string head = variedText(20000);
  std::string text = head + variedText(4 << 20);
  nlohmann::json textLine = {{"text", text}};
  nlohmann::json chatLine = {
      {"messages",
       {{{"role", "user"}, {"content", text}}, {{"role", "assistant"}, {"content", "ok"}}}}};
  std::string path = write("long.jsonl", textLine.dump() + "\n" + chatLine.dump() + "\n");
  DataSpec s = spec(path);
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  EXPECT_EQ(data.stats.truncated, 2);
  ASSERT_EQ(data.train.size(), 2u);

  Tokenizer whole;
  ASSERT_TRUE(Tokenizer::load(kTinyTokenizer, whole).ok());
  whole.setChunkBytes(size_t(1) << 40);
  std::vector<int32_t> expected = {2};
  whole.encode(head, expected);
  expected.resize(256);
  EXPECT_EQ(data.train[0].inputIds, expected);
  EXPECT_EQ(data.train[0].labels, expected);

  expected = {2};
  whole.encodeTemplated("<start_of_turn>user\n" + head, expected);
  expected.resize(256);
  EXPECT_EQ(data.train[1].inputIds, expected);
  EXPECT_EQ(data.train[1].labels, expected);
}

TEST_F(DataTest, LongPreTokenizedLineIsTruncatedAndChecked) {
  std::string ids;
  for (int i = 0; i < 100000; ++i)
    ids += (i ? "," : "") + std::to_string(10 + i % 400);
  DataSpec s = spec(write("ids.jsonl", R"({"input_ids": [)" + ids + "]}\n"));
  s.tokenizerPath.clear();
  DataSplit data;
  ASSERT_TRUE(loadTrainingData(s, data).ok());
  EXPECT_EQ(data.stats.truncated, 1);
  ASSERT_EQ(data.train.size(), 1u);
  EXPECT_EQ(data.train[0].size(), 256u);
  EXPECT_EQ(data.train[0].inputIds[255], 10 + 255);

  // An id past the cut is still checked, and so are the lengths.
  s = spec(write("bad.jsonl", R"({"input_ids": [)" + ids + ",512]}\n"));
  s.tokenizerPath.clear();
  Status st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find(":1: field 'input_ids'[100000] = 512"), std::string::npos)
      << st.message();
  s = spec(
      write("labels.jsonl", R"({"input_ids": [)" + ids + R"(], "labels": [)" + ids + ",3]}\n"));
  s.tokenizerPath.clear();
  st = loadTrainingData(s, data);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("field 'labels' has 100001 entries, 'input_ids' 100000"),
            std::string::npos)
      << st.message();
}

} // namespace
