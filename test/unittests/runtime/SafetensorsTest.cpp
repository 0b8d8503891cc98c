//===- SafetensorsTest.cpp - safetensors and HF checkpoint I/O tests ------===//
//
// The reader against the writer, every kind of damaged file the reader must
// refuse (with the file and tensor named), sharded checkpoints, and
// loadWeights / saveHFCheckpoint on a small hand-built step: all problems in
// one error, nothing written on failure, multimodal names, upcycling, and the
// LoRA merge.
//
//===----------------------------------------------------------------------===//

#include "runtime/io/safetensors.h"
#include "runtime/exec/state.h"
#include "runtime/io/hf_checkpoint.h"
#include "runtime/train/weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace g3rt;

namespace {

/// A fresh folder per test.
class IoTest : public ::testing::Test {
protected:
  void SetUp() override {
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir =
        fs::temp_directory_path() / ("g3rt-io-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string path(const std::string &name) const { return (dir / name).string(); }
  fs::path dir;
};

/// A file of an 8-byte length, `header` and `data` bytes, as a damaged
/// writer might leave it.
void writeRaw(const std::string &path, const std::string &header, size_t dataBytes,
              uint64_t headerLength = ~uint64_t(0)) {
  std::ofstream out(path, std::ios::binary);
  uint64_t n = headerLength == ~uint64_t(0) ? header.size() : headerLength;
  for (int i = 0; i < 8; ++i)
    out.put(char(n >> (8 * i)));
  out << header;
  out << std::string(dataBytes, '\0');
}

std::string openError(const std::string &path) {
  SafetensorsFile f;
  Status s = SafetensorsFile::open(path, f);
  return s.ok() ? "" : s.message();
}

TEST_F(IoTest, RoundTripEveryDType) {
  std::vector<float> f32 = {1.5f, -2.25f, 3.0f, 0.1f, 7.0f, -0.5f};
  std::vector<uint16_t> bf16 = {floatToBF16(1.0f), floatToBF16(-3.5f), floatToBF16(0.3f)};
  std::vector<uint16_t> f16 = {floatToHalf(0.5f), floatToHalf(-1.25f)};
  std::vector<int32_t> i32 = {1, -2, 3};
  std::vector<int64_t> i64 = {int64_t(1) << 40, -7};
  std::vector<NamedTensor> tensors = {
      {"a.f32", TensorView{f32.data(), DType::F32, {2, 3}}},
      {"b.bf16", TensorView{bf16.data(), DType::BF16, {3}}},
      {"c.f16", TensorView{f16.data(), DType::F16, {2, 1}}},
      {"d.i32", TensorView{i32.data(), DType::I32, {3}}},
      {"e.i64", TensorView{i64.data(), DType::I64, {2}}},
      {"f.empty", TensorView{f32.data(), DType::F32, {0, 4}}},
  };
  ASSERT_TRUE(writeSafetensors(path("t.safetensors"), tensors, {{"format", "pt"}}).ok());

  SafetensorsFile f;
  Status s = SafetensorsFile::open(path("t.safetensors"), f);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(f.entries().size(), 6u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const SafetensorsEntry *a = f.find("a.f32");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::F32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.find("f.empty")->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.find("missing"), nullptr);

  std::vector<float> back(6);
  ASSERT_TRUE(f.read(*a, TensorView{back.data(), DType::F32, {6}}).ok());
  EXPECT_EQ(back, f32);
  // F32 -> BF16 on load rounds to nearest even.
  std::vector<uint16_t> asBF16(6);
  ASSERT_TRUE(f.read(*a, TensorView{asBF16.data(), DType::BF16, {2, 3}}).ok());
  for (size_t i = 0; i < 6; ++i)
    EXPECT_EQ(asBF16[i], floatToBF16(f32[i]));
  // BF16 and F16 -> F32 are exact.
  std::vector<float> wide;
  ASSERT_TRUE(f.readFloats("b.bf16", wide).ok());
  EXPECT_EQ(wide, (std::vector<float>{1.0f, -3.5f, bf16ToFloat(floatToBF16(0.3f))}));
  ASSERT_TRUE(f.readFloats("c.f16", wide).ok());
  EXPECT_EQ(wide, (std::vector<float>{0.5f, -1.25f}));
  // F16 -> BF16 goes through fp32.
  std::vector<uint16_t> halfToBF16(2);
  ASSERT_TRUE(f.read(*f.find("c.f16"), TensorView{halfToBF16.data(), DType::BF16, {2}}).ok());
  EXPECT_EQ(bf16ToFloat(halfToBF16[1]), -1.25f);
  std::vector<int64_t> ints(2);
  ASSERT_TRUE(f.read(*f.find("e.i64"), TensorView{ints.data(), DType::I64, {2}}).ok());
  EXPECT_EQ(ints, i64);
  // Integers never convert, and element counts must match.
  std::vector<float> wrong(3);
  Status bad = f.read(*f.find("d.i32"), TensorView{wrong.data(), DType::F32, {3}});
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("'d.i32'"), std::string::npos) << bad.message();
  bad = f.read(*a, TensorView{wrong.data(), DType::F32, {3}});
  EXPECT_FALSE(bad.ok());
}

TEST_F(IoTest, WriterRefusesDuplicatesAndLeavesNoTemporaryFiles) {
  std::vector<float> v = {1, 2};
  Status s =
      writeSafetensors(path("d.safetensors"), {{"x", TensorView{v.data(), DType::F32, {2}}},
                                               {"x", TensorView{v.data(), DType::F32, {2}}}});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'x' given twice"), std::string::npos);
  ASSERT_TRUE(
      writeSafetensors(path("ok.safetensors"), {{"x", TensorView{v.data(), DType::F32, {2}}}})
          .ok());
  for (const auto &entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

TEST_F(IoTest, TruncatedFileNamesTheTensor) {
  std::vector<float> a(16, 1.0f), b(16, 2.0f);
  ASSERT_TRUE(writeSafetensors(path("t.safetensors"),
                               {{"first", TensorView{a.data(), DType::F32, {16}}},
                                {"second", TensorView{b.data(), DType::F32, {4, 4}}}})
                  .ok());
  fs::resize_file(path("t.safetensors"), fs::file_size(path("t.safetensors")) - 5);
  std::string e = openError(path("t.safetensors"));
  EXPECT_NE(e.find(path("t.safetensors")), std::string::npos) << e;
  EXPECT_NE(e.find("tensor 'second'"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  // Cut inside the header, and before the length is complete.
  fs::resize_file(path("t.safetensors"), 20);
  e = openError(path("t.safetensors"));
  EXPECT_NE(e.find("header length"), std::string::npos) << e;
  fs::resize_file(path("t.safetensors"), 3);
  e = openError(path("t.safetensors"));
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST_F(IoTest, HeaderLengthBeyondTheFile) {
  writeRaw(path("h.safetensors"), "{}", 0, /*headerLength=*/1'000'000);
  std::string e = openError(path("h.safetensors"));
  EXPECT_NE(e.find(path("h.safetensors")), std::string::npos) << e;
  EXPECT_NE(e.find("header length 1000000 runs past the end"), std::string::npos) << e;
}

TEST_F(IoTest, HeaderThatIsNotJson) {
  writeRaw(path("j.safetensors"), "{\"a\": [", 0);
  EXPECT_NE(openError(path("j.safetensors")).find("not valid JSON"), std::string::npos);
  writeRaw(path("k.safetensors"), "[1, 2]", 0);
  EXPECT_NE(openError(path("k.safetensors")).find("not a JSON object"), std::string::npos);
  writeRaw(path("m.safetensors"), R"({"w": {"dtype": "F32", "shape": [2]}})", 8);
  EXPECT_NE(openError(path("m.safetensors")).find("tensor 'w' has no valid data_offsets"),
            std::string::npos);
}

TEST_F(IoTest, OverlappingRanges) {
  writeRaw(path("o.safetensors"),
           R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
               "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
           16);
  std::string e = openError(path("o.safetensors"));
  EXPECT_NE(e.find("overlaps"), std::string::npos) << e;
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("'b'"), std::string::npos) << e;
}

TEST_F(IoTest, UnknownDType) {
  writeRaw(path("u.safetensors"),
           R"({"w8": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", 4);
  std::string e = openError(path("u.safetensors"));
  EXPECT_NE(e.find("tensor 'w8' has dtype F8_E4M3"), std::string::npos) << e;
  EXPECT_NE(e.find(path("u.safetensors")), std::string::npos) << e;
}

TEST_F(IoTest, ShapeAndByteRangeDisagree) {
  writeRaw(path("s.safetensors"),
           R"({"w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 48]}})", 48);
  std::string e = openError(path("s.safetensors"));
  EXPECT_NE(e.find("tensor 'w' has shape [3, 4] of BF16 (12 elements) but a byte range of 48"),
            std::string::npos)
      << e;
  writeRaw(path("n.safetensors"),
           R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
  EXPECT_NE(openError(path("n.safetensors")).find("not a non-negative integer"), std::string::npos);
  writeRaw(
      path("big.safetensors"),
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 4]}})",
      4);
  EXPECT_NE(openError(path("big.safetensors")).find("too large"), std::string::npos);
}

