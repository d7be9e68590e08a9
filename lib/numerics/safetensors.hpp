#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length, a JSON header naming each tensor's dtype, shape and byte range, then raw
// little-endian data. PyTorch users can read and write it, so weights move both ways.
#include <map>
#include <string>
#include <string_view>

#include "lib/numerics/tensor.hpp"

namespace qkv {

struct TensorFile {
  std::map<std::string, Array> reals;          // F32 and F64 tensors, converted to `real`
  std::map<std::string, IndexArray> integers;  // I64 and I32 tensors
  std::map<std::string, std::string> metadata; // the header's "__metadata__"
};

/// Reads a whole file. Throws ParseError naming the file and what is wrong (truncated, bad
/// header, unsupported dtype, offsets out of range) — never reads past the data.
TensorFile read_safetensors(const std::string& path);

/// Parses the bytes of a safetensors file already in memory; `name` starts every error
/// message (read_safetensors passes the path). The same checks as read_safetensors.
TensorFile parse_safetensors(std::string_view bytes, const std::string& name);

/// Writes `reals` in qkv's precision (F32 or F64) and `integers` as I64. Atomic: the data
/// goes to a temporary file beside `path`, is flushed to disk, and is renamed over `path`, so
/// a crash leaves either the old file or the new one. Throws Error on any I/O failure.
void write_safetensors(const std::string& path, const std::map<std::string, Array>& reals,
                       const std::map<std::string, IndexArray>& integers = {},
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace qkv
