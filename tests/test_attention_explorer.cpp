// The attention explorer's page writer (train/attention_explorer.hpp): the JSON holds every map
// of every group with its labels and entropies, head importances are checked and embedded, and
// no token can break out of the page's data script. tests/browser/ drives the page itself.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "lib/text/corpus.hpp"
#include "models/registry.hpp"
#include "train/attention_explorer.hpp"
#include "train/data_spec.hpp"

using namespace qkv;
using namespace qkv::train;
using nlohmann::json;

namespace {

const std::string data_open = "<script type=\"application/json\" id=\"attention-data\">";

/// The JSON between the page's data script tags, parsed.
json embedded_data(const std::string& page) {
  const std::size_t begin = page.find(data_open);
  REQUIRE(begin != std::string::npos);
  const std::size_t end = page.find("</script>", begin);
  REQUIRE(end != std::string::npos);
  return json::parse(page.substr(begin + data_open.size(), end - begin - data_open.size()));
}

/// How often `pattern` matches in `text`.
std::ptrdiff_t matches(const std::string& text, const std::string& pattern) {
  const std::regex regex(pattern);
  return std::distance(std::sregex_iterator(text.begin(), text.end(), regex), std::sregex_iterator());
}

/// A row-stochastic [rows, columns] map whose weights differ by `seed`.
Array stochastic(std::size_t rows, std::size_t columns, double seed) {
  Array map = Array::from_shape({rows, columns});
  for (std::size_t i = 0; i < rows; ++i) {
    double total = 0;
    for (std::size_t j = 0; j < columns; ++j) total += map(i, j) = real(1 + std::sin(seed + double(3 * i + j)) * 0.9);
    for (std::size_t j = 0; j < columns; ++j) map(i, j) = real(map(i, j) / total);
  }
  return map;
}

/// A hand-made sentence: two layers x two heads of cross-attention, one encoder self map, and
/// tokens that are markup.
SentenceAttention markup_sentence() {
  SentenceAttention sentence;
  sentence.source = {"</script><script>alert(1)</script>", "<!--", "a&b", "\"q\""};
  sentence.hypothesis.tokens = {7};  // "x"
  sentence.hypothesis.finished = true;
  const Tokens keys = {"</script><script>alert(1)</script>", "<!--", "a&b", "\"q\"", "<eos>"};
  SentenceAttention::Group cross{
      .title = "cross-attention", .heads = 2, .queries = {"x", "<eos>"}, .keys = keys, .names = {}, .maps = {}};
  for (int m = 0; m < 4; ++m) {
    cross.names.push_back("layer " + std::to_string(m / 2 + 1) + " head " + std::to_string(m % 2 + 1));
    cross.maps.push_back(stochastic(2, 5, m));
  }
  SentenceAttention::Group self{.title = "encoder self-attention", .query_side = models::TokenSide::source,
                                .heads = 1, .queries = keys, .keys = keys, .names = {"layer 1 head 1"},
                                .maps = {stochastic(5, 5, 7)}};
  sentence.groups = {cross, self};
  return sentence;
}

/// <pad> <bos> <eos> <unk> a b c x, on both sides.
Vocabs small_vocabs() {
  const std::vector<Tokens> text = {{"a", "b", "c", "x"}};
  return {Vocab(text), Vocab(text)};
}

}  // namespace

TEST_CASE("attention explorer: the data holds every map, labelled, with its entropies") {
  const SentenceAttention sentence = markup_sentence();
  const json data = attention_explorer_data(sentence, small_vocabs(), task_data_spec("reverse", 0, 0, 0));
  CHECK(data.at("format") == "qkv-attention-explorer");
  CHECK(data.at("version") == 1);
  CHECK(data.at("source") == "</script><script>alert(1)</script> <!-- a&b \"q\"");
  CHECK(data.at("translation") == "x");
  CHECK(data.at("finished") == true);
  CHECK_FALSE(data.contains("head_importance"));
  REQUIRE(data.at("groups").size() == 2);
  for (std::size_t g = 0; g < 2; ++g) {
    const SentenceAttention::Group& group = sentence.groups[g];
    const json& written = data["groups"][g];
    CHECK(written.at("title") == group.title);
    CHECK(written.at("query_tokens") == group.queries);
    CHECK(written.at("key_tokens") == group.keys);
    CHECK(written.at("heads") == group.heads);
    CHECK(written.at("layers") == group.maps.size() / group.heads);
    CHECK(written.at("max_entropy").get<double>() == doctest::Approx(std::log(5.0)).epsilon(1e-4));
    REQUIRE(written.at("maps").size() == group.maps.size());
    for (std::size_t m = 0; m < group.maps.size(); ++m) {
      const json& map = written["maps"][m];
      CHECK(map.at("name") == group.names[m]);
      CHECK(map.at("layer") == m / group.heads + 1);
      CHECK(map.at("head") == m % group.heads + 1);
      const std::vector<double> entropies = row_entropies(group.maps[m]);
      REQUIRE(map.at("weights").size() == group.queries.size());
      REQUIRE(map.at("row_entropy").size() == group.queries.size());
      double mean = 0;
      for (std::size_t i = 0; i < group.queries.size(); ++i) {
        REQUIRE(map["weights"][i].size() == group.keys.size());
        for (std::size_t j = 0; j < group.keys.size(); ++j)
          CHECK(std::abs(map["weights"][i][j].get<double>() - group.maps[m](i, j)) <= 5e-6 + 1e-12);
        CHECK(map["row_entropy"][i].get<double>() == doctest::Approx(entropies[i]).epsilon(1e-3));
        mean += entropies[i] / double(group.queries.size());
      }
      CHECK(map.at("mean_entropy").get<double>() == doctest::Approx(mean).epsilon(1e-3));
    }
  }
  CHECK(data["groups"][0].at("queries") == "target");
  CHECK(data["groups"][0].at("keys") == "source");
  CHECK(data["groups"][1].at("queries") == "source");
}