//===----------------------------------------------------------------------===//
// Checkpoint directories
//===----------------------------------------------------------------------===//

void writeText(const std::string &path, const std::string &text) {
  std::ofstream out(path);
  out << text;
}

TEST_F(IoTest, ShardedIndex) {
  std::vector<float> a = {1, 2}, b = {3, 4, 5};
  ASSERT_TRUE(writeSafetensors(path("model-00001-of-00002.safetensors"),
                               {{"model.a", TensorView{a.data(), DType::F32, {2}}}})
                  .ok());
  ASSERT_TRUE(writeSafetensors(path("model-00002-of-00002.safetensors"),
                               {{"model.b", TensorView{b.data(), DType::F32, {3}}}})
                  .ok());
  writeText(path("model.safetensors.index.json"),
            R"({"metadata": {"total_size": 20}, "weight_map": {
                 "model.a": "model-00001-of-00002.safetensors",
                 "model.b": "model-00002-of-00002.safetensors"}})");
  HFCheckpoint ckpt;
  Status s = HFCheckpoint::open(dir.string(), ckpt);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(ckpt.tensors().size(), 2u);
  std::vector<float> got(3);
  ASSERT_TRUE(ckpt.read("model.b", TensorView{got.data(), DType::F32, {3}}).ok());
  EXPECT_EQ(got, b);
  EXPECT_NE(ckpt.fileOf("model.b").find("model-00002-of-00002"), std::string::npos);

  // A shard the index names but the folder lacks.
  fs::remove(path("model-00002-of-00002.safetensors"));
  s = HFCheckpoint::open(dir.string(), ckpt);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.safetensors.index.json: shard "
                             "'model-00002-of-00002.safetensors'"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("does not exist"), std::string::npos) << s.message();

  // A tensor the index puts in a shard that does not hold it.
  ASSERT_TRUE(writeSafetensors(path("model-00002-of-00002.safetensors"),
                               {{"model.c", TensorView{b.data(), DType::F32, {3}}}})
                  .ok());
  s = HFCheckpoint::open(dir.string(), ckpt);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'model.b' is listed in shard"), std::string::npos) << s.message();

  // No weights at all.
  fs::remove_all(dir);
  fs::create_directories(dir);
  s = HFCheckpoint::open(dir.string(), ckpt);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("no model.safetensors or model.safetensors.index.json"),
            std::string::npos);
}

