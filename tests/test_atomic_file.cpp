// Crash-safe writes: the old file survives any failure before commit().
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "support/helpers.hpp"

using namespace qkv;

namespace {
std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}
std::size_t files_in(const std::filesystem::path& directory) {
  return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(directory), {}));
}
}  // namespace

TEST_CASE("atomic file: commit replaces, abandoning leaves the old file and no debris") {
  const auto directory = std::filesystem::temp_directory_path() / ("qkv_atomic_" + std::to_string(::getpid()));
  std::filesystem::create_directories(directory);
  const auto path = directory / "checkpoint.bin";
  write_file_atomically(path.string(), "first");
  CHECK(read_all(path) == "first");
  {
    AtomicFile file(path.string());
    file.write("second, half-written", 6);
    // No commit: as if the process failed mid-save.
  }
  CHECK(read_all(path) == "first");
  CHECK(files_in(directory) == 1);
  write_file_atomically(path.string(), "third");
  CHECK(read_all(path) == "third");
  CHECK(files_in(directory) == 1);
  std::filesystem::remove_all(directory);
}

TEST_CASE("atomic file: errors name the file") {
  const std::string missing = "/nonexistent_qkv_dir/model.safetensors";
  CHECK_THROWS_WITH_AS(write_file_atomically(missing, "x"), doctest::Contains(missing.c_str()), Error);
}
