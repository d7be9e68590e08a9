// Checksums in safetensors files (lib/numerics/safetensors.hpp): every tensor qkv writes carries
// a CRC-32C in the metadata; a load refuses a flipped bit naming the file and the tensor, and a
// file without checksums (older qkv, PyTorch) still loads, with one warning.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

std::filesystem::path temp_file(const std::string& stem) {
  return std::filesystem::temp_directory_path() / ("qkv_checksum_" + stem + "_" + std::to_string(::getpid()) + ".safetensors");
}

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// The header of a safetensors file's bytes, and where its data starts.
std::pair<nlohmann::json, std::size_t> header_of(const std::string& bytes) {
  std::uint64_t size = 0;
  std::memcpy(&size, bytes.data(), 8);
  return {nlohmann::json::parse(bytes.substr(8, size)), 8 + size};
}

// A file as a program that knows nothing of checksums writes it: header and data, no metadata.
std::string plain_file(const std::string& name, const Array& values) {
  const std::string dtype = sizeof(real) == 4 ? "F32" : "F64";
  const nlohmann::json header = {{name, {{"dtype", dtype}, {"shape", shape_of(values)},
                                         {"data_offsets", {0, values.size() * sizeof(real)}}}}};
  const std::string text = header.dump();
  const std::uint64_t size = text.size();
  std::string bytes(reinterpret_cast<const char*>(&size), 8);
  bytes += text;
  bytes.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(real));
  return bytes;
}

// Collects what spdlog logs for the lifetime of the object.
struct CapturedLog {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  CapturedLog() { spdlog::set_default_logger(std::make_shared<spdlog::logger>("captured", sink)); }
  ~CapturedLog() { spdlog::set_default_logger(previous); }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;
  std::vector<std::string> lines() const { return sink->last_formatted(); }
};

}  // namespace

TEST_CASE("crc32c gives the standard check value and continues across pieces") {
  CHECK(crc32c("") == 0u);
  CHECK(crc32c("123456789") == 0xE3069283u);  // the CRC-32C check value (RFC 3720's polynomial)
  CHECK(crc32c("56789", crc32c("1234")) == 0xE3069283u);
}

TEST_CASE("write_safetensors stores a checksum per tensor, and read gives back values and the caller's metadata") {
  const auto path = temp_file("round_trip");
  const Array weight = random_array({3, 5}, 1), bias = random_array({5}, 2);
  const IndexArray steps = {7, 8};
  write_safetensors(path.string(), {{"bias", bias}, {"weight", weight}}, {{"steps", steps}}, {{"note", "kept"}});

  const auto [header, data_start] = header_of(read_bytes(path));
  for (const char* name : {"bias", "weight", "steps"}) {
    CAPTURE(name);
    REQUIRE(header["__metadata__"].contains(std::string("qkv.crc32c.") + name));
    CHECK(header["__metadata__"][std::string("qkv.crc32c.") + name].get<std::string>().size() == 8);
  }
  const TensorFile file = read_safetensors(path.string());
  std::filesystem::remove(path);
  CHECK(max_abs_diff(file.reals.at("weight"), weight) == 0);
  CHECK(max_abs_diff(file.reals.at("bias"), bias) == 0);
  CHECK(file.integers.at("steps") == steps);
  CHECK(file.metadata == std::map<std::string, std::string>{{"note", "kept"}});  // checksums are qkv's own
}

TEST_CASE("one bit flipped in a tensor's data: the load throws naming the file and the tensor") {
  const auto path = temp_file("flipped");
  write_safetensors(path.string(), {{"decoder.out.weight", random_array({64, 32}, 3)}, {"a.bias", random_array({4}, 4)}});
  std::string bytes = read_bytes(path);
  const auto [header, data_start] = header_of(bytes);
  const auto offsets = header["decoder.out.weight"]["data_offsets"];
  const std::size_t middle = data_start + (offsets[0].get<std::size_t>() + offsets[1].get<std::size_t>()) / 2;
  bytes[middle] = static_cast<char>(bytes[middle] ^ 0x10);
  write_bytes(path, bytes);
  const std::string expected = path.string() + ": tensor 'decoder.out.weight': checksum mismatch";
  CHECK_THROWS_WITH_AS(read_safetensors(path.string()), doctest::Contains(expected.c_str()), ParseError);
  std::filesystem::remove(path);
}

TEST_CASE("a file without checksums loads, with one warning per file") {
  const auto path = temp_file("old_format");
  const Array values = random_array({2, 3}, 5);
  write_bytes(path, plain_file("w", values));
  CapturedLog log;
  const TensorFile file = read_safetensors(path.string());
  read_safetensors(path.string());  // the second load of the same file says nothing more
  std::filesystem::remove(path);
  CHECK(max_abs_diff(file.reals.at("w"), values) == 0);
  CHECK(file.metadata.empty());
  const auto lines = log.lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].find(path.string() + ": no checksums") != std::string::npos);
}

TEST_CASE("a tensor without a checksum in a file whose other tensors have one is refused") {
  const auto path = temp_file("partial");
  write_safetensors(path.string(), {{"a", random_array({2}, 6)}, {"b", random_array({2}, 7)}});
  std::string bytes = read_bytes(path);
  auto [header, data_start] = header_of(bytes);
  header["__metadata__"].erase("qkv.crc32c.b");
  std::string text = header.dump();
  text.append(data_start - 8 - std::min(text.size(), data_start - 8), ' ');  // same length: data stays in place
  REQUIRE(text.size() == data_start - 8);
  bytes.replace(8, text.size(), text);
  write_bytes(path, bytes);
  CHECK_THROWS_WITH_AS(read_safetensors(path.string()), doctest::Contains("tensor 'b' has no checksum"), ParseError);
  std::filesystem::remove(path);
}
