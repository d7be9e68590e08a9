#pragma once
// One error family for qkv. Messages name the op and the shapes (or the file and the line),
// so a user can find the bad call without a debugger.
#include <stdexcept>
#include <string>

#include "lib/tensor.hpp"

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

/// Throws ShapeError("<op>: <message>") when `condition` is false.
inline void check_shape(bool condition, const char* op, const std::string& message) {
  if (!condition) throw ShapeError(std::string(op) + ": " + message);
}

/// Throws Error("<op>: <message>") when `condition` is false.
inline void check_arg(bool condition, const char* op, const std::string& message) {
  if (!condition) throw Error(std::string(op) + ": " + message);
}

}  // namespace qkv