TEST_CASE("attention explorer: no token can close the data script or start a comment") {
  SentenceAttention sentence = markup_sentence();
  sentence.groups[0].queries[0] = "caf\xc3";  // not valid UTF-8: replaced, not thrown
  const std::string page =
      attention_explorer_html(attention_explorer_data(sentence, small_vocabs(), task_data_spec("reverse", 0, 0, 0)));
  CHECK(matches(page, "<script") == 2);  // the data and the page's own script
  CHECK(matches(page, "</script>") == 2);
  CHECK(page.find("<!--") == std::string::npos);
  CHECK(page.find("alert(1)") != std::string::npos);  // there, as escaped text
  const json data = embedded_data(page);
  CHECK(data["groups"][0]["key_tokens"][0] == "</script><script>alert(1)</script>");
  CHECK(data["groups"][0]["key_tokens"][1] == "<!--");
  CHECK(data["groups"][0]["query_tokens"][0] == "caf\xef\xbf\xbd");  // U+FFFD
  CHECK(page.find("innerHTML") == std::string::npos);  // tokens only ever go through textContent
}

TEST_CASE("attention explorer: head importances are embedded when they fit, refused when not") {
  const SentenceAttention sentence = markup_sentence();
  const Vocabs vocabs = small_vocabs();
  const json spec = task_data_spec("reverse", 0, 0, 0);
  const json importance = {{"cross-attention", {{0.5, 0.25}, {1, -0.125}}}};
  const json data = attention_explorer_data(sentence, vocabs, spec, importance);
  CHECK(data.at("head_importance") == importance);
  CHECK(embedded_data(attention_explorer_html(data)).at("head_importance") == importance);
  CHECK_THROWS_WITH_AS(attention_explorer_data(sentence, vocabs, spec, {{"decoder self-attention", {{1}}}}),
                       doctest::Contains("no attention group \"decoder self-attention\" in this sentence (it has: "
                                         "cross-attention, encoder self-attention)"),
                       Error);
  CHECK_THROWS_WITH_AS(attention_explorer_data(sentence, vocabs, spec, {{"cross-attention", {{0.5, 0.25}}}}),
                       doctest::Contains("\"cross-attention\" must be 2 layers of 2 numbers, got [[0.5,0.25]]"), Error);
  CHECK_THROWS_WITH_AS(attention_explorer_data(sentence, vocabs, spec, {{"cross-attention", {{0.5, "x"}, {1, 2}}}}),
                       doctest::Contains("must be a number, got \"x\""), Error);
  CHECK_THROWS_WITH_AS(attention_explorer_data(sentence, vocabs, spec, json::array()),
                       doctest::Contains("must be an object keyed by group title"), Error);
}

TEST_CASE("attention explorer: a transformer's page holds its three attentions, every layer and head") {
  const Vocabs vocabs = small_vocabs();
  const models::ModelKind& kind = models::find_model_kind("transformer");
  const json config = models::config_from_options(
      kind, {{"--d-model", "8"}, {"--heads", "2"}, {"--layers", "2"}, {"--dropout", "0"}});
  const auto model = models::make_model("transformer", config, vocabs.source.size(), vocabs.target.size());
  const Tokens source = {"c", "a", "b"};
  const SentenceAttention sentence = sentence_attention(*model, vocabs, source, {.beam = 1, .max_length = 6});
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("qkv_test_explorer_" + std::to_string(::getpid()) + ".html");
  write_attention_explorer(sentence, vocabs, task_data_spec("reverse", 0, 0, 0), file.string());
  std::ifstream in(file);
  std::stringstream page;
  page << in.rdbuf();
  std::filesystem::remove(file);
  const json data = embedded_data(page.str());
  REQUIRE(data.at("groups").size() == 3);
  for (const json& group : data["groups"]) {
    CHECK(group.at("layers") == 2);
    CHECK(group.at("heads") == 2);
    CHECK(group.at("maps").size() == 4);
  }
  CHECK(data["groups"][1].at("key_tokens") == Tokens{"c", "a", "b", "<eos>"});
  CHECK(data["groups"][0].at("query_tokens").size() == data["groups"][0]["maps"][3]["weights"].size());
  CHECK_THROWS_WITH_AS(write_attention_explorer(sentence, vocabs, task_data_spec("reverse", 0, 0, 0),
                                                "/no/such/dir/page.html"),
                       doctest::Contains("/no/such/dir/page.html"), Error);
}
