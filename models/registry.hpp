#pragma once
// Model kinds by name, so checkpoints (config.json names the kind) and command lines
// (`--model transformer`) build a model without knowing its class.
//
//   auto model = qkv::models::make_model("transformer", config, source_vocab.size(), target_vocab.size());
//
// `config` is what the model's `config()` returned (hyperparameters); each kind reads it with
// its own `from_config` and rejects what it does not understand.
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/seq2seq.hpp"

namespace qkv::models {

using ModelFactory = std::function<std::shared_ptr<Seq2SeqModel>(
    const nlohmann::json& config, std::size_t source_vocab_size, std::size_t target_vocab_size)>;

/// Builds a model of the named kind. Throws Error listing the known kinds for any other name.
std::shared_ptr<Seq2SeqModel> make_model(const std::string& kind, const nlohmann::json& config,
                                         std::size_t source_vocab_size, std::size_t target_vocab_size);
/// The known kinds, sorted.
std::vector<std::string> model_kinds();
/// Adds a kind (a user's own model, or a test's). Throws Error if the name is taken.
void register_model_kind(const std::string& kind, ModelFactory factory);

}  // namespace qkv::models
