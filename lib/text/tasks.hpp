#pragma once
// Generated translation tasks: small, exactly learnable problems for checking that a seq2seq
// model trains before giving it real text.
//
// Every task is deterministic in `TaskOptions::seed`. Examples are distinct by source across
// the three splits (a distinct pool is drawn, shuffled, then cut), so a model can never be
// scored on an input it trained on.
//
//   dates    "wed,▁3▁mar▁2021" -> "2021-03-03". Character level: every character is a token,
//            the space is the visible token "▁" (U+2581). Years 1900-2099, the weekday is the
//            true one. Ten formats (see `date_formats`); the only all-numeric ones are
//            year-first ("2021/03/03") and day-first with dots ("3.3.2021", German style): no
//            month-first numeric format exists in the task, so every source has one reading.
//   numbers  "three hundred twelve thousand and five" -> "3 1 2 0 0 5". Word-level source,
//            digit-level target, 0-999,999. Words are not hyphenated ("twenty one"); "and"
//            appears only between "thousand" and a final part below 100 ("one thousand and
//            five", but "three hundred five"). The digit count is drawn uniformly from 1-6
//            before the number, so short numbers are not drowned out by six-digit ones.
//   reverse  "a b c d e" -> "e d c b a", length 5-20 over a..z.
//   copy     "a b c d e" -> "a b c d e", same inputs.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "lib/text/corpus.hpp"

namespace qkv {

struct TaskOptions {
  std::size_t train_size = 20000;
  std::size_t validation_size = 1000;
  std::size_t test_size = 1000;
  std::uint64_t seed = 0;
  /// reverse / copy only: sequence lengths, inclusive.
  std::size_t min_length = 5;
  std::size_t max_length = 20;
};

/// The task names `make_task` accepts: dates, numbers, reverse, copy.
const std::vector<std::string>& task_names();
/// Builds the named task; throws Error listing the known names for any other.
Dataset make_task(std::string_view name, const TaskOptions& options = {});

Dataset dates_task(const TaskOptions& options = {});
Dataset numbers_task(const TaskOptions& options = {});
Dataset reverse_task(const TaskOptions& options = {});
Dataset copy_task(const TaskOptions& options = {});

// The pieces, exposed for tests and for printing examples.

struct Date {
  int year, month, day;  // month 1-12, day 1-31
};
/// 0 = Monday .. 6 = Sunday (proleptic Gregorian calendar).
int weekday(const Date& date);
/// How many formats `format_date` knows.
std::size_t date_formats();
/// `date` in format `format` (0 .. date_formats() - 1), plain text with ordinary spaces.
std::string format_date(const Date& date, std::size_t format);
/// "2021-03-03".
std::string iso_date(const Date& date);
/// "three hundred twelve thousand and five"; `number` in [0, 999999].
std::string number_to_words(int number);
/// One token per UTF-8 character, ' ' written as "▁".
Tokens characters(std::string_view text);

}  // namespace qkv
