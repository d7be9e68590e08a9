#pragma once
// Model kinds by name. A kind brings everything a program needs to offer it: how to build the
// model from its config.json "config", and its hyperparameters as options — command-line flag,
// config key, default and accepted values — so that qkv-train, checkpoints and the fuzzers
// learn about a new kind from the kind itself.
//
//   auto model = qkv::models::make_model("transformer", config, source_vocab.size(), target_vocab.size());
//
// A kind lives in its own folder, models/<name>/, whose kind.cpp defines
// `ModelKind <name>_model_kind()`; the build collects every such function into the registry
// (the models block of the root CMakeLists.txt generates the list), so adding a kind touches
// that folder only. A program or a test can also add one at run time with register_model_kind.
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/seq2seq.hpp"

namespace qkv::models {

/// One hyperparameter of a model kind, as a program offers it.
struct ModelOption {
  std::string flag = {};               // the command-line flag: "--d-model"
  std::vector<std::string> keys = {};  // JSON pointers it sets in the config: {"/d_model"}, {"/scale/kind"}
  std::string help = {};
  /// Its type is the option's: an unsigned integer, a number or a string.
  nlohmann::json default_value = {};
  std::vector<std::string> choices = {};  // a string option's accepted values (empty: any)
  double min = 0, max = 0;           // a number's accepted range, both ends included
};

/// A default for training on real sentence pairs (qkv-train --data), in place of the one the
/// generated tasks use: `flag` is one of the kind's options or a qkv-train flag ("--d-model",
/// "--schedule"), `value` as it would be typed. A flag given on the command line wins.
struct CorpusDefault {
  std::string flag = {};
  std::string value = {};
};

struct ModelKind {
  std::string name = {};     // --model and config.json "kind": "transformer"
  std::string summary = {};  // one line, for --help
  std::vector<ModelOption> options = {};
  /// What --data changes about the defaults, with the reasons beside them in the kind's kind.cpp.
  /// Options' default_value stay the generated tasks' (dates) defaults.
  std::vector<CorpusDefault> corpus_defaults = {};
  /// Builds the model from its config (which holds "source_vocab_size" and "target_vocab_size").
  /// Throws Error naming the key for anything it does not understand.
  std::function<std::shared_ptr<Seq2SeqModel>(const nlohmann::json& config)> make;
};

/// Adds a kind (a user's own model, or a test's). Throws Error if the name is taken or the kind
/// has no name or no `make`.
void register_model_kind(ModelKind kind);
/// The kind of that name; Error listing the known kinds otherwise. The reference stays valid.
const ModelKind& find_model_kind(const std::string& name);
/// The known kinds' names, sorted.
std::vector<std::string> model_kinds();

/// Builds a model of the named kind from `config` (what the model's config() returned) and the
/// vocabulary sizes.
std::shared_ptr<Seq2SeqModel> make_model(const std::string& kind, const nlohmann::json& config,
                                         std::size_t source_vocab_size, std::size_t target_vocab_size);

/// The option's value from its text ("128", "0.1", "rope"), checked against its type, range and
/// choices; Error naming the flag otherwise.
nlohmann::json parse_option_value(const ModelOption& option, const std::string& text);
/// The kind's config from its options: each option's value parsed from `given` (flag -> text)
/// or its default. Throws Error naming a flag in `given` that is not an option of this kind,
/// with the kind's options listed.
nlohmann::json config_from_options(const ModelKind& kind, const std::map<std::string, std::string>& given);

}  // namespace qkv::models
