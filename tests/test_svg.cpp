// SVG plots: documents are well formed, draw what they are given (cells, entropies, links,
// ticks), escape every label, and refuse bad input with messages naming the shapes.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <unistd.h>

#include "lib/plot/svg.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::test;

namespace {

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.';
}

// "" when every '&' in `text` starts one of XML's five entities or a character reference.
std::string entity_problem(std::string_view text) {
  for (std::size_t at = text.find('&'); at != std::string_view::npos; at = text.find('&', at + 1)) {
    const std::size_t end = text.find(';', at);
    if (end == std::string_view::npos) return "unterminated '&' in: " + std::string(text);
    const std::string_view entity = text.substr(at + 1, end - at - 1);
    const bool known = entity == "amp" || entity == "lt" || entity == "gt" || entity == "quot" || entity == "apos" ||
                       (entity.size() > 1 && entity[0] == '#');
    if (!known) return "unknown entity &" + std::string(entity) + ";";
  }
  return "";
}

// A tiny XML checker, enough for qkv's output: one root element, every tag closed in order,
// attribute values quoted, no raw '<' in text or attributes, only known entities.
// Returns "" when well formed, otherwise what is wrong.
std::string xml_problem(const std::string& xml) {
  std::vector<std::string> open;
  std::size_t roots = 0, i = 0;
  while (i < xml.size()) {
    if (xml[i] != '<') {
      const std::size_t next = std::min(xml.find('<', i), xml.size());
      const std::string_view text(xml.data() + i, next - i);
      if (open.empty() && text.find_first_not_of(" \n\r\t") != std::string_view::npos) return "text outside the root";
      if (auto problem = entity_problem(text); !problem.empty()) return problem;
      i = next;
      continue;
    }
    if (xml.compare(i, 2, "<?") == 0) {
      if (i != 0) return "processing instruction not at the start";
      const std::size_t end = xml.find("?>", i);
      if (end == std::string::npos) return "unterminated <?";
      i = end + 2;
      continue;
    }
    if (xml.compare(i, 4, "<!--") == 0) {
      const std::size_t end = xml.find("-->", i);
      if (end == std::string::npos) return "unterminated comment";
      i = end + 3;
      continue;
    }
    const bool closing = xml.compare(i, 2, "</") == 0;
    std::size_t j = i + (closing ? 2 : 1);
    const std::size_t name_start = j;
    while (j < xml.size() && is_name_char(xml[j])) ++j;
    const std::string name = xml.substr(name_start, j - name_start);
    if (name.empty()) return "tag without a name at offset " + std::to_string(i);
    if (closing) {
      if (j >= xml.size() || xml[j] != '>') return "bad closing tag </" + name;
      if (open.empty() || open.back() != name) return "</" + name + "> closes " + (open.empty() ? "nothing" : "<" + open.back() + ">");
      open.pop_back();
      i = j + 1;
      continue;
    }
    for (;;) {
      while (j < xml.size() && std::isspace(static_cast<unsigned char>(xml[j]))) ++j;
      if (j >= xml.size()) return "unterminated <" + name;
      if (xml.compare(j, 2, "/>") == 0) {
        if (open.empty()) ++roots;
        i = j + 2;
        break;
      }
      if (xml[j] == '>') {
        if (open.empty()) ++roots;
        open.push_back(name);
        i = j + 1;
        break;
      }
      const std::size_t attribute_start = j;
      while (j < xml.size() && is_name_char(xml[j])) ++j;
      if (j == attribute_start || j + 1 >= xml.size() || xml[j] != '=' || xml[j + 1] != '"')
        return "bad attribute in <" + name + "> at offset " + std::to_string(j);
      const std::size_t value_end = xml.find('"', j + 2);
      if (value_end == std::string::npos) return "unterminated attribute value in <" + name + ">";
      const std::string_view value(xml.data() + j + 2, value_end - j - 2);
      if (value.find('<') != std::string_view::npos) return "raw '<' in an attribute of <" + name + ">";
      if (auto problem = entity_problem(value); !problem.empty()) return problem;
      j = value_end + 1;
    }
  }
  if (!open.empty()) return "<" + open.back() + "> is never closed";
  if (roots != 1) return std::to_string(roots) + " root elements";
  return "";
}