TEST(CheckpointNames, MultimodalLayouts) {
  std::string n;
  EXPECT_EQ(classifyCheckpointTensor("language_model.model.layers.0.mlp.up_proj.weight", n),
            TensorRole::Text);
  EXPECT_EQ(n, "model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(classifyCheckpointTensor("model.language_model.embed_tokens.weight", n),
            TensorRole::Text);
  EXPECT_EQ(n, "model.embed_tokens.weight");
  EXPECT_EQ(classifyCheckpointTensor("language_model.lm_head.weight", n), TensorRole::Text);
  EXPECT_EQ(n, "lm_head.weight");
  EXPECT_EQ(classifyCheckpointTensor("lm_head.weight", n), TensorRole::Text);
  EXPECT_EQ(n, "lm_head.weight");
  EXPECT_EQ(classifyCheckpointTensor("model.layers.2.moe.experts.1.up_proj.weight", n),
            TensorRole::Text);
  EXPECT_EQ(n, "model.layers.2.moe.experts.1.up_proj.weight");
  EXPECT_EQ(
      classifyCheckpointTensor("vision_tower.vision_model.embeddings.patch_embedding.weight", n),
      TensorRole::Vision);
  EXPECT_EQ(classifyCheckpointTensor("model.multi_modal_projector.mm_soft_emb_norm.weight", n),
            TensorRole::Vision);
}

