#include "lib/numerics/safetensors.hpp"

#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <spdlog/spdlog.h>
#include <type_traits>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/shape.hpp"

namespace qkv {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& message) {
  throw ParseError(path + ": " + message);
}

std::size_t dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  return 0;
}

template <class Target, class Source>
void convert(const char* bytes, std::size_t count, Target* out) {
  for (std::size_t i = 0; i < count; ++i) {
    Source value;
    std::memcpy(&value, bytes + i * sizeof(Source), sizeof(Source));
    out[i] = static_cast<Target>(value);
  }
}

constexpr std::string_view checksum_prefix = "qkv.crc32c.";

std::string hex32(std::uint32_t value) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", value);
  return text;
}

std::string checksum_of(const void* data, std::size_t size) {
  return hex32(crc32c(std::string_view(static_cast<const char*>(data), size)));
}

// Once per file and process: a loop that reloads the same old checkpoint says so once.
void warn_unchecked(const std::string& path) {
  static std::mutex mutex;
  static std::set<std::string> warned;
  const std::lock_guard lock(mutex);
  if (warned.insert(path).second)
    spdlog::warn("{}: no checksums (written before qkv stored them, or by another program); loaded unverified", path);
}

}  // namespace

std::uint32_t crc32c(std::string_view bytes, std::uint32_t crc) {
  // Reflected polynomial 0x82F63B78, one table lookup per byte (~1 GB/s, far below disk time).
  static const auto table = [] {
    std::array<std::uint32_t, 256> entries{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t value = i;
      for (int bit = 0; bit < 8; ++bit) value = (value >> 1) ^ (0x82F63B78u & (0u - (value & 1u)));
      entries[i] = value;
    }
    return entries;
  }();
  crc = ~crc;
  for (const char byte : bytes) crc = table[(crc ^ static_cast<unsigned char>(byte)) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

TensorFile read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  // A directory opens too, and its "size" can be anything (2^63 - 1 on ext4).
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) fail(path, "not a regular file");
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) fail(path, "cannot tell the file's size");
  const auto file_size = static_cast<std::uint64_t>(end);
  in.seekg(0);
  std::string bytes(file_size, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(file_size));
  if (!in) fail(path, "could not read the file");
  return parse_safetensors(bytes, path);
}