// Every first capture group of `pattern` in `text`, in order.
std::vector<std::string> captures(const std::string& text, const std::string& pattern) {
  std::vector<std::string> out;
  const std::regex re(pattern);
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1].str());
  return out;
}

// Text of the <text class="NAME"> elements, in document order.
std::vector<std::string> texts_of_class(const std::string& svg, const std::string& name) {
  return captures(svg, "<text [^>]*class=\"" + name + "\"[^>]*>([^<]*)</text>");
}

std::vector<double> as_numbers(const std::vector<std::string>& texts) {
  std::vector<double> out;
  for (const auto& text : texts) out.push_back(std::stod(text));
  return out;
}

// Rows: one-hot (H = 0), half-quarter-quarter (H = 1.5 ln 2), uniform over 4 (H = ln 4).
AttentionMap three_by_four() {
  return {array_of({3, 4}, {1, 0, 0, 0, 0.5, 0.25, 0.25, 0, 0.25, 0.25, 0.25, 0.25}),
          {"la", "maison", "bleue"},
          {"the", "blue", "house", "<eos>"},
          "fr → en"};
}

}  // namespace

TEST_CASE("svg: the checker itself rejects broken XML") {
  CHECK(xml_problem("<svg><g></g></svg>").empty());
  CHECK(xml_problem("<?xml version=\"1.0\"?>\n<svg a=\"1\"><rect/><text>a &amp; b</text></svg>\n").empty());
  CHECK_FALSE(xml_problem("<svg><g></svg>").empty());
  CHECK_FALSE(xml_problem("<svg><text>a < b</text></svg>").empty());
  CHECK_FALSE(xml_problem("<svg><text>a & b</text></svg>").empty());
  CHECK_FALSE(xml_problem("<svg a=\"x\"b></svg>").empty());
  CHECK_FALSE(xml_problem("<svg></svg><svg></svg>").empty());
}

TEST_CASE("svg: xml_escape escapes markup and repairs bad UTF-8") {
  CHECK(xml_escape("<s> & \"q\" 'a'") == "&lt;s&gt; &amp; &quot;q&quot; &apos;a&apos;");
  CHECK(xml_escape("café ▁de 日本") == "café ▁de 日本");  // valid UTF-8 passes through
  CHECK(xml_escape("a\xff" "b") == "a\xEF\xBF\xBD" "b");     // a stray byte
  CHECK(xml_escape("\xC3") == "\xEF\xBF\xBD");               // a truncated sequence
  CHECK(xml_escape("\xC0\xAF") == "\xEF\xBF\xBD\xEF\xBF\xBD");  // an overlong '/'
  CHECK(xml_escape("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  CHECK(xml_escape(std::string("a\x01") + '\0') == "a\xEF\xBF\xBD\xEF\xBF\xBD");  // control characters
  CHECK(xml_escape("tab\tnewline\n") == "tab\tnewline\n");
}

TEST_CASE("svg: viridis maps 0 and 1 to the ends of the map and clamps") {
  CHECK(viridis(0) == "#440154");
  CHECK(viridis(1) == "#fde725");
  CHECK(viridis(0.5) == "#21918c");
  CHECK(viridis(-2) == "#440154");
  CHECK(viridis(7) == "#fde725");
  CHECK(viridis(std::nan("")) == "#440154");
}

TEST_CASE("svg: nice_ticks gives round steps covering the range") {
  const auto near = [](const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    for (std::size_t k = 0; k < got.size(); ++k) CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-12));
  };
  near(nice_ticks(0, 0.97), {0, 0.2, 0.4, 0.6, 0.8, 1.0});
  near(nice_ticks(0, 10), {0, 2, 4, 6, 8, 10});
  near(nice_ticks(1, 20, 8), {0, 5, 10, 15, 20});
  near(nice_ticks(-3.2, 7.9), {-4, -2, 0, 2, 4, 6, 8});
  near(nice_ticks(0.3, 0.7, 5), {0.3, 0.4, 0.5, 0.6, 0.7});
  near(nice_ticks(1000, 101000, 6), {0, 50000, 100000, 150000});
  near(nice_ticks(5, 5), {4.4, 4.6, 4.8, 5, 5.2, 5.4, 5.6});  // a flat range is widened by 10% each way
  CHECK(nice_ticks(0, 0).size() >= 2);
  CHECK_THROWS_WITH_AS(nice_ticks(2, 1), "nice_ticks: need finite low <= high, got [2, 1]", Error);
  CHECK_THROWS_AS(nice_ticks(0, std::nan("")), Error);
  CHECK_THROWS_AS(nice_ticks(0, 1, 1), Error);
}