//===----------------------------------------------------------------------===//
// loadWeights and saveHFCheckpoint on a hand-built step
//===----------------------------------------------------------------------===//

/// A step with only parameters: a G3MoE-like layer 0 (dense FFN under moe.),
/// layer 1 with two stacked experts, a router and LoRA on one expert weight.
StepProgram tinyStep(bool moe) {
  StepProgram p;
  p.model.modelType = moe ? "g3moe_text" : "gemma3_text";
  p.model.vocabSize = 8;
  p.model.hiddenSize = 4;
  p.model.intermediateSize = 6;
  p.model.numHiddenLayers = 2;
  p.model.nRoutedExperts = moe ? 2 : 0;
  p.model.tieWordEmbeddings = true;
  p.training.loraR = 2;
  p.training.loraAlpha = 8;
  p.training.finetuning = Finetuning::LoRA;
  auto param = [&](std::string name, DType t, std::vector<int64_t> shape, bool trainable = false) {
    ParamDesc d;
    d.name = std::move(name);
    d.dtype = t;
    d.shape = std::move(shape);
    d.trainable = trainable;
    p.params.push_back(d);
  };
  param("model.embed_tokens.weight", DType::BF16, {8, 4});
  param("model.norm.weight", DType::BF16, {4});
  if (moe) {
    for (const char *proj : {"gate_proj", "up_proj"})
      param(std::string("model.layers.0.moe.") + proj + ".weight", DType::BF16, {6, 4});
    param("model.layers.0.moe.down_proj.weight", DType::BF16, {4, 6});
    for (const char *proj : {"gate_proj", "up_proj"})
      param(std::string("model.layers.1.moe.experts.{e}.") + proj + ".weight", DType::BF16,
            {2, 6, 4});
    param("model.layers.1.moe.experts.{e}.down_proj.weight", DType::BF16, {2, 4, 6});
    param("model.layers.1.moe.gate.weight", DType::F32, {2, 4});
    param("model.layers.1.moe.experts.{e}.up_proj.lora_A.weight", DType::F32, {2, 2, 4}, true);
    param("model.layers.1.moe.experts.{e}.up_proj.lora_B.weight", DType::F32, {2, 6, 2}, true);
  } else {
    for (int layer = 0; layer < 2; ++layer) {
      std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
      param(prefix + "gate_proj.weight", DType::BF16, {6, 4});
      param(prefix + "up_proj.weight", DType::BF16, {6, 4});
      param(prefix + "down_proj.weight", DType::BF16, {4, 6});
    }
  }
  FunctionDesc fn;
  fn.name = "forward";
  for (const ParamDesc &d : p.params) {
    BufferDesc b;
    b.kind = BufferKind::Param;
    b.name = d.name;
    b.dtype = d.dtype;
    b.shape = d.shape;
    b.bytes = uint64_t(TensorView{nullptr, d.dtype, d.shape}.bytes());
    fn.buffers.push_back(b);
  }
  p.functions.push_back(fn);
  return p;
}