TensorFile parse_safetensors(std::string_view bytes, const std::string& path) {
  const std::uint64_t file_size = bytes.size();
  if (file_size < 8) fail(path, "too short for a safetensors header (" + std::to_string(file_size) + " bytes)");
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  if (header_size > file_size - 8) fail(path, "header length " + std::to_string(header_size) + " runs past the end of the file");
  const std::string_view header = bytes.substr(8, header_size);
  const std::uint64_t data_size = file_size - 8 - header_size;
  const std::string_view data = bytes.substr(8 + header_size);

  nlohmann::json json;
  try {
    json = nlohmann::json::parse(header);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!json.is_object()) fail(path, "header is not a JSON object");

  TensorFile file;
  // The header is a sorted map, where "__metadata__" may come after a tensor: collect first.
  std::map<std::string, std::string> checksums;  // tensor name -> stored CRC-32C
  if (json.contains("__metadata__") && json["__metadata__"].is_object())
    for (const auto& [key, value] : json["__metadata__"].items())
      if (key.starts_with(checksum_prefix) && value.is_string()) checksums[key.substr(checksum_prefix.size())] = value;
  if (checksums.empty() && json.size() > (json.contains("__metadata__") ? 1u : 0u)) warn_unchecked(path);
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(path, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail(path, "__metadata__." + key + " is not a string");
        if (!key.starts_with(checksum_prefix)) file.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail(path, where + " needs dtype, shape and data_offsets");
    if (!entry["dtype"].is_string()) fail(path, where + ": dtype is not a string");
    const std::string dtype = entry["dtype"].get<std::string>();
    const std::size_t element_size = dtype_size(dtype);
    if (element_size == 0) fail(path, where + ": unsupported dtype " + dtype + " (qkv reads F32, F64, I32, I64)");
    Shape shape;
    if (!entry["shape"].is_array()) fail(path, where + ": shape is not an array");
    for (const auto& extent : entry["shape"]) {
      if (!extent.is_number_unsigned()) fail(path, where + ": shape holds a non-integer");
      shape.push_back(extent.get<std::size_t>());
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      fail(path, where + ": data_offsets must be two non-negative integers");
    const auto begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
    if (begin > end || end > data_size) fail(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ") outside the " + std::to_string(data_size) + " data bytes");
    std::uint64_t count = 1;
    for (std::size_t extent : shape) {
      if (extent != 0 && count > (UINT64_MAX / 8) / extent) fail(path, where + ": shape is too large");
      count *= extent;
    }
    if (count * element_size != end - begin)
      fail(path, where + ": shape " + to_string(shape) + " of " + dtype + " needs " + std::to_string(count * element_size) +
                     " bytes, data_offsets give " + std::to_string(end - begin));
    const char* bytes = data.data() + begin;
    if (!checksums.empty()) {
      const auto stored = checksums.find(name);
      if (stored == checksums.end()) fail(path, where + " has no checksum while the file's other tensors have");
      const std::string actual = checksum_of(bytes, end - begin);
      if (stored->second != actual)
        fail(path, where + ": checksum mismatch (CRC-32C " + actual + ", stored " + stored->second +
                       "): the file is corrupted");
    }
    if (dtype[0] == 'F') {
      Array array = Array::from_shape(shape);
      if (dtype == "F32") convert<real, float>(bytes, count, array.data());
      else convert<real, double>(bytes, count, array.data());
      file.reals.emplace(name, std::move(array));
    } else {
      IndexArray array = IndexArray::from_shape(shape);
      if (dtype == "I32") convert<std::int64_t, std::int32_t>(bytes, count, array.data());
      else convert<std::int64_t, std::int64_t>(bytes, count, array.data());
      file.integers.emplace(name, std::move(array));
    }
  }
  return file;
}

void write_safetensors(const std::string& path, const std::map<std::string, Array>& reals,
                       const std::map<std::string, IndexArray>& integers,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  std::map<std::string, std::string> all_metadata;
  for (const auto& [key, value] : metadata)
    if (!key.starts_with(checksum_prefix)) all_metadata[key] = value;
  for (const auto& [name, array] : reals)
    all_metadata[std::string(checksum_prefix) + name] = checksum_of(array.data(), array.size() * sizeof(real));
  for (const auto& [name, array] : integers)
    all_metadata[std::string(checksum_prefix) + name] = checksum_of(array.data(), array.size() * sizeof(std::int64_t));
  if (!all_metadata.empty()) header["__metadata__"] = all_metadata;
  std::uint64_t offset = 0;
  const char* real_dtype = std::is_same_v<real, float> ? "F32" : "F64";
  for (const auto& [name, array] : reals) {
    // A named copy for the lambda: clang 14 (the fuzz build) cannot capture a structured binding.
    const std::string& tensor = name;
    check_arg(!integers.contains(name), "write_safetensors", [&] { return "tensor name '" + tensor + "' used twice"; });
    const std::uint64_t size = array.size() * sizeof(real);
    header[name] = {{"dtype", real_dtype}, {"shape", shape_of(array)}, {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  for (const auto& [name, array] : integers) {
    const std::uint64_t size = array.size() * sizeof(std::int64_t);
    header[name] = {{"dtype", "I64"}, {"shape", shape_of(array)},
                    {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  std::string header_text = header.dump();
  // The format pads the header with spaces so the data starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const std::uint64_t header_size = header_text.size();

  AtomicFile file(path);
  file.write(&header_size, 8);
  file.write(header_text.data(), header_text.size());
  // std::map iterates in the same sorted order as above, matching the offsets.
  for (const auto& [name, array] : reals) file.write(array.data(), array.size() * sizeof(real));
  for (const auto& [name, array] : integers) file.write(array.data(), array.size() * sizeof(std::int64_t));
  file.commit();
}

}  // namespace qkv
