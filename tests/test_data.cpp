// Data: vocabularies, generated tasks, TSV corpora (d2l.ai's preprocessing and split) and
// batching. Corpus tests that need shared/data/fra-eng.tsv say SKIPPED when it is absent.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "lib/text/batching.hpp"
#include "lib/text/corpus.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/tasks.hpp"
#include "lib/text/vocab.hpp"

using namespace qkv;

namespace {

/// A file in the temp directory, removed when the test ends.
struct TempFile {
  std::filesystem::path path;
  TempFile(const std::string& name, const std::string& contents)
      : path(std::filesystem::temp_directory_path() / ("qkv_test_" + name)) {
    std::ofstream(path, std::ios::binary) << contents;
  }
  ~TempFile() { std::filesystem::remove(path); }
};

const std::filesystem::path fra_eng = QKV_SHARED_DATA_DIR "/fra-eng.tsv";

bool corpus_present() {
  if (std::filesystem::exists(fra_eng)) return true;
  MESSAGE("SKIPPED: " << fra_eng.string() << " not found; this test needs the fra-eng corpus");
  return false;
}

Tokens tokens(const std::string& text) { return split_on_spaces(text); }

std::string joined(const Tokens& tokens) {
  std::string text;
  for (const auto& token : tokens) text += token == "\u2581" ? " " : token;
  return text;
}

/// Captures what spdlog logs while it lives.
struct LogCapture {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000);
  std::shared_ptr<spdlog::logger> previous = spdlog::default_logger();
  LogCapture() { spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink)); }
  ~LogCapture() { spdlog::set_default_logger(previous); }
  std::vector<std::string> lines() const { return sink->last_formatted(); }
};

}  // namespace

// ---- vocab -------------------------------------------------------------------------------

