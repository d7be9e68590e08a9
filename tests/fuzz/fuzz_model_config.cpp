// libFuzzer target: model configs (models/*: TransformerModel::from_config and
// BahdanauModel::from_config through the registry, as checkpoints and qkv-train build models).
// The first byte picks the kind and the vocabulary sizes, the rest is the JSON config.
#include "fuzz_support.hpp"
#include "lib/numerics/error.hpp"
#include "models/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const nlohmann::json config = qkv::fuzz::parse_json(qkv::fuzz::as_text(data + 1, size - 1));
  if (config.is_discarded() || !qkv::fuzz::integers_at_most(config, 64)) return 0;
  const char* kind = (data[0] & 1) != 0 ? "transformer" : "bahdanau";
  const std::size_t source_vocab = 4 + (data[0] >> 1) % 8, target_vocab = 4 + (data[0] >> 4);
  try {
    const auto model = qkv::models::make_model(kind, config, source_vocab, target_vocab);
    // What a checkpoint stores must rebuild the same model.
    const auto again = qkv::models::make_model(kind, model->config(), source_vocab, target_vocab);
    if (again->config() != model->config() || again->parameter_count() != model->parameter_count()) std::abort();
  } catch (const qkv::Error&) {
  }
  return 0;
}