/// Values that differ per tensor and element.
std::vector<float> pattern(size_t n, float base) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = base + 0.125f * float(i);
  return v;
}

struct OwnedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

Status writeCheckpoint(const std::string &file, std::vector<OwnedTensor> &tensors) {
  std::vector<NamedTensor> views;
  for (OwnedTensor &t : tensors)
    views.push_back({t.name, TensorView{t.values.data(), DType::F32, t.shape}});
  return writeSafetensors(file, views, {{"format", "pt"}});
}

/// A dense Gemma-3 checkpoint for tinyStep, in the transformers 4.x
/// multimodal layout, with one vision tensor.
std::vector<OwnedTensor> denseMultimodal() {
  std::vector<OwnedTensor> t = {
      {"language_model.model.embed_tokens.weight", {8, 4}, pattern(32, 1)},
      {"language_model.model.norm.weight", {4}, pattern(4, 2)},
      {"vision_tower.vision_model.post_layernorm.weight", {3}, pattern(3, 0)},
  };
  for (int layer = 0; layer < 2; ++layer) {
    std::string prefix = "language_model.model.layers." + std::to_string(layer) + ".mlp.";
    t.push_back({prefix + "gate_proj.weight", {6, 4}, pattern(24, 10.0f * float(layer + 1))});
    t.push_back({prefix + "up_proj.weight", {6, 4}, pattern(24, 20.0f * float(layer + 1))});
    t.push_back({prefix + "down_proj.weight", {4, 6}, pattern(24, 30.0f * float(layer + 1))});
  }
  return t;
}

/// denseMultimodal() and its config.json, as a checkpoint directory `dir`.
Status writeDenseMultimodal(const fs::path &dir) {
  std::vector<OwnedTensor> tensors = denseMultimodal();
  G3RT_RETURN_IF_ERROR(writeCheckpoint((dir / "model.safetensors").string(), tensors));
  writeText((dir / "config.json").string(), R"({"model_type": "gemma3", "text_config": {
      "model_type": "gemma3_text", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 6,
      "num_hidden_layers": 2}, "vision_config": {}})");
  return Status();
}

TEST_F(IoTest, LoadWeightsUpcyclesADenseMultimodalCheckpoint) {
  StepProgram program = tinyStep(/*moe=*/true);
  HostState ex(program);
  TensorView router = ex.param("model.layers.1.moe.gate.weight");
  for (int64_t i = 0; i < router.numel(); ++i)
    router.store(i, 0.5f);
  TensorView loraA = ex.param("model.layers.1.moe.experts.{e}.up_proj.lora_A.weight");
  loraA.store(0, 3.0f);
  ASSERT_TRUE(writeDenseMultimodal(dir).ok());

  std::vector<std::string> notes;
  Status s = loadWeights(ex, dir.string(), notes);
  ASSERT_TRUE(s.ok()) << s.message();
  // The embedding converted to bf16; the dense layer's FFN and every expert
  // of the MoE layer are the layer's MLP.
  EXPECT_EQ(ex.param("model.embed_tokens.weight").load(5), roundToBF16(1 + 0.125f * 5));
  EXPECT_EQ(ex.param("model.layers.0.moe.up_proj.weight").load(3), roundToBF16(20 + 0.375f));
  TensorView experts = ex.param("model.layers.1.moe.experts.{e}.down_proj.weight");
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t i = 0; i < 24; ++i)
      ASSERT_EQ(experts.load(e * 24 + i), roundToBF16(60 + 0.125f * float(i))) << e << " " << i;
  // The router and the LoRA weights are not touched.
  EXPECT_EQ(router.load(3), 0.5f);
  EXPECT_EQ(loraA.load(0), 3.0f);
  std::string all;
  for (const std::string &n : notes)
    all += n + "\n";
  EXPECT_NE(all.find("1 vision tower"), std::string::npos) << all;
  EXPECT_NE(all.find("upcycled the dense MLPs of 2 layers"), std::string::npos) << all;
  EXPECT_NE(all.find("1 router tensors are not in the checkpoint"), std::string::npos) << all;
  EXPECT_EQ(all.find("not used by the step"), std::string::npos) << all;
}

