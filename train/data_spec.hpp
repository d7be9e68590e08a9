#pragma once
// What a checkpoint records about its data ("data" in config.json), and the two things that
// need it: rebuilding the dataset (to resume training) and turning a typed sentence into the
// tokens the model was trained on (to translate).
//
//   {"task": "dates", "seed": 0, "train_size": 20000, "eval_size": 1000, "preprocess": "characters"}
//   {"file": "/abs/fra-eng.tsv", "reverse": false, "split": "default", "preprocess": "d2l"}
//
// "preprocess" is how a sentence becomes tokens:
//   "characters"  one token per UTF-8 character, ' ' written "▁" (dates)
//   "words"       split on spaces (numbers, reverse, copy)
//   "d2l"         d2l.ai's normalisation (lowercase, space before , . ! ?) then split on spaces
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "lib/text/corpus.hpp"

namespace qkv::train {

/// The spec of a generated task; `train_size`/`eval_size` 0 take the task's defaults.
nlohmann::json task_data_spec(const std::string& task, std::uint64_t seed, std::size_t train_size,
                              std::size_t eval_size);
/// The spec of a TSV corpus (the path is made absolute, so a resumed run finds it from anywhere).
nlohmann::json corpus_data_spec(const std::string& file, bool reverse_pairs, const std::string& split);

/// Builds the dataset `spec` describes. Throws Error for a missing file, an unknown task or a
/// malformed spec (naming the field).
Dataset load_data(const nlohmann::json& spec);

/// One line of user input as model tokens, preprocessed as `spec` says. Throws Error for
/// invalid UTF-8 or an unknown "preprocess".
Tokens tokenize_input(const nlohmann::json& spec, std::string_view line);

/// Model output tokens as text: characters joined (with "▁" back to ' '), words joined by ' '.
std::string detokenize(const nlohmann::json& spec, const Tokens& tokens);

}  // namespace qkv::train
