#pragma once
// Shared by the libFuzzer targets in this folder (see docs/hardening.md).
//
// The contract every target checks: a parser of outside input either returns or throws
// qkv::Error (ParseError included). Any other exception escaping (a raw nlohmann::json error,
// std::bad_alloc from a size read off the input, std::out_of_range, …) aborts the target, and
// libFuzzer reports it as a crash, as it does every sanitizer report and leak.
#include <spdlog/spdlog.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

namespace qkv::fuzz {

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// The input as JSON, or a discarded value when it is not JSON (the targets then stop: JSON
/// syntax is nlohmann's to fuzz, the structure is ours).
inline nlohmann::json parse_json(std::string_view text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

/// True when every integer in `config` is at most `limit` (keys named "seed" excepted). Model
/// configs allocate what their sizes say; the fuzzers explore how a config is read, not how
/// the allocator copes with a 10^12-parameter model, so bigger ones are not built.
inline bool integers_at_most(const nlohmann::json& config, std::uint64_t limit) {
  if (config.is_number_unsigned()) return config.get<std::uint64_t>() <= limit;
  if (config.is_object()) {
    for (const auto& [key, value] : config.items())
      if (key != "seed" && !integers_at_most(value, limit)) return false;
  } else if (config.is_array()) {
    for (const auto& value : config)
      if (!integers_at_most(value, limit)) return false;
  }
  return true;
}

/// Quiet: the readers log a warning per bad line, which would drown libFuzzer's own output.
inline void silence_logging() { spdlog::set_level(spdlog::level::off); }

}  // namespace qkv::fuzz
