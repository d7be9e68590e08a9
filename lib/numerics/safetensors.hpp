#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header naming each tensor's dtype, shape and byte range, then raw
// little-endian data. PyTorch users can read and write it, so weights move both ways.
//
// qkv adds one CRC-32C per tensor to the header's "__metadata__" (key "qkv.crc32c.<tensor>",
// eight hex digits of the tensor's bytes as stored), which other readers ignore: a flipped bit
// in the data is refused at load instead of training or translating with a corrupted weight.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "lib/numerics/tensor.hpp"

namespace qkv {

struct TensorFile {
  std::map<std::string, Array> reals;          // F32 and F64 tensors, converted to `real`
  std::map<std::string, IndexArray> integers;  // I64 and I32 tensors
  std::map<std::string, std::string> metadata; // the header's "__metadata__", less qkv's checksums
};

/// CRC-32C (Castagnoli, as in iSCSI and ext4) of `bytes`, continuing from `crc` (0 to start).
std::uint32_t crc32c(std::string_view bytes, std::uint32_t crc = 0);

/// Reads a whole file. Throws ParseError naming the file and what is wrong (truncated, bad
/// header, unsupported dtype, offsets out of range, a tensor whose bytes do not match its
/// checksum — naming the tensor) — never reads past the data. A file without checksums (written
/// before qkv stored them, or by another program) loads with one warning per file.
TensorFile read_safetensors(const std::string& path);

/// Parses the bytes of a safetensors file already in memory; `name` starts every error
/// message (read_safetensors passes the path). The same checks as read_safetensors.
TensorFile parse_safetensors(std::string_view bytes, const std::string& name);

/// Writes `reals` in qkv's precision (F32 or F64) and `integers` as I64, each with its checksum
/// in the metadata (replacing any "qkv.crc32c." keys of `metadata`). Atomic: the data
/// goes to a temporary file beside `path`, is flushed to disk, and is renamed over `path`, so
/// a crash leaves either the old file or the new one. Throws Error on any I/O failure.
void write_safetensors(const std::string& path, const std::map<std::string, Array>& reals,
                       const std::map<std::string, IndexArray>& integers = {},
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace qkv
