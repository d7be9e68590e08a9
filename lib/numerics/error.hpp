#pragma once
// One error family for qkv. Messages name the op and the shapes (or the file and the line),
// so a user can find the bad call without a debugger.
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "lib/numerics/tensor.hpp"

namespace qkv {

/// Any error qkv reports about its input.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Shapes that do not fit an op: `matmul: cannot multiply [2, 3] by [4, 5] ...`.
class ShapeError : public Error {
 public:
  using Error::Error;
};

/// Bad content in a file: the message starts with `FILE:LINE:`.
class ParseError : public Error {
 public:
  using Error::Error;
};

/// `[2, 3, 4]`
std::string to_string(const Shape& shape);

/// A number as a person writes it in an error message: 0.1, 1e-06, 3 (shortest form that
/// reads back the same in practice).
std::string format_number(double value);

/// Everything wrong with a set of named tensors (missing, unexpected, mis-shaped, …), reported
/// in one Error so that a user fixes a checkpoint in one go instead of one name per run.
class NameMismatch {
 public:
  /// `categories` fixes the order in which they print; empty ones are left out.
  explicit NameMismatch(const std::vector<std::string>& categories);
  /// Adds `item` under `category` (one of those given to the constructor).
  void add(const std::string& category, const std::string& item);
  bool empty() const;
  /// Throws Error("<headline>\n  <category> (<n>): a; b; …") when anything was added.
  void throw_if_any(const std::string& headline) const;

 private:
  std::vector<std::pair<std::string, std::vector<std::string>>> categories_;
};

/// Throws ShapeError("<op>: <message>") when `condition` is false.
inline void check_shape(bool condition, const char* op, const std::string& message) {
  if (!condition) throw ShapeError(std::string(op) + ": " + message);
}

/// As above, with the message built by `message()` only on failure: for checks on hot paths,
/// where formatting shapes on every call would cost more than the check.
template <class MessageFn>
  requires std::is_invocable_r_v<std::string, MessageFn>
inline void check_shape(bool condition, const char* op, MessageFn&& message) {
  if (!condition) throw ShapeError(std::string(op) + ": " + message());
}

/// Throws Error("<op>: <message>") when `condition` is false.
inline void check_arg(bool condition, const char* op, const std::string& message) {
  if (!condition) throw Error(std::string(op) + ": " + message);
}

/// As above, with the message built only on failure (per-element or per-call checks).
template <class MessageFn>
  requires std::is_invocable_r_v<std::string, MessageFn>
inline void check_arg(bool condition, const char* op, MessageFn&& message) {
  if (!condition) throw Error(std::string(op) + ": " + message());
}

/// Throws Error("<owner>: <what> must be in [low, high), got <value>") unless `value` lies in
/// [low, high) (or [low, high] when `high_inclusive`); NaN never does. Use infinity for no
/// upper bound (the message then says ">= low"). The one range check: dropout, learning rates,
/// label smoothing and every other bounded option use it.
void check_range(const std::string& owner, const char* what, double value, double low, double high,
                 bool high_inclusive = false);

}  // namespace qkv
