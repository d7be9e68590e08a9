#pragma once
// Numbers typed by a person (a command-line value, METRIC=VALUE): the one reader, so that every
// option refuses "1e", "0.5x", "" and "inf" alike.
#include <cmath>
#include <optional>
#include <string>

namespace qkv {

/// The finite number `text` spells in full, or nullopt ("12abc", "", "nan", "inf").
inline std::optional<double> parse_finite_number(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;  // not a number at all, or out of double's range
  }
  if (used != text.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

}  // namespace qkv