/// tinyStep(true) with fp8_base's view of the experts' down_proj: no
/// function reads the bf16 weight; its e4m3 copies (plain and transposed,
/// values and scales) are derived parameters the function reads instead.
StepProgram tinyStepWithDerivedDown() {
  StepProgram p = tinyStep(/*moe=*/true);
  const std::string source = "model.layers.1.moe.experts.{e}.down_proj.weight";
  FunctionDesc &fn = p.functions.front();
  fn.buffers.erase(std::remove_if(fn.buffers.begin(), fn.buffers.end(),
                                  [&](const BufferDesc &b) { return b.name == source; }),
                   fn.buffers.end());
  auto derive = [&](const std::string &suffix, Derivation how, DType t,
                    std::vector<int64_t> shape) {
    DerivedParamDesc d{source + suffix, source, how, t, shape};
    p.derived.push_back(d);
    BufferDesc b;
    b.kind = BufferKind::Param;
    b.name = d.name;
    b.dtype = t;
    b.shape = shape;
    b.bytes = uint64_t(TensorView{nullptr, t, shape}.bytes());
    fn.buffers.push_back(b);
  };
  derive("@e4m3", Derivation::E4M3, DType::F8E4M3, {2, 4, 6});
  derive("@e4m3.scale", Derivation::E4M3Scales, DType::F32, {2, 4});
  derive("@e4m3t", Derivation::E4M3Transposed, DType::F8E4M3, {2, 6, 4});
  derive("@e4m3t.scale", Derivation::E4M3TransposedScales, DType::F32, {2, 6});
  return p;
}

TEST_F(IoTest, LoadWeightsDerivesTheE4M3CopiesFromWhatItLoaded) {
  StepProgram program = tinyStepWithDerivedDown();
  ASSERT_TRUE(checkDerivedParams(program).ok());
  HostState ex(program);
  const std::string source = "model.layers.1.moe.experts.{e}.down_proj.weight";
  TensorView w = ex.param(source);
  ASSERT_NE(w.data, nullptr) << "the host holds the source no function reads";
  ASSERT_TRUE(writeDenseMultimodal(dir).ok());
  std::vector<std::string> notes;
  Status s = loadWeights(ex, dir.string(), notes);
  ASSERT_TRUE(s.ok()) << s.message();
  // Both experts are layer 1's MLP down_proj, [4, 6]: row r holds
  // 60 + 0.125 (6r + c), in bf16. A row's scale is its largest value over
  // 448, its transposed copy's row c the column's; every copy, scaled back,
  // is the weight to e4m3's 3 mantissa bits.
  TensorView q = ex.param(source + "@e4m3"), qs = ex.param(source + "@e4m3.scale");
  TensorView qt = ex.param(source + "@e4m3t"), qts = ex.param(source + "@e4m3t.scale");
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t r = 0; r < 4; ++r)
      for (int64_t c = 0; c < 6; ++c) {
        const float x = roundToBF16(60 + 0.125f * float(6 * r + c));
        ASSERT_EQ(w.load(e * 24 + r * 6 + c), x);
        EXPECT_EQ(qs.load(e * 4 + r), roundToBF16(60 + 0.125f * float(6 * r + 5)) / 448);
        EXPECT_EQ(qts.load(e * 6 + c), roundToBF16(60 + 0.125f * float(18 + c)) / 448);
        EXPECT_NEAR(q.load(e * 24 + r * 6 + c) * qs.load(e * 4 + r), x, x / 16) << r << " " << c;
        EXPECT_NEAR(qt.load(e * 24 + c * 4 + r) * qts.load(e * 6 + c), x, x / 16) << r << " " << c;
      }
}

