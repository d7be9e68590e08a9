// libFuzzer target: safetensors files (lib/safetensors.*), read from memory.
// Checks beyond "no crash": a file that parses writes back and reads back equal.
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "fuzz_support.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  qkv::TensorFile file;
  try {
    file = qkv::parse_safetensors(qkv::fuzz::as_text(data, size), "fuzz.safetensors");
  } catch (const qkv::Error&) {
    return 0;
  }
  // NaN payloads compare unequal to themselves: compare the bytes.
  static const std::string path =
      (std::filesystem::temp_directory_path() / ("qkv_fuzz_" + std::to_string(::getpid()) + ".safetensors")).string();
  qkv::write_safetensors(path, file.reals, file.integers, file.metadata);
  const qkv::TensorFile again = qkv::read_safetensors(path);
  std::filesystem::remove(path);
  if (again.metadata != file.metadata || again.integers.size() != file.integers.size() ||
      again.reals.size() != file.reals.size())
    std::abort();
  for (const auto& [name, array] : file.reals) {
    const qkv::Array& other = again.reals.at(name);
    if (other.shape() != array.shape() || (array.size() != 0 &&
        std::memcmp(other.data(), array.data(), array.size() * sizeof(qkv::real)) != 0))
      std::abort();
  }
  for (const auto& [name, array] : file.integers)
    if (again.integers.at(name) != array) std::abort();
  return 0;
}
