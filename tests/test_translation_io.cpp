// What qkv-train and qkv-translate share: the data spec a checkpoint records (rebuilding the
// dataset, preprocessing typed input, turning output tokens back into text) and the attention
// plots of one sentence (every map of every group, entropies, the files written).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "lib/text/corpus.hpp"
#include "lib/text/tasks.hpp"
#include "train/attention_plots.hpp"
#include "models/bahdanau/bahdanau.hpp"
#include "train/data_spec.hpp"
#include "models/transformer/transformer.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::train;
namespace fs = std::filesystem;
using nlohmann::json;
using qkv::test::count_occurrences;
using qkv::test::fresh_directory;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

TEST_CASE("data spec: a task spec rebuilds the task, with defaults for unset sizes") {
  const json spec = task_data_spec("reverse", 4, 30, 0);
  CHECK(spec.at("preprocess") == "words");
  CHECK(spec.at("eval_size") == TaskOptions{}.validation_size);
  const Dataset data = load_data(task_data_spec("reverse", 4, 30, 5));
  CHECK(data.train.size() == 30);
  CHECK(data.validation.size() == 5);
  TaskOptions options;
  options.seed = 4;
  options.train_size = 30;
  options.validation_size = options.test_size = 5;
  CHECK(data.train[7].source == reverse_task(options).train[7].source);
  CHECK(task_data_spec("dates", 0, 0, 0).at("preprocess") == "characters");
}

TEST_CASE("data spec: typed input becomes the tokens training saw") {
  const json dates = task_data_spec("dates", 0, 0, 0);
  CHECK(tokenize_input(dates, "  3.3.2021 \r") == Tokens{"3", ".", "3", ".", "2", "0", "2", "1"});
  CHECK(tokenize_input(dates, "wed, 3 mar") == characters("wed, 3 mar"));
  CHECK(detokenize(dates, characters("wed, 3 mar")) == "wed, 3 mar");
  const json words = task_data_spec("reverse", 0, 0, 0);
  CHECK(tokenize_input(words, "a  b c") == Tokens{"a", "b", "c"});
  CHECK(detokenize(words, Tokens{"c", "b", "a"}) == "c b a");
  const json corpus = {{"file", "x.tsv"}, {"reverse", false}, {"split", "default"}, {"preprocess", "d2l"}};
  CHECK(tokenize_input(corpus, "Go. I'm HOME!") == Tokens{"go", ".", "i'm", "home", "!"});
  CHECK(tokenize_input(corpus, "   ").empty());
}

TEST_CASE("data spec: bad specs and input name what is wrong") {
  const json corpus = {{"file", "/no/such/corpus.tsv"}, {"reverse", false}, {"split", "default"}, {"preprocess", "d2l"}};
  CHECK_THROWS_WITH_AS(load_data(corpus), doctest::Contains("/no/such/corpus.tsv"), Error);
  CHECK_THROWS_WITH_AS(load_data(json{{"task", "reverse"}}), doctest::Contains("\"seed\" is missing"), Error);
  CHECK_THROWS_WITH_AS(load_data(json{{"task", "reverse"}, {"seed", "x"}}),
                       doctest::Contains("field \"seed\" must be a non-negative integer, got \"x\""),
                       Error);
  CHECK_THROWS_WITH_AS(load_data(json{{"task", "sorting"}, {"seed", 0}}), doctest::Contains("sorting"), Error);
  CHECK_THROWS_WITH_AS(load_data(json::array()), doctest::Contains("expected an object"), Error);
  CHECK_THROWS_WITH_AS(tokenize_input(corpus, "caf\xc3"), doctest::Contains("not valid UTF-8"), Error);
  CHECK_THROWS_WITH_AS(tokenize_input(json{{"preprocess", "bytes"}}, "x"), doctest::Contains("unknown \"preprocess\""),
                       Error);
  CHECK_THROWS_WITH_AS(tokenize_input(json::object(), "x"), doctest::Contains("\"preprocess\" is missing"), Error);
}

namespace {

/// A tiny reverse task and its vocabularies, for models that only have to run.
struct TinyData {
  Dataset data;
  Vocabs vocabs;
  TinyData() {
    TaskOptions options;
    options.train_size = 40;
    options.validation_size = options.test_size = 2;
    options.min_length = 4;
    options.max_length = 6;
    data = reverse_task(options);
    vocabs = build_vocabs(data.train);
  }
};

/// A 2-head d_model 8 transformer over `vocabs`, without dropout.
TransformerConfig tiny_transformer(const Vocabs& vocabs, std::size_t encoder_layers, std::size_t decoder_layers) {
  TransformerConfig config;
  config.source_vocab_size = vocabs.source.size();
  config.target_vocab_size = vocabs.target.size();
  config.d_model = 8;
  config.nhead = 2;
  config.encoder_layers = encoder_layers;
  config.decoder_layers = decoder_layers;
  config.dim_feedforward = 16;
  config.dropout = 0;
  config.max_len = 32;
  return config;
}

}  // namespace

