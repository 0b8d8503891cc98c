//===- FilesTest.cpp - input files and the output folder's claim ----------===//
//
// Readers given a folder where a file is expected refuse it naming the file;
// the output folder's lock refuses a second holder naming the first, and a
// dead holder's lock file does not block; an unwritable folder is refused
// before anything runs; stale temporaries of dead processes are removed.
//
//===----------------------------------------------------------------------===//

#include "runtime/base/file.h"
#include "runtime/io/hf_checkpoint.h"
#include "runtime/io/safetensors.h"
#include "runtime/step/program.h"
#include "runtime/train/checkpoint.h"
#include "runtime/train/output_dir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
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
  static std::string contents(const std::string &file) {
    std::ifstream in(file, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  fs::path dir;
};

std::string hostName() {
  char host[256] = "";
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

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

//===----------------------------------------------------------------------===//
// The output folder's lock
//===----------------------------------------------------------------------===//

TEST_F(FilesTest, SecondHolderIsRefusedNamingTheFirst) {
  std::string warning;
  OutputDirLock first;
  ASSERT_TRUE(OutputDirLock::acquire(dir.string(), first, warning).ok());
  EXPECT_TRUE(first.held());
  EXPECT_EQ(warning, "");
  std::string lockFile = path(kOutputDirLockFile);
  std::string record = contents(lockFile);
  std::string holder = "pid " + std::to_string(::getpid()) + " on host " + hostName() + " since ";
  EXPECT_EQ(record.rfind(holder, 0), 0u) << record;

  // flock(2) locks belong to the open file: a second open in this process
  // conflicts as another process's would.
  OutputDirLock second;
  std::string message = errorOf(OutputDirLock::acquire(dir.string(), second, warning));
  EXPECT_FALSE(second.held());
  EXPECT_EQ(message.rfind("output dir " + dir.string() + " is in use by another run (" + holder, 0),
            0u)
      << message;
  EXPECT_NE(message.find("lock file " + lockFile), std::string::npos) << message;
  EXPECT_EQ(contents(lockFile), record) << "the refused run must not touch the record";

  // Released: the record is cleared and the next run gets the folder.
  first.release();
  EXPECT_FALSE(first.held());
  EXPECT_EQ(contents(lockFile), "");
  ASSERT_TRUE(OutputDirLock::acquire(dir.string(), second, warning).ok());
  EXPECT_TRUE(second.held());
}

TEST_F(FilesTest, DeadHoldersLockDoesNotBlock) {
  // A child takes the lock and dies without releasing it: the kernel drops
  // the lock, the record stays.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    OutputDirLock lock;
    std::string warning;
    bool ok = OutputDirLock::acquire(dir.string(), lock, warning).ok();
    std::_Exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  std::string lockFile = path(kOutputDirLockFile);
  EXPECT_EQ(contents(lockFile).rfind("pid " + std::to_string(child) + " on host ", 0), 0u);

  OutputDirLock lock;
  std::string warning;
  Status s = OutputDirLock::acquire(dir.string(), lock, warning);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(contents(lockFile).rfind("pid " + std::to_string(::getpid()) + " on host ", 0), 0u);
}

//===----------------------------------------------------------------------===//
// Claiming the output folder
//===----------------------------------------------------------------------===//

TEST_F(FilesTest, ClaimCreatesLocksAndCleans) {
  std::string out = path("run/out");
  fs::create_directories(out + "/merged");
  // Temporaries of a dead process (no pid is INT_MAX: it is past any
  // pid_max) and of a live one (pid 1), and names that only look alike.
  std::string dead = std::to_string(INT_MAX);
  for (const char *name : {"adapter_model.safetensors.tmp.", "adapter_config.json.tmp.",
                           "merged/model.safetensors.tmp."})
    write("run/out/" + std::string(name) + dead, "partial");
  fs::create_directories(out + "/checkpoint-4.tmp-" + dead);
  write("run/out/adapter_model.safetensors.tmp.1", "live");
  write("run/out/notes.tmp.txt", "mine");
  write("run/out/notes.tmp.12x", "mine");
  write("run/out/notes.tmp.0", "mine");

  OutputDirLock lock;
  std::string warning;
  Status s = claimOutputDir(out, lock, warning);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(lock.held());
  std::vector<std::string> left;
  for (const auto &entry : fs::recursive_directory_iterator(out))
    left.push_back(fs::relative(entry.path(), out).string());
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left,
            (std::vector<std::string>{kOutputDirLockFile, "adapter_model.safetensors.tmp.1",
                                      "merged", "notes.tmp.0", "notes.tmp.12x", "notes.tmp.txt"}));

  // A second claim is refused, and nothing is removed by it.
  write("run/out/adapter_model.safetensors.tmp." + dead, "partial");
  OutputDirLock other;
  std::string message = errorOf(claimOutputDir(out, other, warning));
  EXPECT_NE(message.find("is in use by another run"), std::string::npos) << message;
  EXPECT_TRUE(fs::exists(out + "/adapter_model.safetensors.tmp." + dead));
}

TEST_F(FilesTest, UnwritableOutputDirIsRefused) {
  OutputDirLock lock;
  std::string warning;
  // Below a regular file: cannot be created.
  std::string file = write("file", "x");
  EXPECT_EQ(errorOf(claimOutputDir(file + "/out", lock, warning)),
            "cannot create the output dir " + file + "/out: Not a directory");
  EXPECT_EQ(errorOf(claimOutputDir(file, lock, warning)),
            "cannot create the output dir " + file + ": Not a directory");

  // A folder no file can be created in, root included (chmod does not stop
  // root): sysfs refuses new files, and is often mounted read-only too.
  ASSERT_TRUE(fs::is_directory("/sys")) << "this test needs sysfs at /sys";
  std::string message = errorOf(claimOutputDir("/sys", lock, warning));
  EXPECT_EQ(message.rfind("the output dir /sys is not writable: cannot create "
                          "/sys/.g3moe-write-check.tmp." +
                              std::to_string(::getpid()) + ": ",
                          0),
            0u)
      << message;
  EXPECT_FALSE(lock.held());

  // Without write permission, for anyone but root.
  if (::geteuid() != 0) {
    std::string readOnly = path("read-only");
    fs::create_directories(readOnly);
    fs::permissions(readOnly, fs::perms::owner_read | fs::perms::owner_exec);
    message = errorOf(claimOutputDir(readOnly, lock, warning));
    fs::permissions(readOnly, fs::perms::owner_all);
    EXPECT_NE(message.find("the output dir " + readOnly + " is not writable"), std::string::npos)
        << message;
  }
}