TEST_CASE("svg: attention heatmap draws Tq*Tk cells, labels, entropies and a colour bar") {
  const AttentionMap map = three_by_four();
  const std::string svg = attention_heatmap_svg(map);
  INFO(svg);
  CHECK(xml_problem(svg) == "");
  CHECK(count_occurrences(svg, "class=\"cell\"") == 3 * 4);

  // Cells in row-major order; the weight-1 cell is the bright end of viridis, zeros the dark end.
  const std::vector<std::string> fills = captures(svg, "class=\"cell\" fill=\"(#[0-9a-f]{6})\"");
  REQUIRE(fills.size() == 12);
  CHECK(fills[0] == "#fde725");
  CHECK(fills[1] == "#440154");
  CHECK(fills[4] == viridis(0.5));
  CHECK(fills[11] == viridis(0.25));

  CHECK(texts_of_class(svg, "query") == std::vector<std::string>{"la", "maison", "bleue"});
  CHECK(texts_of_class(svg, "key") == std::vector<std::string>{"the", "blue", "house", "&lt;eos&gt;"});
  CHECK(svg.find(">fr → en</text>") != std::string::npos);

  // Entropy of each row in nats, by hand: 0, 1.5 ln 2 = 1.0397, ln 4 = 1.3863.
  CHECK(texts_of_class(svg, "entropy") == std::vector<std::string>{"0.00", "1.04", "1.39"});
  const std::string legend = svg.substr(svg.find("class=\"legend\""));
  CHECK(legend.find("max ln 4 = 1.39") != std::string::npos);
  CHECK(svg.find("<linearGradient id=\"qkv-viridis\"") != std::string::npos);
  // Each cell's tooltip holds its full labels and weight.
  CHECK(svg.find("<title>maison → blue: 0.2500</title>") != std::string::npos);
}

TEST_CASE("svg: entropy is computed in nats for any row, including rows summing to less than 1") {
  // A padded query whose row is all zeros has entropy 0; a row of (0.9, 0.1) has
  // -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.3251; a row of (0.2, 0.3) sums to 0.5 (masked) and has
  // -(0.2 ln 0.2 + 0.3 ln 0.3) = 0.6831.
  const AttentionMap map{array_of({3, 2}, {0.9, 0.1, 0, 0, 0.2, 0.3}), {"a", "b", "c"}, {"x", "y"}, ""};
  const std::vector<double> entropies = as_numbers(texts_of_class(attention_heatmap_svg(map), "entropy"));
  REQUIRE(entropies.size() == 3);
  CHECK(entropies[0] == doctest::Approx(-(0.9 * std::log(0.9) + 0.1 * std::log(0.1))).epsilon(0.005));
  CHECK(entropies[1] == 0);
  CHECK(entropies[2] == doctest::Approx(-(0.2 * std::log(0.2) + 0.3 * std::log(0.3))).epsilon(0.005));
}

TEST_CASE("svg: labels are escaped everywhere and the document stays well formed") {
  const AttentionMap map{array_of({2, 3}, {0.2, 0.3, 0.5, 1, 0, 0}),
                         {"<s>", "café"},
                         {"a&b", "\"quoted\" 'single'", "▁de"},
                         "title with <tags> & \"quotes\""};
  for (const std::string& svg : {attention_heatmap_svg(map), attention_connections_svg(map)}) {
    INFO(svg);
    CHECK(xml_problem(svg) == "");
    CHECK(svg.find("<s>") == std::string::npos);
    CHECK(svg.find("&lt;s&gt;") != std::string::npos);
    CHECK(svg.find("a&amp;b") != std::string::npos);
    CHECK(svg.find("&quot;quoted&quot; &apos;single&apos;") != std::string::npos);
    CHECK(svg.find("café") != std::string::npos);
    CHECK(svg.find("▁de") != std::string::npos);
    CHECK(svg.find("title with &lt;tags&gt; &amp; &quot;quotes&quot;") != std::string::npos);
  }
}

