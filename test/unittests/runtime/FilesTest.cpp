//===- FilesTest.cpp - input files and the output folder's claim ----------===//
//
// Readers given a folder where a file is expected refuse it naming the file.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/file.h"
#include "runtime/io/hf_checkpoint.h"
#include "runtime/io/safetensors.h"
#include "runtime/schemas/container.h"
#include "runtime/step/program.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace g3rt;

namespace {

/// A fresh folder per test.
class FilesTest : public ::testing::Test {
protected:
  void SetUp() override {
    const auto *info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir = fs::temp_directory_path() /
          ("g3rt-files-" + std::to_string(::getpid()) + "-" + info->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string path(const std::string &name) const { return (dir / name).string(); }
  std::string write(const std::string &name, const std::string &text) const {
    std::ofstream(path(name), std::ios::binary) << text;
    return path(name);
  }
  fs::path dir;
};

/// The message of a failed status, or "" when it succeeded.
std::string errorOf(const Status &s) { return s.ok() ? "" : s.message(); }

} // namespace

//===----------------------------------------------------------------------===//
// Folders where files are expected
//===----------------------------------------------------------------------===//

TEST_F(FilesTest, ReadersRefuseAFolderNamingIt) {
  fs::create_directories(path("folder"));
  std::string folder = path("folder");

  std::vector<uint8_t> bytes;
  EXPECT_EQ(errorOf(readFile(folder, bytes)), folder + " is a directory");
  EXPECT_EQ(errorOf(readFile(folder, bytes, "step file")),
            "step file " + folder + " is a directory");

  StepProgram program;
  EXPECT_EQ(errorOf(loadStep(folder, program)), "step file " + folder + " is a directory");

  SafetensorsFile file;
  EXPECT_EQ(errorOf(SafetensorsFile::open(folder, file)), folder + " is a directory");

  std::ifstream in;
  EXPECT_EQ(errorOf(openForReading(folder, in, std::ios::in, "data file")),
            "data file " + folder + " is a directory");
  EXPECT_FALSE(in.is_open());
}

TEST_F(FilesTest, MissingAndNonRegularFilesAreNamed) {
  std::vector<uint8_t> bytes;
  std::string missing = path("missing.bin");
  EXPECT_EQ(errorOf(readFile(missing, bytes, "step file")),
            "cannot open step file " + missing + ": No such file or directory");

  // A pipe opens, but a reader that needs the size cannot use it.
  std::string fifo = path("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  int writer = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK); // so that opening to read does not block
  ASSERT_GE(writer, 0);
  EXPECT_EQ(errorOf(readFile(fifo, bytes)), fifo + " is not a regular file");
  std::ifstream in;
  EXPECT_TRUE(openForReading(fifo, in).ok()) << "a stream reader may read a pipe";
  ::close(writer);

  std::string regular = write("a.txt", "abc");
  uint64_t size = 0;
  ASSERT_TRUE(openForReading(regular, in, std::ios::binary, "", &size).ok());
  EXPECT_EQ(size, 3u);
  ASSERT_TRUE(readFile(regular, bytes).ok());
  EXPECT_EQ(std::string(bytes.begin(), bytes.end()), "abc");
}

TEST_F(FilesTest, CheckpointFoldersWithFoldersForFiles) {
  // Single-file checkpoints with a folder as config.json, as
  // model.safetensors, as the shard index; and a file that is no checkpoint.
  float values[4] = {1, 2, 3, 4};
  std::vector<NamedTensor> tensors = {{"w", TensorView{values, DType::F32, {2, 2}}}};

  fs::create_directories(path("config-dir/config.json"));
  ASSERT_TRUE(writeSafetensors(path("config-dir/model.safetensors"), tensors).ok());
  HFCheckpoint ckpt;
  EXPECT_EQ(errorOf(HFCheckpoint::open(path("config-dir"), ckpt)),
            path("config-dir/config.json") + " is a directory");

  fs::create_directories(path("model-dir/model.safetensors"));
  write("model-dir/config.json", "{}");
  EXPECT_EQ(errorOf(HFCheckpoint::open(path("model-dir"), ckpt)),
            path("model-dir/model.safetensors") + " is a directory");

  fs::create_directories(path("index-dir/model.safetensors.index.json"));
  EXPECT_EQ(errorOf(HFCheckpoint::open(path("index-dir"), ckpt)),
            path("index-dir/model.safetensors.index.json") + " is a directory");

  std::string notes = write("notes.txt", "not a checkpoint");
  EXPECT_EQ(errorOf(HFCheckpoint::open(notes, ckpt)),
            notes + ": not a checkpoint directory or a .safetensors file");
}