TEST_F(IoTest, LoadWeightsReportsEveryProblemAndWritesNothing) {
  StepProgram program = tinyStep(/*moe=*/false);
  HostState ex(program);
  std::vector<OwnedTensor> tensors = {
      {"model.embed_tokens.weight", {8, 4}, pattern(32, 1)},
      // norm missing; layer 0 gate_proj has the wrong shape; layer 1 missing.
      {"model.layers.0.mlp.gate_proj.weight", {4, 6}, pattern(24, 1)},
      {"model.layers.0.mlp.up_proj.weight", {6, 4}, pattern(24, 1)},
      {"model.layers.0.mlp.down_proj.weight", {4, 6}, pattern(24, 1)},
      {"model.layers.0.mlp.extra.weight", {2}, pattern(2, 1)},
  };
  ASSERT_TRUE(writeCheckpoint(path("model.safetensors"), tensors).ok());
  writeText(path("config.json"),
            R"({"model_type": "gemma3_text", "hidden_size": 8, "num_hidden_layers": 2})");
  std::vector<std::string> notes;
  Status s = loadWeights(ex, dir.string(), notes);
  ASSERT_FALSE(s.ok());
  const std::string &m = s.message();
  EXPECT_NE(m.find("(6 problems)"), std::string::npos) << m;
  EXPECT_NE(m.find(path("model.safetensors") +
                   ": tensor 'model.layers.0.mlp.gate_proj.weight' has shape [4, 6], the step "
                   "expects [6, 4]"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("missing tensor 'model.norm.weight'"), std::string::npos) << m;
  for (const char *proj : {"gate_proj", "up_proj", "down_proj"})
    EXPECT_NE(m.find(std::string("missing tensor 'model.layers.1.mlp.") + proj + ".weight'"),
              std::string::npos)
        << m;
  EXPECT_NE(m.find("config.json: field 'hidden_size' is 8, the step has 4"), std::string::npos)
      << m;
  // Nothing was loaded: the embedding still holds its zero initialisation.
  EXPECT_EQ(ex.param("model.embed_tokens.weight").load(5), 0.0f);
}

TEST_F(IoTest, LoadWeightsRejectsIntegerTensorsAndAmbiguousNames) {
  StepProgram program = tinyStep(/*moe=*/false);
  HostState ex(program);
  std::vector<int32_t> ints(4, 1);
  std::vector<float> f(32, 1.0f);
  ASSERT_TRUE(
      writeSafetensors(
          path("model.safetensors"),
          {{"model.norm.weight", TensorView{ints.data(), DType::I32, {4}}},
           {"model.embed_tokens.weight", TensorView{f.data(), DType::F32, {8, 4}}},
           {"model.language_model.embed_tokens.weight", TensorView{f.data(), DType::F32, {8, 4}}}})
          .ok());
  std::vector<std::string> notes;
  Status s = loadWeights(ex, dir.string(), notes);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'model.norm.weight' has dtype I32, the step's parameter is BF16"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("are both the text model's 'model.embed_tokens.weight'"),
            std::string::npos)
      << s.message();
}

TEST_F(IoTest, LoadWeightsNotesUnusedTensors) {
  StepProgram program = tinyStep(/*moe=*/false);
  HostState ex(program);
  std::vector<OwnedTensor> tensors = {
      {"model.embed_tokens.weight", {8, 4}, pattern(32, 1)},
      {"model.norm.weight", {4}, pattern(4, 1)},
      {"lm_head.weight", {8, 4}, pattern(32, 1)},
  };
  for (int layer = 0; layer < 2; ++layer) {
    std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.";
    tensors.push_back({prefix + "gate_proj.weight", {6, 4}, pattern(24, 1)});
    tensors.push_back({prefix + "up_proj.weight", {6, 4}, pattern(24, 2)});
    tensors.push_back({prefix + "down_proj.weight", {4, 6}, pattern(24, 3)});
  }
  ASSERT_TRUE(writeCheckpoint(path("model.safetensors"), tensors).ok());
  std::vector<std::string> notes;
  Status s = loadWeights(ex, dir.string(), notes);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("1 checkpoint tensors are not used by the step: 'lm_head.weight'"),
            std::string::npos)
      << notes[0];
  EXPECT_EQ(ex.param("model.layers.1.mlp.down_proj.weight").load(1), 3.125f);
}