TEST_CASE("svg: very long labels are shortened on the axes but kept whole in tooltips") {
  const std::string long_token = "supercalifragilisticexpialidocious";
  const AttentionMap map{array_of({1, 2}, {0.5, 0.5}), {"q"}, {long_token, "é"}, ""};
  const std::string svg = attention_heatmap_svg(map);
  CHECK(xml_problem(svg) == "");
  CHECK(texts_of_class(svg, "key")[0] == "supercalifragilisti…");  // 20 characters with the ellipsis
  CHECK(svg.find("q → " + long_token + ": 0.5000") != std::string::npos);
}

TEST_CASE("svg: bad attention input is refused with the shapes in the message") {
  const AttentionMap good = three_by_four();
  AttentionMap empty{zeros({0, 4}), {}, {"a", "b", "c", "d"}, ""};
  CHECK_THROWS_WITH_AS(attention_heatmap_svg(empty),
                       "attention_heatmap_svg: weights are [0, 4]: there is nothing to draw", Error);
  AttentionMap vector = good;
  vector.weights = array_of({4}, {0.25, 0.25, 0.25, 0.25});
  CHECK_THROWS_WITH_AS(attention_heatmap_svg(vector),
                       "attention_heatmap_svg: weights must be a [Tq, Tk] matrix, got [4]", ShapeError);
  AttentionMap too_few_queries = good;
  too_few_queries.queries.pop_back();
  CHECK_THROWS_WITH_AS(attention_heatmap_svg(too_few_queries),
                       "attention_heatmap_svg: weights are [3, 4] ([Tq, Tk]) but 2 query labels and 4 key labels "
                       "were given",
                       ShapeError);
  AttentionMap too_many_keys = good;
  too_many_keys.keys.push_back("extra");
  CHECK_THROWS_WITH_AS(attention_connections_svg(too_many_keys),
                       "attention_connections_svg: weights are [3, 4] ([Tq, Tk]) but 3 query labels and 5 key labels "
                       "were given",
                       ShapeError);
  AttentionMap scores = good;
  scores.weights(1, 2) = 1.25;
  CHECK_THROWS_WITH_AS(attention_heatmap_svg(scores),
                       "attention_heatmap_svg: row 1 of the weights sums to 2: attention rows sum to at most 1 "
                       "(pass the softmax output, not the scores)",
                       Error);
  AttentionMap negative = good;
  negative.weights(2, 0) = -0.25;
  CHECK_THROWS_WITH_AS(attention_heatmap_svg(negative),
                       "attention_heatmap_svg: weights[2, 0] is -0.25: attention weights must be finite and >= 0", Error);
  AttentionMap not_finite = good;
  not_finite.weights(0, 1) = std::nan("");
  CHECK_THROWS_AS(attention_heatmap_svg(not_finite), Error);
}

TEST_CASE("svg: a grid draws every layer x head with its title and one shared colour bar") {
  const std::size_t layers = 2, heads = 3;
  AttentionGrid grid;
  grid.queries = {"a", "b", "c"};
  grid.keys = {"a", "b", "c", "d"};
  grid.columns = heads;
  grid.title = "self-attention";
  for (std::size_t layer = 0; layer < layers; ++layer)
    for (std::size_t head = 0; head < heads; ++head) {
      Array weights = uniform_array({3, 4}, 10 * layer + head, 0.1, 1.0);
      for (std::size_t i = 0; i < 3; ++i) {
        real sum = 0;
        for (std::size_t j = 0; j < 4; ++j) sum += weights(i, j);
        for (std::size_t j = 0; j < 4; ++j) weights(i, j) /= sum;
      }
      grid.weights.push_back(weights);
      grid.titles.push_back("layer " + std::to_string(layer) + " · head " + std::to_string(head));
    }
  const std::string svg = attention_grid_svg(grid);
  INFO(svg);
  CHECK(xml_problem(svg) == "");
  CHECK(count_occurrences(svg, "class=\"cell\"") == layers * heads * 3 * 4);
  CHECK(count_occurrences(svg, "class=\"entropy\"") == layers * heads * 3);
  CHECK(count_occurrences(svg, "<linearGradient") == 1);
  for (const auto& title : grid.titles) CHECK(svg.find(">" + title + "</text>") != std::string::npos);
  CHECK(svg.find(">self-attention</text>") != std::string::npos);

  // Entropies of panel 4 (layer 1, head 1), row 2, by hand.
  double entropy = 0;
  for (std::size_t j = 0; j < 4; ++j) entropy -= grid.weights[4](2, j) * std::log(grid.weights[4](2, j));
  const std::vector<double> entropies = as_numbers(texts_of_class(svg, "entropy"));
  CHECK(entropies[4 * 3 + 2] == doctest::Approx(entropy).epsilon(0.005));

  AttentionGrid mismatched = grid;
  mismatched.weights[1] = uniform_array({3, 3}, 1, 0.0, 0.3);
  CHECK_THROWS_WITH_AS(attention_grid_svg(mismatched),
                       "attention_grid_svg: weights of panel 1 ('layer 0 · head 1') are [3, 3] ([Tq, Tk]) but 3 query "
                       "labels and 4 key labels were given",
                       ShapeError);
  AttentionGrid missing_title = grid;
  missing_title.titles.pop_back();
  CHECK_THROWS_WITH_AS(attention_grid_svg(missing_title), "attention_grid_svg: 6 matrices but 5 titles", ShapeError);
  AttentionGrid no_columns = grid;
  no_columns.columns = 0;
  CHECK_THROWS_AS(attention_grid_svg(no_columns), Error);
  CHECK_THROWS_WITH_AS(attention_grid_svg(AttentionGrid{}), "attention_grid_svg: no matrices to draw (weights is empty)",
                       Error);
}

