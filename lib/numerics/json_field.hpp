#pragma once
// Typed reads of the fields of a JSON object: the one reader for every JSON file qkv reads
// (a checkpoint's config.json, model configs, data specs), so that each refuses the same
// mistakes in the same words:
//   <owner>: field "<name>" is missing
//   <owner>: field "<name>" must be a non-negative integer, got -1
// `owner` names the file or the object being read ("config.json training", "BahdanauConfig").
//
// nlohmann converts any number to any number type: -1 to 2^64 - 1, 1e30 to an integer with
// undefined behaviour, true to 1.0. These readers take integers only as integers in range,
// numbers only as numbers, booleans only as booleans and strings only as strings.
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "lib/numerics/error.hpp"

namespace qkv {

namespace detail {
[[noreturn]] inline void refuse_json_value(const nlohmann::json& value, const std::string& owner,
                                          const std::string& name, const std::string& expected) {
  throw Error(owner + ": field \"" + name + "\" must be " + expected + ", got " + value.dump());
}
}  // namespace detail

/// `value`, the field `name` of `owner`, as T (nlohmann::json takes it as it is). Throws Error
/// naming the owner, the field, what it must be and what it is.
template <class T>
T json_value(const nlohmann::json& value, const std::string& owner, const std::string& name) {
  if constexpr (std::is_same_v<T, nlohmann::json>) {
    return value;
  } else {
    const auto refuse = [&](const std::string& expected) { detail::refuse_json_value(value, owner, name, expected); };
    if constexpr (std::is_same_v<T, bool>) {
      if (!value.is_boolean()) refuse("true or false");
    } else if constexpr (std::is_integral_v<T>) {
      const bool in_range = value.is_number_unsigned()
                                ? value.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<T>::max())
                                : value.is_number_integer() && (std::is_signed_v<T> || value.get<std::int64_t>() >= 0);
      if (!in_range) refuse(std::is_signed_v<T> ? "an integer" : "a non-negative integer");
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!value.is_number()) refuse("a number");
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (!value.is_string()) refuse("a string");
    }
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception& e) {  // reached only for other types (maps, arrays, ...)
      detail::refuse_json_value(value, owner, name, std::string("readable as the expected type (") + e.what() + ")");
    }
  }
}

/// object[name] as T (see json_value); throws when `object` is not an object or has no `name`.
template <class T>
T json_field(const nlohmann::json& object, const std::string& owner, const std::string& name) {
  check_arg(object.is_object(), owner.c_str(), [&] { return "expected a JSON object, got " + object.dump(); });
  const auto found = object.find(name);
  check_arg(found != object.end(), owner.c_str(), [&] { return "field \"" + name + "\" is missing"; });
  return json_value<T>(*found, owner, name);
}

/// object[name] as T (see json_value), or `fallback` when `object` has no `name`.
template <class T>
T json_field_or(const nlohmann::json& object, const std::string& owner, const std::string& name, T fallback) {
  check_arg(object.is_object(), owner.c_str(), [&] { return "expected a JSON object, got " + object.dump(); });
  const auto found = object.find(name);
  return found == object.end() ? fallback : json_value<T>(*found, owner, name);
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