TEST_CASE("attention plots: the transformer draws every layer and head of its three attentions") {
  const TinyData tiny;
  TransformerModel model(tiny_transformer(tiny.vocabs, 2, 3));
  const fs::path dir = fresh_directory("translation", "transformer");
  const Tokens& source = tiny.data.test[0].source;
  const AttentionPlots plots = write_attention_plots(model, tiny.vocabs, source, task_data_spec("reverse", 0, 0, 0),
                                                     {.beam = 1, .max_length = 8}, (dir / "sentence").string());
  const std::vector<std::string> expected = {(dir / "sentence.svg").string(), (dir / "sentence-connections.svg").string(),
                                             (dir / "sentence-encoder-self.svg").string(),
                                             (dir / "sentence-decoder-self.svg").string()};
  CHECK(plots.files == expected);
  for (const auto& file : expected) CHECK_MESSAGE(fs::file_size(file) > 1000, file);
  // 3 decoder layers x 2 heads of cross- and self-attention, 2 x 2 in the encoder.
  REQUIRE(plots.entropies.size() == 6 + 4 + 6);
  std::size_t cross = 0;
  for (const MapEntropy& e : plots.entropies) {
    CHECK(e.mean_entropy >= 0);
    CHECK(e.mean_entropy <= e.max_entropy + 1e-9);
    if (e.group == "cross-attention") {
      ++cross;
      CHECK(e.max_entropy == doctest::Approx(std::log(double(source.size() + 1))));  // + <eos>
    }
  }
  CHECK(cross == 6);
  const std::string grid = read_text(expected[0]);
  CHECK(count_occurrences(grid, "layer 3 head 2") >= 1);
  CHECK(count_occurrences(grid, "&lt;eos&gt;") >= 1);
  // A map over an untrained model's many outputs: the hypothesis ran to max_length or ended.
  CHECK(plots.hypothesis.tokens.size() <= 8);
}

TEST_CASE("attention plots: attention_groups' cross-attention is forward()'s") {
  const TinyData tiny;
  TransformerModel model(tiny_transformer(tiny.vocabs, 1, 2));
  model.eval();
  const IndexArray source = {{4, 5, 6, 2}, {7, 2, 0, 0}};
  const IndexArray lengths = {4, 2};
  const IndexArray target = {{1, 5, 6}, {1, 4, 0}};
  const auto groups = model.attention_groups(source, lengths, target);
  const auto forward = model.forward(source, lengths, target).attention;
  REQUIRE(groups.size() == 3);
  REQUIRE(groups[0].maps.size() == forward.size());
  for (std::size_t i = 0; i < forward.size(); ++i) {
    CHECK(groups[0].maps[i].first == forward[i].first);
    CHECK(test::max_abs_diff(groups[0].maps[i].second, forward[i].second) == 0);
  }
  CHECK(groups[1].maps[0].second.shape() == Shape{2, 4, 4});  // encoder self [B, S, S]
  CHECK(groups[2].maps[3].second.shape() == Shape{2, 3, 3});  // decoder self [B, T, T]
}

TEST_CASE("attention plots: Bahdanau draws its one map and the connection diagram") {
  const TinyData tiny;
  BahdanauConfig config;
  config.source_vocab_size = tiny.vocabs.source.size();
  config.target_vocab_size = tiny.vocabs.target.size();
  config.embedding_dim = 6;
  config.hidden_size = 8;
  config.attention_size = 8;
  config.dropout = 0;
  BahdanauModel model(config);
  const fs::path dir = fresh_directory("translation", "bahdanau");
  const AttentionPlots plots = write_attention_plots(model, tiny.vocabs, tiny.data.test[1].source,
                                                     task_data_spec("reverse", 0, 0, 0), {.beam = 2, .max_length = 6},
                                                     (dir / "a").string());
  CHECK(plots.files == std::vector<std::string>{(dir / "a.svg").string(), (dir / "a-connections.svg").string()});
  REQUIRE(plots.entropies.size() == 1);
  CHECK(plots.entropies[0].group == "cross-attention");
  CHECK(read_text(dir / "a-connections.svg").find("<line") != std::string::npos);
  CHECK_THROWS_WITH_AS(write_attention_plots(model, tiny.vocabs, {}, task_data_spec("reverse", 0, 0, 0), {},
                                             (dir / "b").string()),
                       doctest::Contains("empty"), Error);
}