TEST_CASE("svg: connection diagram draws one line per weight >= 0.02, width proportional to weight") {
  const AttentionMap map{array_of({2, 3}, {0.7, 0.3, 0.0, 0.01, 0.49, 0.5}), {"le", "chat"}, {"the", "cat", "."}, ""};
  const std::string svg = attention_connections_svg(map);
  INFO(svg);
  CHECK(xml_problem(svg) == "");
  CHECK(count_occurrences(svg, "class=\"link\"") == 4);  // 0.7, 0.3, 0.49, 0.5; not 0.0 or 0.01
  CHECK(texts_of_class(svg, "source") == std::vector<std::string>{"the", "cat", "."});
  CHECK(texts_of_class(svg, "target") == std::vector<std::string>{"le", "chat"});
  // Drawn lightest first, so heavy lines sit on top.
  const std::vector<double> widths = as_numbers(captures(svg, "class=\"link\"[^>]* stroke-width=\"([0-9.]+)\""));
  const std::vector<double> weights = {0.3, 0.49, 0.5, 0.7};
  REQUIRE(widths.size() == weights.size());
  for (std::size_t k = 0; k < widths.size(); ++k) CHECK(widths[k] / weights[k] == doctest::Approx(widths[0] / weights[0]));
  CHECK(svg.find("<title>le → the: 0.7000</title>") != std::string::npos);
}

