#include "lib/text/corpus.hpp"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>

#include <spdlog/spdlog.h>

#include "lib/numerics/error.hpp"

namespace qkv {

std::vector<SourceWithReferences> group_by_source(std::span<const SentencePair> pairs) {
  std::vector<SourceWithReferences> groups;
  std::map<Tokens, std::size_t> group_of_source;
  for (const SentencePair& pair : pairs) {
    const auto [it, inserted] = group_of_source.emplace(pair.source, groups.size());
    if (inserted) groups.push_back({pair.source, {}});
    groups[it->second].references.push_back(pair.target);
  }
  return groups;
}

Vocabs build_vocabs(std::span<const SentencePair> pairs, const VocabOptions& options) {
  std::vector<Tokens> sources, targets;
  sources.reserve(pairs.size());
  targets.reserve(pairs.size());
  for (const SentencePair& pair : pairs) {
    sources.push_back(pair.source);
    targets.push_back(pair.target);
  }
  return {Vocab(sources, options), Vocab(targets, options)};
}

// ---- text --------------------------------------------------------------------------------

namespace {

constexpr std::size_t npos = std::string_view::npos;

/// Decodes the code point at `text[pos]` and its length in bytes; length 0 if invalid.
std::pair<char32_t, std::size_t> decode_utf8(std::string_view text, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[pos + i]); };
  const unsigned char lead = byte(0);
  if (lead < 0x80) return {lead, 1};
  std::size_t length;
  char32_t code_point;
  char32_t minimum;  // smallest code point this length may encode: anything less is overlong
  if ((lead & 0xE0) == 0xC0) {
    length = 2, code_point = lead & 0x1F, minimum = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, code_point = lead & 0x0F, minimum = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, code_point = lead & 0x07, minimum = 0x10000;
  } else {
    return {0, 0};
  }
  if (pos + length > text.size()) return {0, 0};
  for (std::size_t i = 1; i < length; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return {0, 0};
    code_point = (code_point << 6) | (byte(i) & 0x3F);
  }
  const bool surrogate = code_point >= 0xD800 && code_point <= 0xDFFF;
  if (code_point < minimum || code_point > 0x10FFFF || surrogate) return {0, 0};
  return {code_point, length};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// Python's str.lower() on the blocks named in the header; other code points unchanged.
char32_t lower_code_point(char32_t cp) {
  const auto in = [cp](char32_t first, char32_t last) { return cp >= first && cp <= last; };
  const bool even = cp % 2 == 0;
  if (in(U'A', U'Z')) return cp + 32;
  if (in(0xC0, 0xDE) && cp != 0xD7) return cp + 32;         // À..Þ except ×
  if (in(0x100, 0x137) && even && cp != 0x130) return cp + 1;  // Ā..Ķ pairs (İ is special)
  if (in(0x139, 0x148) && !even) return cp + 1;              // Ĺ..Ň pairs start odd
  if (in(0x14A, 0x177) && even) return cp + 1;               // Ŋ..Ŷ, Œ included
  if (cp == 0x178) return 0xFF;                               // Ÿ -> ÿ
  if (in(0x179, 0x17E) && !even) return cp + 1;              // Ź..Ž
  if (in(0x391, 0x3A9) && cp != 0x3A2) return cp + 32;       // Greek capitals
  if (in(0x410, 0x42F)) return cp + 32;                       // Cyrillic А..Я
  if (in(0x400, 0x40F)) return cp + 80;                       // Cyrillic Ѐ..Џ
  return cp;
}

}  // namespace

std::size_t find_invalid_utf8(std::string_view text) {
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t length = decode_utf8(text, pos).second;
    if (length == 0) return pos;
    pos += length;
  }
  return npos;
}

std::string lowercase_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const auto [cp, length] = decode_utf8(text, pos);
    check_arg(length != 0, "lowercase_utf8", [&] { return "invalid UTF-8 at byte " + std::to_string(pos); });
    if (cp == 0x130) {
      out += "i\xCC\x87";  // İ lowers to i + U+0307 COMBINING DOT ABOVE, as in Python
    } else {
      append_utf8(out, lower_code_point(cp));
    }
    pos += length;
  }
  return out;
}

std::string preprocess_d2l(std::string_view text) {
  std::string spaced;
  spaced.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    if (text.substr(pos, 3) == "\u202F") {
      spaced += ' ', pos += 3;
    } else if (text.substr(pos, 2) == "\u00A0") {
      spaced += ' ', pos += 2;
    } else {
      spaced += text[pos++];
    }
  }
  const std::string lowered = lowercase_utf8(spaced);
  std::string out;
  out.reserve(lowered.size() + lowered.size() / 4);
  for (std::size_t i = 0; i < lowered.size(); ++i) {
    const char c = lowered[i];
    const bool mark = c == ',' || c == '.' || c == '!' || c == '?';
    if (mark && i > 0 && lowered[i - 1] != ' ') out += ' ';
    out += c;
  }
  return out;
}

