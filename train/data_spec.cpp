#include "train/data_spec.hpp"

#include <filesystem>

#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "lib/text/tasks.hpp"

namespace qkv::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kSpec = "data spec";

std::string preprocess_of(const json& spec) { return json_field<std::string>(spec, kSpec, "preprocess"); }

}  // namespace

json task_data_spec(const std::string& task, std::uint64_t seed, std::size_t train_size, std::size_t eval_size) {
  const TaskOptions defaults;
  return {{"task", task},
          {"seed", seed},
          {"train_size", train_size > 0 ? train_size : defaults.train_size},
          {"eval_size", eval_size > 0 ? eval_size : defaults.validation_size},
          {"preprocess", task == "dates" ? "characters" : "words"}};
}

json corpus_data_spec(const std::string& file, bool reverse_pairs, const std::string& split) {
  return {{"file", fs::absolute(file).string()}, {"reverse", reverse_pairs}, {"split", split}, {"preprocess", "d2l"}};
}

Dataset load_data(const json& spec) {
  if (!spec.is_object()) throw Error("data spec: expected an object, got " + spec.dump());
  if (spec.contains("task")) {
    TaskOptions options;
    options.seed = json_field<std::uint64_t>(spec, kSpec, "seed");
    options.train_size = json_field_or<std::size_t>(spec, kSpec, "train_size", options.train_size);
    options.validation_size = options.test_size =
        json_field_or<std::size_t>(spec, kSpec, "eval_size", options.validation_size);
    return make_task(json_field<std::string>(spec, kSpec, "task"), options);
  }
  const auto file = json_field<std::string>(spec, kSpec, "file");
  if (!fs::exists(file)) throw Error("data file " + file + " does not exist");
  CorpusOptions options;
  options.tsv.reverse = json_field<bool>(spec, kSpec, "reverse");
  options.split = parse_name<CorpusSplit>(json_field<std::string>(spec, kSpec, "split"), kSpec);
  return load_corpus(file, options);
}

Tokens tokenize_input(const json& spec, std::string_view line) {
  if (find_invalid_utf8(line) != std::string_view::npos) throw Error("input is not valid UTF-8");
  const std::string preprocess = preprocess_of(spec);
  // Trailing spaces and a CR from a pasted Windows line are never part of a sentence.
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\t')) line.remove_suffix(1);
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  if (preprocess == "characters") return characters(line);
  if (preprocess == "words") return split_on_spaces(line);
  if (preprocess == "d2l") return split_on_spaces(preprocess_d2l(line));
  throw Error("data spec: unknown \"preprocess\" \"" + preprocess + "\" (known: characters, words, d2l)");
}

std::string detokenize(const json& spec, const Tokens& tokens) {
  const bool characters = preprocess_of(spec) == "characters";
  std::string text;
  for (const std::string& token : tokens) {
    if (characters) {
      text += token == "▁" ? std::string(" ") : token;
    } else {
      if (!text.empty()) text += ' ';
      text += token;
    }
  }
  return text;
}

}  // namespace qkv::train