TEST_CASE("svg: line chart has round ticks, a legend, dashed theory lines and gaps at NaN") {
  LineChart chart;
  chart.title = "entropy of attention vs d_k";
  chart.x_label = "epoch";
  chart.y_label = "loss";
  chart.series.push_back({"train", {1, 2, 3, 4, 5}, {0.97, 0.61, 0.42, std::nan(""), 0.05}, false});
  chart.series.push_back({"theory <ln>", {1, 5}, {0.9, 0.1}, true});
  const std::string svg = line_chart_svg(chart);
  INFO(svg);
  CHECK(xml_problem(svg) == "");
  CHECK(texts_of_class(svg, "ytick") == std::vector<std::string>{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"});
  CHECK(texts_of_class(svg, "xtick") == std::vector<std::string>{"1", "2", "3", "4", "5"});
  CHECK(texts_of_class(svg, "legend") == std::vector<std::string>{"train", "theory &lt;ln&gt;"});
  CHECK(count_occurrences(svg, "stroke-dasharray") == 2);  // the dashed series and its legend sample
  // The NaN at epoch 4 splits "train" into two pieces: two move-to commands.
  const std::vector<std::string> paths = captures(svg, "<path d=\"([^\"]*)\"");
  REQUIRE(paths.size() == 2);
  CHECK(count_occurrences(paths[0], "M") == 2);
  CHECK(count_occurrences(paths[1], "M") == 1);
  CHECK(count_occurrences(svg, "<circle") == 4 + 1);  // markers on the 4 finite points, and the legend's
}

TEST_CASE("svg: log axes tick at 1-2-5 numbers when few, else at powers of ten") {
  LineChart narrow;
  narrow.log_y = true;
  narrow.series.push_back({"loss", {0, 10, 20}, {3, 0.4, 0.02}, false});
  const std::string narrow_svg = line_chart_svg(narrow);
  CHECK(xml_problem(narrow_svg) == "");
  CHECK(texts_of_class(narrow_svg, "ytick") ==
        std::vector<std::string>{"0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5"});

  LineChart wide;
  wide.log_x = wide.log_y = true;
  wide.series.push_back({"entropy", {8, 64, 1024}, {0.002, 1, 900}, false});
  const std::string wide_svg = line_chart_svg(wide);
  CHECK(texts_of_class(wide_svg, "ytick") == std::vector<std::string>{"0.01", "0.1", "1", "10", "100", "1000"});
  CHECK(texts_of_class(wide_svg, "xtick") == std::vector<std::string>{"5", "10", "20", "50", "100", "200", "500", "1000",
                                                                      "2000"});
  // Unlabelled minor grid lines at 2..9 x 10^k inside [0.002, 1000] on the y axis: 8 in each of
  // the five decades from 0.01, and 0.002 ... 0.009 below it.
  CHECK(count_occurrences(wide_svg, "stroke=\"#f2f2f2\"") == 8 * 5 + 8);
}

TEST_CASE("svg: a line chart can be labelled at chosen x values") {
  LineChart chart;
  chart.log_x = true;
  chart.x_ticks = {512, 8, 32, 128};
  chart.series.push_back({"entropy", {8, 32, 128, 512}, {3.4, 3.3, 2.1, 0.4}, false});
  const std::string svg = line_chart_svg(chart);
  CHECK(xml_problem(svg) == "");
  CHECK(texts_of_class(svg, "xtick") == std::vector<std::string>{"8", "32", "128", "512"});
  chart.x_ticks = {0, 8};
  CHECK_THROWS_WITH_AS(line_chart_svg(chart), "line_chart_svg: x tick 0 cannot be shown on a log x axis", Error);
}

TEST_CASE("svg: bad line charts are refused naming the series") {
  CHECK_THROWS_WITH_AS(line_chart_svg(LineChart{}), "line_chart_svg: no series to draw", Error);
  LineChart mismatched;
  mismatched.series.push_back({"val loss", {1, 2, 3}, {1, 2}, false});
  CHECK_THROWS_WITH_AS(line_chart_svg(mismatched), "line_chart_svg: series 'val loss' has 3 x values but 2 y values",
                       ShapeError);
  LineChart log_of_zero;
  log_of_zero.log_y = true;
  log_of_zero.series.push_back({"loss", {1, 2}, {0.5, 0}, false});
  CHECK_THROWS_WITH_AS(line_chart_svg(log_of_zero),
                       "line_chart_svg: series 'loss' has the point (2, 0), which a log y axis cannot show", Error);
  LineChart nothing_finite;
  nothing_finite.series.push_back({"diverged", {1}, {std::nan("")}, false});
  CHECK_THROWS_AS(line_chart_svg(nothing_finite), Error);
}

TEST_CASE("svg: write_svg replaces the file atomically and names the file on failure") {
  const auto directory = std::filesystem::temp_directory_path() / ("qkv_svg_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(directory);
  const std::string path = (directory / "plot.svg").string();
  write_svg(path, "old");
  const std::string svg = attention_heatmap_svg(three_by_four());
  write_svg(path, svg);
  std::ifstream in(path, std::ios::binary);
  std::stringstream contents;
  contents << in.rdbuf();
  CHECK(contents.str() == svg);
  // Only the plot is left behind: the temporary file was renamed into place.
  CHECK(std::distance(std::filesystem::directory_iterator(directory), std::filesystem::directory_iterator()) == 1);
  std::filesystem::remove_all(directory);

  const std::string missing = (directory / "no_such_dir" / "plot.svg").string();
  try {
    write_svg(missing, svg);
    FAIL("write_svg into a missing directory did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find(missing) != std::string::npos);
    CHECK(std::string(e.what()).find("No such file or directory") != std::string::npos);
  }
}