Tokens split_on_spaces(std::string_view text) {
  Tokens tokens;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(' ', start);
    if (end == npos) end = text.size();
    if (end > start) tokens.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return tokens;
}

// ---- TSV corpora -------------------------------------------------------------------------

namespace {

constexpr std::size_t max_warnings = 10;

/// Why `line` cannot be a pair, or an empty string if it is one (then `pair` holds it).
std::string parse_line(std::string_view line, const TsvOptions& options, SentencePair& pair) {
  if (const std::size_t bad = find_invalid_utf8(line); bad != npos)
    return "invalid UTF-8 at byte " + std::to_string(bad + 1);
  std::vector<std::string_view> columns;
  for (std::size_t start = 0;;) {
    const std::size_t tab = line.find('\t', start);
    columns.push_back(line.substr(start, tab == npos ? npos : tab - start));
    if (tab == npos) break;
    start = tab + 1;
  }
  if (columns.size() < 2) return "no tab: expected two tab-separated columns";
  if (columns.size() > 2 && !options.drop_extra_columns)
    return std::to_string(columns.size()) + " columns, expected 2 (drop_extra_columns drops the rest)";
  Tokens first = split_on_spaces(preprocess_d2l(columns[0]));
  Tokens second = split_on_spaces(preprocess_d2l(columns[1]));
  if (first.empty()) return "the first column is empty";
  if (second.empty()) return "the second column is empty";
  if (options.reverse) std::swap(first, second);
  pair = {std::move(first), std::move(second)};
  return {};
}

}  // namespace

TsvCorpus read_tsv(const std::filesystem::path& path, const TsvOptions& options) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("read_tsv: cannot open '" + path.string() + "'");
  return read_tsv(file, path.string(), options);
}

TsvCorpus read_tsv(std::istream& in, const std::string& name, const TsvOptions& options) {
  TsvCorpus corpus;
  std::string line;
  for (std::size_t line_number = 1; std::getline(in, line); ++line_number) {
    if (options.max_lines != 0 && line_number > options.max_lines) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    SentencePair pair;
    const std::string reason = parse_line(line, options, pair);
    if (reason.empty()) {
      corpus.pairs.push_back(std::move(pair));
      corpus.line_numbers.push_back(line_number);
      continue;
    }
    const std::string message = name + ":" + std::to_string(line_number) + ": " + reason;
    if (options.bad_lines == BadLines::strict) throw ParseError(message);
    if (corpus.bad_lines < max_warnings) spdlog::warn("{} (line skipped)", message);
    ++corpus.bad_lines;
  }
  if (in.bad()) throw Error("read_tsv: error reading '" + name + "'");
  if (corpus.bad_lines > 0)
    spdlog::warn("{}: skipped {} bad line(s){}", name, corpus.bad_lines,
                 corpus.bad_lines > max_warnings ? " (only the first 10 are shown)" : "");
  return corpus;
}

Dataset split_by_source(std::span<const SentencePair> pairs, std::size_t validation_every) {
  check_arg(validation_every >= 1, "split_by_source", "validation_every must be at least 1");
  std::map<Tokens, std::size_t> source_index;  // distinct sources in order of first appearance
  Dataset dataset;
  for (const SentencePair& pair : pairs) {
    const std::size_t index = source_index.emplace(pair.source, source_index.size()).first->second;
    const bool validation = index % validation_every == validation_every - 1;
    (validation ? dataset.validation : dataset.train).push_back(pair);
  }
  return dataset;
}

Dataset load_corpus(const std::filesystem::path& path, const CorpusOptions& options) {
  if (options.split == CorpusSplit::by_source)
    return split_by_source(read_tsv(path, options.tsv).pairs, options.validation_every);
  TsvOptions tsv = options.tsv;
  tsv.max_lines = options.d2l_num_train + options.d2l_num_val + 1;
  TsvCorpus corpus = read_tsv(path, tsv);
  Dataset dataset;
  const std::size_t num_train = std::min(options.d2l_num_train, corpus.pairs.size());
  const auto middle = corpus.pairs.begin() + static_cast<std::ptrdiff_t>(num_train);
  dataset.train.assign(corpus.pairs.begin(), middle);
  dataset.validation.assign(middle, corpus.pairs.end());
  return dataset;
}

Vocabs d2l_vocabs(const Dataset& dataset, std::size_t num_steps) {
  std::vector<SentencePair> all = dataset.train;
  all.insert(all.end(), dataset.validation.begin(), dataset.validation.end());
  return build_vocabs(all, {.min_freq = 2, .max_tokens = num_steps});
}

}  // namespace qkv
