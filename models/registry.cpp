#include "models/registry.hpp"

#include <map>
#include <mutex>

#include "lib/numerics/error.hpp"

#include "models/bahdanau.hpp"
#include "models/transformer.hpp"

namespace qkv::models {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, ModelFactory> factories;
};

Registry& registry() {
  static Registry instance;
  static const bool built_in = [] {
    Registry& r = instance;
    // The checkpoint's config holds the hyperparameters; the vocabularies give the sizes.
    auto sized = [](nlohmann::json config, std::size_t source, std::size_t target) {
      config["source_vocab_size"] = source;
      config["target_vocab_size"] = target;
      return config;
    };
    r.factories.emplace("transformer", [sized](const nlohmann::json& config, std::size_t source, std::size_t target) {
      return std::shared_ptr<Seq2SeqModel>(TransformerModel::from_config(sized(config, source, target)));
    });
    r.factories.emplace("bahdanau", [sized](const nlohmann::json& config, std::size_t source, std::size_t target) {
      return std::shared_ptr<Seq2SeqModel>(BahdanauModel::from_config(sized(config, source, target)));
    });
    return true;
  }();
  (void)built_in;
  return instance;
}

std::string joined(const std::vector<std::string>& names) {
  std::string text;
  for (const std::string& name : names) text += (text.empty() ? "" : ", ") + name;
  return text.empty() ? "(none)" : text;
}

}  // namespace

std::vector<std::string> model_kinds() {
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& [name, factory] : r.factories) names.push_back(name);
  return names;
}

std::shared_ptr<Seq2SeqModel> make_model(const std::string& kind, const nlohmann::json& config,
                                         std::size_t source_vocab_size, std::size_t target_vocab_size) {
  ModelFactory factory;
  {
    Registry& r = registry();
    const std::lock_guard lock(r.mutex);
    const auto found = r.factories.find(kind);
    if (found != r.factories.end()) factory = found->second;
  }
  if (!factory) throw Error("make_model: unknown model kind '" + kind + "'; known kinds: " + joined(model_kinds()));
  // The factories add the vocabulary sizes to it (found by fuzzing: a number here escaped as a
  // raw nlohmann::json error).
  check_arg(config.is_object(), "make_model", "the " + kind + " config must be a JSON object, got " + config.dump());
  return factory(config, source_vocab_size, target_vocab_size);
}

void register_model_kind(const std::string& kind, ModelFactory factory) {
  Registry& r = registry();
  const std::lock_guard lock(r.mutex);
  check_arg(!kind.empty() && factory != nullptr, "register_model_kind", "needs a name and a factory");
  if (!r.factories.emplace(kind, std::move(factory)).second)
    throw Error("register_model_kind: model kind '" + kind + "' is already registered");
}

}  // namespace qkv::models