TEST_F(IoTest, SaveMergesLoraPerExpert) {
  StepProgram program = tinyStep(/*moe=*/true);
  HostState ex(program);
  TensorView w = ex.param("model.layers.1.moe.experts.{e}.up_proj.weight");
  TensorView a = ex.param("model.layers.1.moe.experts.{e}.up_proj.lora_A.weight");
  TensorView b = ex.param("model.layers.1.moe.experts.{e}.up_proj.lora_B.weight");
  for (int64_t i = 0; i < w.numel(); ++i)
    w.store(i, float(i % 7) * 0.25f);
  for (int64_t i = 0; i < a.numel(); ++i)
    a.store(i, float(i % 5) * 0.125f - 0.25f);
  for (int64_t i = 0; i < b.numel(); ++i)
    b.store(i, float(i % 3) * 0.0625f);

  std::string out = path("merged");
  Status s = saveHFCheckpoint(ex, out, /*mergeLora=*/true);
  ASSERT_TRUE(s.ok()) << s.message();
  SafetensorsFile f;
  ASSERT_TRUE(SafetensorsFile::open(out + "/model.safetensors", f).ok());
  for (const SafetensorsEntry &e : f.entries()) {
    EXPECT_EQ(e.name.find("lora"), std::string::npos) << e.name;
    EXPECT_EQ(e.name.find("{e}"), std::string::npos) << e.name;
  }
  EXPECT_NE(f.find("model.layers.1.moe.experts.0.gate_proj.weight"), nullptr);
  EXPECT_NE(f.find("model.layers.1.moe.gate.weight"), nullptr);
  EXPECT_EQ(f.find("model.layers.1.moe.gate.weight")->dtype, DType::F32);
  // alpha / r = 8 / 2 = 4.
  for (int64_t e = 0; e < 2; ++e) {
    std::vector<float> merged;
    ASSERT_TRUE(
        f.readFloats("model.layers.1.moe.experts." + std::to_string(e) + ".up_proj.weight", merged)
            .ok());
    EXPECT_EQ(f.find("model.layers.1.moe.experts." + std::to_string(e) + ".up_proj.weight")->dtype,
              DType::BF16);
    for (int64_t o = 0; o < 6; ++o)
      for (int64_t i = 0; i < 4; ++i) {
        double ba = 0;
        for (int64_t k = 0; k < 2; ++k)
          ba += double(b.load(e * 12 + o * 2 + k)) * double(a.load(e * 8 + k * 4 + i));
        float want = roundToBF16(float(double(w.load(e * 24 + o * 4 + i)) + 4 * ba));
        EXPECT_EQ(merged[size_t(o * 4 + i)], want) << e << " " << o << " " << i;
      }
  }
  // Without merging, the base weights are written as they are.
  ASSERT_TRUE(saveHFCheckpoint(ex, path("base"), false).ok());
  SafetensorsFile base;
  ASSERT_TRUE(SafetensorsFile::open(path("base") + "/model.safetensors", base).ok());
  std::vector<float> raw;
  ASSERT_TRUE(base.readFloats("model.layers.1.moe.experts.1.up_proj.weight", raw).ok());
  EXPECT_EQ(raw[3], w.load(24 + 3));

  std::ifstream config(out + "/config.json");
  std::string text((std::istreambuf_iterator<char>(config)), std::istreambuf_iterator<char>());
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["model_type"], "g3moe_text");
  EXPECT_EQ(j["n_routed_experts"], 2);
  EXPECT_EQ(j["hidden_size"], 4);
  EXPECT_EQ(j["layer_types"].size(), 2u);
}

} // namespace
