#include "lib/numerics/error.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace qkv {

std::string to_string(const Shape& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

NameMismatch::NameMismatch(const std::vector<std::string>& categories) {
  for (const auto& category : categories) categories_.emplace_back(category, std::vector<std::string>{});
}

void NameMismatch::add(const std::string& category, const std::string& item) {
  const auto found = std::find_if(categories_.begin(), categories_.end(), [&](const auto& c) { return c.first == category; });
  if (found == categories_.end()) throw std::logic_error("NameMismatch: unknown category '" + category + "'");
  found->second.push_back(item);
}

bool NameMismatch::empty() const {
  return std::all_of(categories_.begin(), categories_.end(), [](const auto& c) { return c.second.empty(); });
}

void NameMismatch::throw_if_any(const std::string& headline) const {
  if (empty()) return;
  std::string message = headline;
  for (const auto& [category, items] : categories_) {
    if (items.empty()) continue;
    message += "\n  " + category + " (" + std::to_string(items.size()) + "):";
    for (const auto& item : items) message += " " + item + ";";
  }
  throw Error(message);
}

std::string format_number(double value) {
  std::ostringstream out;
  out.precision(std::numeric_limits<double>::max_digits10 - 2);  // 0.1 prints as 0.1
  out << value;
  return out.str();
}

void check_range(const std::string& owner, const char* what, double value, double low, double high,
                 bool high_inclusive) {
  const bool inside = value >= low && (high_inclusive ? value <= high : value < high);  // false for NaN
  if (inside) return;
  std::string range;
  if (std::isinf(high)) range = ">= " + format_number(low);
  else range = "in [" + format_number(low) + ", " + format_number(high) + (high_inclusive ? "]" : ")");
  throw Error(owner + ": " + what + " must be " + range + ", got " + format_number(value));
}

}  // namespace qkv
