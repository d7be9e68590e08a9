#include "lib/text/tasks.hpp"

#include <algorithm>
#include <array>
#include <unordered_set>
#include <utility>

#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"

namespace qkv {

namespace {

std::size_t draw_between(Rng& rng, std::size_t low, std::size_t high) {  // inclusive
  return low + static_cast<std::size_t>(rng.below(high - low + 1));
}

/// Draws examples until there are enough with distinct sources, shuffles them and cuts the
/// splits. The shuffle matters: after the small part of a task's input space is used up,
/// later draws come only from the rest, so without it the splits would differ in distribution.
template <class Generate>
Dataset distinct_splits(const char* task, const TaskOptions& options, Generate generate) {
  const std::size_t total = options.train_size + options.validation_size + options.test_size;
  Rng rng(options.seed);
  std::unordered_set<std::string> seen_sources;  // sources joined with U+001F, which no task emits
  std::vector<SentencePair> pool;
  pool.reserve(total);
  // Each draw is new with good probability for every task here; this bound only stops a
  // request larger than the task's input space from looping forever.
  const std::size_t max_draws = 100 * total + 10000;
  for (std::size_t draw = 0; pool.size() < total; ++draw) {
    check_arg(draw < max_draws, task, [&] {
      return "could only draw " + std::to_string(pool.size()) + " distinct examples of the " + std::to_string(total) +
             " requested";
    });
    SentencePair pair = generate(rng);
    std::string key;
    for (const std::string& token : pair.source) (key += token) += '\x1F';
    if (seen_sources.insert(std::move(key)).second) pool.push_back(std::move(pair));
  }
  for (std::size_t i = pool.size(); i > 1; --i)  // Fisher-Yates
    std::swap(pool[i - 1], pool[static_cast<std::size_t>(rng.below(i))]);
  Dataset dataset;
  const auto cut = [&](std::size_t from, std::size_t count) {
    const auto begin = pool.begin() + static_cast<std::ptrdiff_t>(from);
    return std::vector<SentencePair>(begin, begin + static_cast<std::ptrdiff_t>(count));
  };
  dataset.train = cut(0, options.train_size);
  dataset.validation = cut(options.train_size, options.validation_size);
  dataset.test = cut(options.train_size + options.validation_size, options.test_size);
  return dataset;
}

// ---- dates -------------------------------------------------------------------------------

constexpr std::array<const char*, 12> month_names = {
    "january", "february", "march",     "april",   "may",      "june",
    "july",    "august",   "september", "october", "november", "december"};
constexpr std::array<const char*, 7> weekday_names = {"monday", "tuesday",  "wednesday", "thursday",
                                                      "friday", "saturday", "sunday"};

bool is_leap(int year) { return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0; }

int days_in_month(int year, int month) {
  constexpr std::array<int, 12> days = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return month == 2 && is_leap(year) ? 29 : days[static_cast<std::size_t>(month - 1)];
}

/// Days since 1970-01-01 (H. Hinnant's days_from_civil).
long days_from_civil(const Date& date) {
  const long y = date.year - (date.month <= 2 ? 1 : 0);
  const long era = (y >= 0 ? y : y - 399) / 400;
  const long year_of_era = y - era * 400;
  const long day_of_year = (153 * (date.month > 2 ? date.month - 3 : date.month + 9) + 2) / 5 + date.day - 1;
  const long day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

std::string capitalized(std::string word) {
  word[0] = static_cast<char>(word[0] - 'a' + 'A');
  return word;
}

std::string uppercased(std::string word) {
  for (char& c : word) c = static_cast<char>(c - 'a' + 'A');
  return word;
}

std::string ordinal(int day) {
  const char* suffix = "th";
  if (day < 11 || day > 13) {
    if (day % 10 == 1) suffix = "st";
    if (day % 10 == 2) suffix = "nd";
    if (day % 10 == 3) suffix = "rd";
  }
  return std::to_string(day) + suffix;
}

std::string two_digits(int value) {
  std::string digits = value < 10 ? "0" : "";
  digits += std::to_string(value);
  return digits;
}

// ---- numbers -----------------------------------------------------------------------------

constexpr std::array<const char*, 20> small_numbers = {
    "zero",    "one",     "two",       "three",    "four",    "five",    "six",
    "seven",   "eight",   "nine",      "ten",      "eleven",  "twelve",  "thirteen",
    "fourteen", "fifteen", "sixteen",  "seventeen", "eighteen", "nineteen"};
constexpr std::array<const char*, 10> tens_names = {"",      "",      "twenty",  "thirty", "forty",
                                                    "fifty", "sixty", "seventy", "eighty", "ninety"};

std::string below_hundred(int n) {  // 1..99
  if (n < 20) return small_numbers[static_cast<std::size_t>(n)];
  std::string words = tens_names[static_cast<std::size_t>(n / 10)];
  if (n % 10 != 0) words += std::string(" ") + small_numbers[static_cast<std::size_t>(n % 10)];
  return words;
}

std::string below_thousand(int n) {  // 1..999
  if (n < 100) return below_hundred(n);
  std::string words = std::string(small_numbers[static_cast<std::size_t>(n / 100)]) + " hundred";
  if (n % 100 != 0) {
    words += ' ';
    words += below_hundred(n % 100);
  }
  return words;
}

void check_lengths(const TaskOptions& options, const char* task) {
  check_arg(options.min_length >= 1 && options.min_length <= options.max_length, task, [&] {
    return "need 1 <= min_length <= max_length, got " + std::to_string(options.min_length) + " and " +
           std::to_string(options.max_length);
  });
}

Tokens letters(Rng& rng, const TaskOptions& options) {
  Tokens sequence(draw_between(rng, options.min_length, options.max_length));
  for (std::string& token : sequence) token = std::string(1, static_cast<char>('a' + rng.below(26)));
  return sequence;
}

}  // namespace

int weekday(const Date& date) {
  const long days = days_from_civil(date);
  return static_cast<int>(((days + 3) % 7 + 7) % 7);  // 1970-01-01 was a Thursday (3)
}

std::size_t date_formats() { return 10; }

std::string format_date(const Date& date, std::size_t format) {
  const std::string month = month_names[static_cast<std::size_t>(date.month - 1)];
  const std::string month3 = month.substr(0, 3);
  const std::string weekday_name = weekday_names[static_cast<std::size_t>(weekday(date))];
  const std::string day = std::to_string(date.day);
  const std::string year = std::to_string(date.year);
  switch (format) {
    case 0: return weekday_name.substr(0, 3) + ", " + day + " " + month3 + " " + year;  // wed, 3 mar 2021
    case 1: return capitalized(month) + " " + day + ", " + year;                        // March 3, 2021
    case 2: return day + "." + std::to_string(date.month) + "." + year;                 // 3.3.2021 (day first)
    case 3: return year + "/" + two_digits(date.month) + "/" + two_digits(date.day);     // 2021/03/03
    case 4: return ordinal(date.day) + " of " + month + " " + year;                      // 3rd of march 2021
    case 5: return weekday_name + ", " + month + " " + day + ", " + year;                // wednesday, march 3, 2021
    case 6: return two_digits(date.day) + " " + uppercased(month3) + " " + year;        // 03 MAR 2021
    case 7: return capitalized(weekday_name.substr(0, 3)) + " " + day + " " + capitalized(month) + " " + year;
    case 8: return month3 + " " + day + ", " + year;                                     // mar 3, 2021
    case 9: return capitalized(weekday_name) + ", the " + ordinal(date.day) + " of " + capitalized(month) + " " + year;
    default:
      throw Error("format_date: format " + std::to_string(format) + " is outside [0, " +
                  std::to_string(date_formats()) + ")");
  }
}

std::string iso_date(const Date& date) {
  return std::to_string(date.year) + "-" + two_digits(date.month) + "-" + two_digits(date.day);
}

Tokens characters(std::string_view text) {
  Tokens tokens;
  for (std::size_t pos = 0; pos < text.size();) {
    // Length of the UTF-8 sequence from its lead byte; the generators only emit valid text.
    const auto lead = static_cast<unsigned char>(text[pos]);
    const std::size_t length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    tokens.emplace_back(lead == ' ' ? std::string("\u2581") : std::string(text.substr(pos, length)));
    pos += length;
  }
  return tokens;
}

std::string number_to_words(int number) {
  check_arg(number >= 0 && number <= 999999, "number_to_words",
            [&] { return std::to_string(number) + " is outside [0, 999999]"; });
  if (number == 0) return "zero";
  const int thousands = number / 1000;
  const int rest = number % 1000;
  std::string words;
  if (thousands > 0) words = below_thousand(thousands) + " thousand";
  if (rest > 0) {
    if (thousands > 0) words += rest < 100 ? " and " : " ";
    words += below_thousand(rest);
  }
  return words;
}

Dataset dates_task(const TaskOptions& options) {
  return distinct_splits("dates_task", options, [](Rng& rng) {
    Date date;
    date.year = static_cast<int>(draw_between(rng, 1900, 2099));
    date.month = static_cast<int>(draw_between(rng, 1, 12));
    date.day = static_cast<int>(draw_between(rng, 1, static_cast<std::size_t>(days_in_month(date.year, date.month))));
    const std::size_t format = static_cast<std::size_t>(rng.below(date_formats()));
    return SentencePair{characters(format_date(date, format)), characters(iso_date(date))};
  });
}

Dataset numbers_task(const TaskOptions& options) {
  return distinct_splits("numbers_task", options, [](Rng& rng) {
    const std::size_t digits = draw_between(rng, 1, 6);
    std::size_t low = 1;
    for (std::size_t i = 1; i < digits; ++i) low *= 10;
    const int number = static_cast<int>(draw_between(rng, digits == 1 ? 0 : low, 10 * low - 1));
    return SentencePair{split_on_spaces(number_to_words(number)), characters(std::to_string(number))};
  });
}

Dataset reverse_task(const TaskOptions& options) {
  check_lengths(options, "reverse_task");
  return distinct_splits("reverse_task", options, [&options](Rng& rng) {
    Tokens source = letters(rng, options);
    return SentencePair{source, Tokens(source.rbegin(), source.rend())};
  });
}

Dataset copy_task(const TaskOptions& options) {
  check_lengths(options, "copy_task");
  return distinct_splits("copy_task", options, [&options](Rng& rng) {
    Tokens source = letters(rng, options);
    return SentencePair{source, source};
  });
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"dates", "numbers", "reverse", "copy"};
  return names;
}

Dataset make_task(std::string_view name, const TaskOptions& options) {
  if (name == "dates") return dates_task(options);
  if (name == "numbers") return numbers_task(options);
  if (name == "reverse") return reverse_task(options);
  if (name == "copy") return copy_task(options);
  throw Error("make_task: unknown task '" + std::string(name) + "' (known: dates, numbers, reverse, copy)");
}

}  // namespace qkv
