#pragma once
// One name table per enum, used for the command line, config.json, logs and error messages
// alike, so an option is spelled the same everywhere.
//
// An enum opts in with a constexpr function `enum_names(E)` in its own namespace (found by
// argument-dependent lookup) that returns its table:
//
//   enum class LengthPenalty { none, length, gnmt };
//   constexpr EnumNames<LengthPenalty, 3> enum_names(LengthPenalty) {
//     return {"length penalty", {{{LengthPenalty::none, "none"}, {LengthPenalty::length, "length"},
//                                 {LengthPenalty::gnmt, "gnmt"}}}};
//   }
//
//   name_of(LengthPenalty::gnmt)                     -> "gnmt"
//   parse_name<LengthPenalty>("gnmt", "beam_search") -> LengthPenalty::gnmt
//   parse_name<LengthPenalty>("gmnt", "beam_search") -> Error "beam_search: unknown length
//                                                      penalty 'gmnt'; known: none, length, gnmt"
#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lib/numerics/error.hpp"

namespace qkv {

template <class Enum, std::size_t Count>
struct EnumNames {
  std::string_view what;  // what the enum chooses, for messages: "length penalty"
  std::array<std::pair<Enum, std::string_view>, Count> entries;
};

/// The names of every value, in the table's order.
template <class Enum>
std::vector<std::string> names_of() {
  std::vector<std::string> names;
  for (const auto& [value, name] : enum_names(Enum{}).entries) names.emplace_back(name);
  return names;
}

/// The names joined by ", ", for help texts and messages.
template <class Enum>
std::string joined_names_of() {
  std::string text;
  for (const std::string& name : names_of<Enum>()) text += (text.empty() ? "" : ", ") + name;
  return text;
}

template <class Enum>
std::string name_of(Enum value) {
  for (const auto& [entry, name] : enum_names(Enum{}).entries)
    if (entry == value) return std::string(name);
  throw Error("name_of: " + std::string(enum_names(Enum{}).what) + " value " +
              std::to_string(static_cast<long long>(value)) + " has no name");
}

/// The value named `name`; Error("<context>: unknown <what> '<name>'; known: …") otherwise.
template <class Enum>
Enum parse_name(std::string_view name, std::string_view context) {
  for (const auto& [value, entry] : enum_names(Enum{}).entries)
    if (entry == name) return value;
  throw Error(std::string(context) + ": unknown " + std::string(enum_names(Enum{}).what) + " '" + std::string(name) +
              "'; known: " + joined_names_of<Enum>());
}

}  // namespace qkv
