#pragma once
// Reading typed fields out of JSON that came from a file (config.json, a model config, a
// vocabulary): every failure is an Error naming where the object came from and the field.
#include <cstdint>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "lib/numerics/error.hpp"

namespace qkv {

/// object[name] as T. `where` names the object in messages ("config.json training"). Integers
/// must be integers and in T's range: nlohmann would turn -1 into 2^64 - 1 and convert 1e30 to
/// an integer with undefined behaviour (both found by fuzzing).
template <class T>
T json_field(const nlohmann::json& object, const char* name, const std::string& where) {
  if (!object.is_object() || !object.contains(name)) throw Error(where + ": missing field '" + name + "'");
  const nlohmann::json& value = object.at(name);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    const bool in_range = value.is_number_unsigned()
                              ? value.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<T>::max())
                              : value.is_number_integer() && (std::is_signed_v<T> || value.get<std::int64_t>() >= 0);
    if (!in_range)
      throw Error(where + ": field '" + name + "' must be " + (std::is_signed_v<T> ? "an" : "a non-negative") +
                  " integer, got " + value.dump());
  }
  try {
    return value.get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": field '" + name + "' has the wrong type (" + e.what() + ")");
  }
}

/// The JSON document in `path`; Error naming the file when it cannot be read or parsed.
inline nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

}  // namespace qkv