TEST_CASE("vocab: specials first, then by frequency with alphabetical ties, min_freq") {
  const std::vector<Tokens> sentences = {tokens("b a c a"), tokens("d b a <eos> e"), tokens("c z")};
  // counts: a 3, b 2, c 2, d 1, e 1, z 1; <eos> is a special and keeps id 2
  const Vocab all(sentences);
  CHECK(all.tokens() == std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c", "d", "e", "z"});
  const Vocab frequent(sentences, {.min_freq = 2});
  CHECK(frequent.tokens() == std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c"});
  CHECK(frequent.id("<pad>") == Vocab::pad_id);
  CHECK(frequent.id("<unk>") == 3);
  CHECK(frequent.id("z") == Vocab::unk_id);
  CHECK_FALSE(frequent.contains("z"));
  // max_tokens counts only each sentence's first tokens: b a | d b | c z -> b 2
  const Vocab cut(sentences, {.min_freq = 2, .max_tokens = 2});
  CHECK(cut.tokens() == std::vector<std::string>{"<pad>", "<bos>", "<eos>", "<unk>", "b"});
}

TEST_CASE("vocab: encode, decode, bad ids") {
  const Vocab vocab(std::vector<Tokens>{tokens("x y y")});  // y=4, x=5
  CHECK(vocab.encode(tokens("y x q")) == std::vector<std::int64_t>{4, 5, 3});
  const std::vector<std::int64_t> ids = {1, 5, 0, 4, 3, 2, 4, 4};
  CHECK(vocab.decode(ids) == tokens("x y <unk>"));  // <bos>/<pad> skipped, stops at <eos>
  CHECK_THROWS_WITH_AS(vocab.token(6), "Vocab::token: id 6 is outside [0, 6)", Error);
  CHECK_THROWS_AS(vocab.token(-1), Error);
}

TEST_CASE("vocab: JSON save/load round trip and bad files") {
  const Vocab vocab(std::vector<Tokens>{tokens("le chat é le")});
  const TempFile file("vocab.json", "");
  vocab.save(file.path);
  const Vocab loaded = Vocab::load(file.path);
  CHECK(loaded == vocab);
  CHECK(loaded.id("é") == vocab.id("é"));
  CHECK(loaded.id("le") == 4);

  const TempFile garbage("vocab_bad.json", "{\"tokens\": [1, 2");
  CHECK_THROWS_AS(Vocab::load(garbage.path), ParseError);
  CHECK_THROWS_WITH_AS(Vocab::load("/nonexistent/vocab.json"),
                       "Vocab::load: cannot open '/nonexistent/vocab.json'", Error);
  nlohmann::json json = vocab.to_json();
  json["tokens"][0] = "<unk>";
  CHECK_THROWS_WITH_AS(Vocab::from_json(json), doctest::Contains("the first tokens must be <pad>"), Error);
  json = vocab.to_json();
  json["tokens"].push_back("le");
  CHECK_THROWS_WITH_AS(Vocab::from_json(json), doctest::Contains("'le' appears twice"), Error);
  CHECK_THROWS_AS(Vocab::from_json(nlohmann::json::array()), Error);
}

// ---- text --------------------------------------------------------------------------------

TEST_CASE("corpus: d2l preprocessing and tokenization") {
  CHECK(preprocess_d2l("Go.") == "go .");
  CHECK(preprocess_d2l("Cours\u202F!") == "cours !");
  CHECK(preprocess_d2l("Entrez\u00A0!") == "entrez !");
  CHECK(preprocess_d2l("Hi, you!") == "hi , you !");
  CHECK(preprocess_d2l("Wait...") == "wait . . .");  // d2l looks at the original previous char
  CHECK(preprocess_d2l("J'ai perdu.") == "j'ai perdu .");
  CHECK(preprocess_d2l("Arrête-toi ?") == "arrête-toi ?");
  CHECK(preprocess_d2l(".Go") == ".go");  // first character: no space
  CHECK(preprocess_d2l("ÉTÉ À ÇA Œuvre Ÿ Ĳ Ž ΑΩ ДЁ") == "été à ça œuvre ÿ ĳ ž αω дё");
  CHECK(preprocess_d2l("a\u2009!") == "a\u2009 !");  // U+2009 is not d2l's to replace
  CHECK(split_on_spaces("  a  b c ") == Tokens{"a", "b", "c"});
  CHECK(split_on_spaces("").empty());
}

TEST_CASE("corpus: UTF-8 validation") {
  CHECK(find_invalid_utf8("plain é € 𝄞") == std::string_view::npos);
  CHECK(find_invalid_utf8("ab\xC3\x28") == 2);      // bad continuation byte
  CHECK(find_invalid_utf8("\xC0\xAF") == 0);        // overlong '/'
  CHECK(find_invalid_utf8("x\xED\xA0\x80") == 1);   // surrogate
  CHECK(find_invalid_utf8("abc\xE2\x82") == 3);     // cut short
  CHECK(find_invalid_utf8("\xF4\x90\x80\x80") == 0);  // above U+10FFFF
  CHECK(find_invalid_utf8("\xFF") == 0);
}

// ---- TSV corpora -------------------------------------------------------------------------

TEST_CASE("corpus: TSV reading skips bad lines with FILE:LINE warnings, strict mode throws") {
  const TempFile file("pairs.tsv",
                      "Go.\tVa !\n"              // 1
                      "no tab here\n"            // 2
                      "Hi.\tSalut !\r\n"         // 3 CRLF is fine
                      "one\ttwo\tthree\n"        // 4 three columns
                      "\tvide\n"                 // 5 empty first side
                      "Run!\t  \n"               // 6 empty second side (spaces only)
                      "bad \xC3\x28 utf\tx\n"    // 7
                      "Who?\tQui\u202F?\n");     // 8
  LogCapture log;
  const TsvCorpus corpus = read_tsv(file.path);
  CHECK(corpus.bad_lines == 5);
  REQUIRE(corpus.pairs.size() == 3);
  CHECK(corpus.pairs[0] == SentencePair{tokens("go ."), tokens("va !")});
  CHECK(corpus.pairs[1] == SentencePair{tokens("hi ."), tokens("salut !")});
  CHECK(corpus.pairs[2] == SentencePair{tokens("who ?"), tokens("qui ?")});
  CHECK(corpus.line_numbers == std::vector<std::size_t>{1, 3, 8});
  const std::string name = file.path.string();
  const auto lines = log.lines();
  REQUIRE(lines.size() == 6);  // five lines and the total
  CHECK(lines[0].find(name + ":2: no tab") != std::string::npos);
  CHECK(lines[1].find(name + ":4: 3 columns, expected 2") != std::string::npos);
  CHECK(lines[2].find(name + ":5: the first column is empty") != std::string::npos);
  CHECK(lines[3].find(name + ":6: the second column is empty") != std::string::npos);
  CHECK(lines[4].find(name + ":7: invalid UTF-8 at byte 5") != std::string::npos);
  CHECK(lines[5].find("skipped 5 bad line(s)") != std::string::npos);

  CHECK_THROWS_WITH_AS(read_tsv(file.path, {.bad_lines = BadLines::strict}),
                       (name + ":2: no tab: expected two tab-separated columns").c_str(), ParseError);

  const TsvCorpus extra = read_tsv(file.path, {.drop_extra_columns = true});
  CHECK(extra.bad_lines == 4);
  CHECK(extra.pairs[2] == SentencePair{tokens("one"), tokens("two")});

  const TsvCorpus reversed = read_tsv(file.path, {.reverse = true, .max_lines = 3});
  CHECK(reversed.bad_lines == 1);
  REQUIRE(reversed.pairs.size() == 2);
  CHECK(reversed.pairs[0] == SentencePair{tokens("va !"), tokens("go .")});
}

TEST_CASE("corpus: only the first 10 bad lines are logged, then the count") {
  std::string contents;
  for (int i = 0; i < 25; ++i) contents += "bad line " + std::to_string(i) + "\nok\tbien\n";
  const TempFile file("many_bad.tsv", contents);
  LogCapture log;
  const TsvCorpus corpus = read_tsv(file.path);
  CHECK(corpus.bad_lines == 25);
  CHECK(corpus.pairs.size() == 25);
  const auto lines = log.lines();
  REQUIRE(lines.size() == 11);
  CHECK(lines[9].find(file.path.string() + ":19: no tab") != std::string::npos);
  CHECK(lines[10].find("skipped 25 bad line(s) (only the first 10 are shown)") != std::string::npos);
}

TEST_CASE("corpus: a missing file is an error naming it") {
  CHECK_THROWS_WITH_AS(read_tsv("/nonexistent/fra.tsv"), "read_tsv: cannot open '/nonexistent/fra.tsv'", Error);
  CHECK_THROWS_AS(load_corpus("/nonexistent/fra.tsv"), Error);
}

TEST_CASE("corpus: split by distinct source keeps every target of a validation source") {
  std::vector<SentencePair> pairs;
  // Sources s0..s6, in order of first appearance; s2 and s5 get two targets, spread out.
  for (int i = 0; i < 7; ++i) pairs.push_back({{std::string("s").append(std::to_string(i))}, {std::string("t").append(std::to_string(i))}});
  pairs.push_back({{"s2"}, {"u2"}});
  pairs.push_back({{"s5"}, {"u5"}});
  const Dataset dataset = split_by_source(pairs, 3);  // sources 2 and 5 -> validation
  CHECK(dataset.validation == std::vector<SentencePair>{{{"s2"}, {"t2"}}, {{"s5"}, {"t5"}},
                                                        {{"s2"}, {"u2"}}, {{"s5"}, {"u5"}}});
  CHECK(dataset.train.size() == 5);
  CHECK(dataset.test.empty());
  const auto grouped = group_by_source(dataset.validation);
  REQUIRE(grouped.size() == 2);
  CHECK(grouped[0].source == Tokens{"s2"});
  CHECK(grouped[0].references == std::vector<Tokens>{{"t2"}, {"u2"}});
  CHECK(grouped[1].references == std::vector<Tokens>{{"t5"}, {"u5"}});
  CHECK_THROWS_AS(split_by_source(pairs, 0), Error);
}

TEST_CASE("corpus: fra-eng by source, every line valid, no source in two splits") {
  if (!corpus_present()) return;
  const TsvCorpus corpus = read_tsv(fra_eng, {.bad_lines = BadLines::strict});
  REQUIRE(corpus.pairs.size() == 20000);
  CHECK(corpus.pairs.front() == SentencePair{tokens("go ."), tokens("va !")});
  CHECK(corpus.pairs.back() == SentencePair{tokens("stop being a baby ."), tokens("arrête de faire le bébé .")});
  const Dataset dataset = load_corpus(fra_eng);
  const auto train = group_by_source(dataset.train);
  const auto validation = group_by_source(dataset.validation);
  CHECK(train.size() + validation.size() == 12280);  // README: 12,280 distinct English sentences
  CHECK(validation.size() == 1228);
  CHECK(dataset.train.size() + dataset.validation.size() == 20000);
  std::set<Tokens> train_sources;
  for (const auto& group : train) train_sources.insert(group.source);
  std::size_t shared = 0, multi_reference = 0;
  for (const auto& group : validation) {
    shared += train_sources.count(group.source);
    multi_reference += group.references.size() > 1;
  }
  CHECK(shared == 0);
  CHECK(multi_reference > 0);
  const Dataset french_to_english = load_corpus(fra_eng, {.tsv = {.reverse = true}});
  CHECK(french_to_english.train.front() == SentencePair{tokens("va !"), tokens("go .")});
}

TEST_CASE("corpus: d2l split reproduces MTFraEng (512 / 129 pairs, vocabularies 194 / 214)") {
  if (!corpus_present()) return;
  const Dataset dataset = load_corpus(fra_eng, {.split = CorpusSplit::d2l});
  CHECK(dataset.train.size() == 512);
  CHECK(dataset.validation.size() == 129);
  CHECK(dataset.test.empty());
  const Vocabs vocabs = d2l_vocabs(dataset);
  // d2l counts the specials that occur in its padded sequences plus <unk>: English has
  // <pad> <eos> <unk> (194 = 191 + 3), French also <bos> (214 = 210 + 4). Ours always hold
  // all four specials.
  CHECK(vocabs.source.size() - Vocab::num_special == 191);
  CHECK(vocabs.target.size() - Vocab::num_special == 210);
  CHECK(vocabs.source.size() - 1 == 194);  // d2l's English vocabulary has no <bos>
  CHECK(vocabs.target.size() == 214);

  // d2l's arrays for its first pair: src "go . <eos> <pad>...", tgt "<bos> va ! <eos> <pad>...".
  const Batcher batcher(dataset.train, vocabs.source, vocabs.target,
                        {.batch_size = 512, .shuffle = false, .num_steps = 9});
  const std::vector<std::size_t> first = {0};
  const Batch batch = batcher.make_batch(first);
  const auto& en = vocabs.source;
  const auto& fr = vocabs.target;
  const std::int64_t P = Vocab::pad_id;
  CHECK(batch.source == IndexArray{{en.id("go"), en.id("."), Vocab::eos_id, P, P, P, P, P, P}});
  CHECK(batch.source_lengths == IndexArray{3});
  CHECK(batch.target_input == IndexArray{{Vocab::bos_id, fr.id("va"), fr.id("!"), Vocab::eos_id, P, P, P, P, P}});
  CHECK(batch.target_output == IndexArray{{fr.id("va"), fr.id("!"), Vocab::eos_id, P, P, P, P, P, P}});
  CHECK(fr.id("va") != Vocab::unk_id);
}

// ---- generated tasks -----------------------------------------------------------------------

namespace {

void check_disjoint_splits(const Dataset& dataset, std::size_t train, std::size_t validation, std::size_t test) {
  CHECK(dataset.train.size() == train);
  CHECK(dataset.validation.size() == validation);
  CHECK(dataset.test.size() == test);
  std::set<Tokens> sources;
  for (const auto* split : {&dataset.train, &dataset.validation, &dataset.test})
    for (const auto& pair : *split) sources.insert(pair.source);
  CHECK(sources.size() == train + validation + test);  // no source twice, within or across splits
}

/// Reads English number words back, independently of number_to_words.
int parse_number_words(const Tokens& words) {
  static const std::vector<std::string> units = {
      "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
      "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"};
  static const std::vector<std::string> tens = {"twenty", "thirty", "forty", "fifty",
                                                "sixty", "seventy", "eighty", "ninety"};
  int total = 0, current = 0;
  for (const auto& word : words) {
    if (word == "and") continue;
    if (word == "hundred") {
      current *= 100;
    } else if (word == "thousand") {
      total += current * 1000;
      current = 0;
    } else if (auto u = std::find(units.begin(), units.end(), word); u != units.end()) {
      current += static_cast<int>(u - units.begin());
    } else if (auto t = std::find(tens.begin(), tens.end(), word); t != tens.end()) {
      current += 20 + 10 * static_cast<int>(t - tens.begin());
    } else {
      FAIL("unknown number word " << word);
    }
  }
  return total + current;
}

}  // namespace

TEST_CASE("tasks: deterministic by seed, sizes, splits never share a source") {
  const TaskOptions options{.train_size = 3000, .validation_size = 300, .test_size = 300, .seed = 7};
  for (const std::string& name : task_names()) {
    CAPTURE(name);
    const Dataset a = make_task(name, options);
    check_disjoint_splits(a, 3000, 300, 300);
    const Dataset b = make_task(name, options);
    CHECK(a.train == b.train);
    CHECK(a.test == b.test);
    TaskOptions other = options;
    other.seed = 8;
    CHECK(make_task(name, other).train != a.train);
  }
  CHECK_THROWS_WITH_AS(make_task("sort"), "make_task: unknown task 'sort' (known: dates, numbers, reverse, copy)", Error);
  // 26 one-letter sequences cannot fill 30 distinct examples.
  CHECK_THROWS_WITH_AS(copy_task({.train_size = 20, .validation_size = 5, .test_size = 5, .min_length = 1, .max_length = 1}),
                       "copy_task: could only draw 26 distinct examples of the 30 requested", Error);
  CHECK_THROWS_AS(reverse_task({.min_length = 6, .max_length = 5}), Error);
}

TEST_CASE("tasks: default sizes are 20000 / 1000 / 1000") {
  check_disjoint_splits(numbers_task(), 20000, 1000, 1000);
}

TEST_CASE("tasks: date formats, weekdays and ISO targets") {
  const Date date{2021, 3, 3};
  CHECK(weekday(date) == 2);  // Wednesday
  CHECK(weekday({2000, 1, 1}) == 5);  // Saturday
  CHECK(weekday({1900, 3, 1}) == 3);  // Thursday (1900 was not a leap year)
  const std::vector<std::string> expected = {"wed, 3 mar 2021", "March 3, 2021", "3.3.2021", "2021/03/03",
                                             "3rd of march 2021", "wednesday, march 3, 2021", "03 MAR 2021",
                                             "Wed 3 March 2021", "mar 3, 2021", "Wednesday, the 3rd of March 2021"};
  REQUIRE(date_formats() == expected.size());
  for (std::size_t f = 0; f < expected.size(); ++f) CHECK(format_date(date, f) == expected[f]);
  CHECK_THROWS_AS(format_date(date, 10), Error);
  CHECK(iso_date(date) == "2021-03-03");
  CHECK(format_date({1999, 12, 31}, 2) == "31.12.1999");
  for (const auto& [day, suffix] : std::vector<std::pair<int, std::string>>{
           {1, "1st"}, {2, "2nd"}, {3, "3rd"}, {4, "4th"}, {11, "11th"}, {12, "12th"}, {13, "13th"},
           {21, "21st"}, {22, "22nd"}, {23, "23rd"}, {30, "30th"}, {31, "31st"}})
    CHECK(format_date({2020, 1, day}, 4) == suffix + " of january 2020");
  CHECK(characters("wed, 3") == Tokens{"w", "e", "d", ",", "\u2581", "3"});
}

TEST_CASE("tasks: every date source has one reading (all dates 1900-2099, all formats)") {
  std::unordered_set<std::string> sources;
  std::size_t count = 0, wrong_weekdays = 0;
  for (int year = 1900; year <= 2099; ++year)
    for (int month = 1; month <= 12; ++month)
      for (int day = 1; day <= 31; ++day) {
        const std::chrono::year_month_day ymd{std::chrono::year{year}, std::chrono::month{static_cast<unsigned>(month)},
                                 std::chrono::day{static_cast<unsigned>(day)}};
        if (!ymd.ok()) continue;
        // Our weekday against the standard library's.
        wrong_weekdays += weekday({year, month, day}) !=
                          static_cast<int>(std::chrono::weekday{std::chrono::sys_days{ymd}}.iso_encoding()) - 1;
        for (std::size_t f = 0; f < date_formats(); ++f, ++count) sources.insert(format_date({year, month, day}, f));
      }
  CHECK(count == 73049 * date_formats());
  CHECK(sources.size() == count);
  CHECK(wrong_weekdays == 0);
}

TEST_CASE("tasks: generated dates carry their true weekday") {
  const Dataset dataset = dates_task({.train_size = 2000, .validation_size = 100, .test_size = 100, .seed = 3});
  const std::vector<std::string> weekdays = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  std::size_t with_weekday = 0;
  for (const auto& pair : dataset.train) {
    std::string source = joined(pair.source);
    for (char& c : source) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::string target = joined(pair.target);
    REQUIRE(target.size() == 10);
    const int year = std::stoi(target.substr(0, 4)), month = std::stoi(target.substr(5, 2)),
              day = std::stoi(target.substr(8, 2));
    CHECK(std::chrono::year_month_day{std::chrono::year{year}, std::chrono::month{static_cast<unsigned>(month)},
                                      std::chrono::day{static_cast<unsigned>(day)}}.ok());
    CHECK(source.find(target.substr(0, 4)) != std::string::npos);
    for (std::size_t w = 0; w < 7; ++w)
      if (source.find(weekdays[w]) != std::string::npos) {
        ++with_weekday;
        CHECK(static_cast<int>(w) == weekday({year, month, day}));
      }
  }
  CHECK(with_weekday > 500);  // four formats of ten name the weekday
}

TEST_CASE("tasks: number words") {
  CHECK(number_to_words(0) == "zero");
  CHECK(number_to_words(7) == "seven");
  CHECK(number_to_words(40) == "forty");
  CHECK(number_to_words(99) == "ninety nine");
  CHECK(number_to_words(100) == "one hundred");
  CHECK(number_to_words(305) == "three hundred five");
  CHECK(number_to_words(1005) == "one thousand and five");
  CHECK(number_to_words(20000) == "twenty thousand");
  CHECK(number_to_words(312005) == "three hundred twelve thousand and five");
  CHECK(number_to_words(999999) == "nine hundred ninety nine thousand nine hundred ninety nine");
  CHECK_THROWS_AS(number_to_words(1000000), Error);
  const Dataset dataset = numbers_task({.train_size = 3000, .validation_size = 0, .test_size = 0, .seed = 1});
  std::set<std::size_t> digit_counts;
  for (const auto& pair : dataset.train) {
    CHECK(std::to_string(parse_number_words(pair.source)) == joined(pair.target));
    digit_counts.insert(pair.target.size());
  }
  CHECK(digit_counts == std::set<std::size_t>{1, 2, 3, 4, 5, 6});
}

TEST_CASE("tasks: reverse and copy") {
  const TaskOptions options{.train_size = 500, .validation_size = 50, .test_size = 50, .seed = 2};
  std::set<std::size_t> lengths;
  for (const auto& pair : reverse_task(options).train) {
    CHECK(pair.target == Tokens(pair.source.rbegin(), pair.source.rend()));
    lengths.insert(pair.source.size());
    for (const auto& token : pair.source) CHECK((token.size() == 1 && token[0] >= 'a' && token[0] <= 'z'));
  }
  CHECK(*lengths.begin() == 5);
  CHECK(*lengths.rbegin() == 20);
  for (const auto& pair : copy_task(options).validation) CHECK(pair.target == pair.source);
}

// ---- batching ----------------------------------------------------------------------------

TEST_CASE("batching: padded arrays, lengths, decoder input and labels") {
  const std::vector<SentencePair> pairs = {{tokens("a b c"), tokens("x")}, {tokens("b"), tokens("y x z")}};
  const Vocabs vocabs = build_vocabs(pairs);  // source: b=4 a=5 c=6; target: x=4 y=5 z=6
  REQUIRE(vocabs.source.id("b") == 4);
  REQUIRE(vocabs.target.id("y") == 5);
  const Batcher batcher(pairs, vocabs.source, vocabs.target, {.batch_size = 2, .shuffle = false});
  const auto batches = batcher.epoch(0);
  REQUIRE(batches.size() == 1);
  const Batch& batch = batches[0];
  CHECK(batch.indices == std::vector<std::size_t>{0, 1});
  CHECK(batch.source == IndexArray{{5, 4, 6, 2}, {4, 2, 0, 0}});  // with <eos>, padded
  CHECK(batch.source_lengths == IndexArray{4, 2});
  CHECK(batch.target_input == IndexArray{{1, 4, 0, 0}, {1, 5, 4, 6}});
  CHECK(batch.target_output == IndexArray{{4, 2, 0, 0}, {5, 4, 6, 2}});
  CHECK(batch.target_lengths == IndexArray{2, 4});

  const Batcher no_eos(pairs, vocabs.source, vocabs.target, {.batch_size = 2, .shuffle = false, .source_eos = false});
  CHECK(no_eos.epoch(0)[0].source == IndexArray{{5, 4, 6}, {4, 0, 0}});

  // d2l's fixed length: cut to 3, decoder input = <bos> + labels[:-1] (keeps <eos>).
  const Batcher fixed(pairs, vocabs.source, vocabs.target, {.batch_size = 2, .shuffle = false, .num_steps = 3});
  const Batch cut = fixed.epoch(0)[0];
  CHECK(cut.source == IndexArray{{5, 4, 6}, {4, 2, 0}});
  CHECK(cut.source_lengths == IndexArray{3, 2});
  CHECK(cut.target_output == IndexArray{{4, 2, 0}, {5, 4, 6}});
  CHECK(cut.target_input == IndexArray{{1, 4, 2}, {1, 5, 4}});

  const std::vector<std::size_t> bad = {2};
  CHECK_THROWS_WITH_AS(batcher.make_batch(bad), "Batcher::make_batch: index 2 is outside [0, 2)", Error);
  CHECK_THROWS_AS(Batcher(pairs, vocabs.source, vocabs.target, {.batch_size = 0}), Error);
}

namespace {

std::vector<std::vector<std::size_t>> batch_indices(const std::vector<Batch>& batches) {
  std::vector<std::vector<std::size_t>> indices;
  for (const auto& batch : batches) indices.push_back(batch.indices);
  return indices;
}

std::size_t padding(const std::vector<Batch>& batches) {
  std::size_t pads = 0;
  for (const auto& batch : batches)
    for (const auto id : batch.source) pads += id == Vocab::pad_id;
  return pads;
}

}  // namespace

TEST_CASE("batching: seeded shuffling and bucketing") {
  const Dataset dataset = reverse_task({.train_size = 1000, .validation_size = 0, .test_size = 0, .seed = 5});
  const Vocabs vocabs = build_vocabs(dataset.train);
  const BatchOptions options{.batch_size = 32, .seed = 11};
  const Batcher batcher(dataset.train, vocabs.source, vocabs.target, options);
  CHECK(batcher.num_batches() == 32);  // 31 full + 8 left over
  const auto epoch0 = batcher.epoch(0);
  CHECK(batch_indices(epoch0) == batch_indices(Batcher(dataset.train, vocabs.source, vocabs.target, options).epoch(0)));
  CHECK(batch_indices(epoch0) != batch_indices(batcher.epoch(1)));
  BatchOptions other_seed = options;
  other_seed.seed = 12;
  CHECK(batch_indices(epoch0) != batch_indices(Batcher(dataset.train, vocabs.source, vocabs.target, other_seed).epoch(0)));

  const auto covers_every_pair_once = [](const std::vector<Batch>& batches, std::size_t n) {
    std::vector<std::size_t> seen;
    for (const auto& batch : batches) seen.insert(seen.end(), batch.indices.begin(), batch.indices.end());
    std::sort(seen.begin(), seen.end());
    std::vector<std::size_t> all(n);
    std::iota(all.begin(), all.end(), std::size_t{0});
    return seen == all;
  };
  CHECK(covers_every_pair_once(epoch0, 1000));
  CHECK(epoch0.back().size() == 8);  // without bucketing the short batch comes last
  BatchOptions drop = options;
  drop.drop_last = true;
  const Batcher dropping(dataset.train, vocabs.source, vocabs.target, drop);
  CHECK(dropping.num_batches() == 31);
  CHECK(dropping.epoch(0).size() == 31);
  for (const auto& batch : dropping.epoch(0)) CHECK(batch.size() == 32);

  BatchOptions bucketed = options;
  bucketed.bucket_batches = 10;
  const Batcher bucketing(dataset.train, vocabs.source, vocabs.target, bucketed);
  const auto bucketed0 = bucketing.epoch(0);
  CHECK(covers_every_pair_once(bucketed0, 1000));
  CHECK(batch_indices(bucketed0) == batch_indices(bucketing.epoch(0)));
  CHECK(batch_indices(bucketed0) != batch_indices(bucketing.epoch(1)));
  CHECK(padding(bucketed0) * 4 < padding(epoch0));  // lengths 5-20: bucketing removes most padding
  MESSAGE("source pads per epoch: " << padding(epoch0) << " shuffled, " << padding(bucketed0) << " bucketed");
}
