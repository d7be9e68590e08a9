// Checkpoints written before the layers/ refactor still load and translate as they did.
//
// tests/fixtures/legacy_checkpoints/{transformer,bahdanau} are config.json and
// model.safetensors of two qkv-train runs on the `reverse` task made with the binary of commit
// 3e3bcd2. Their parameter names must still be the models' state-dict names, and their
// random_state (dropout streams) still uses the names from before the layers held a Dropout
// module ("...attention.dropout_rng"); load_checkpoint must accept both. The expected
// translations were printed by that binary:
//   printf 'a b c d e\nq r s t\nk\n' | qkv-translate --checkpoint DIR --beam B   (B = 1, 3)
// Float32: the build that wrote and decoded them.
#include <numeric>
#include <string>
#include <vector>

#include "lib/numerics/safetensors.hpp"
#include "lib/text/batching.hpp"
#include "models/decoding.hpp"
#include "train/data_spec.hpp"
#include "train/trainer.hpp"
#include "support/helpers.hpp"

using namespace qkv;
using namespace qkv::models;
using namespace qkv::train;

namespace {

const std::vector<std::string> inputs = {"a b c d e", "q r s t", "k"};

std::string legacy_checkpoint(const std::string& kind) {
  return std::string(QKV_SOURCE_DIR) + "/tests/fixtures/legacy_checkpoints/" + kind;
}

/// What qkv-translate prints for `lines` read from a pipe: one batch, tokenized and
/// detokenized as the checkpoint's data spec says, decoded with its options but `beam`.
std::vector<std::string> translate_batch(const Checkpoint& checkpoint, const std::vector<std::string>& lines,
                                         std::size_t beam) {
  std::vector<SentencePair> pairs;
  for (const std::string& line : lines) pairs.push_back({tokenize_input(checkpoint.data, line), {}});
  const Batcher batcher(pairs, checkpoint.vocabs.source, checkpoint.vocabs.target,
                        {.batch_size = pairs.size(), .shuffle = false});
  std::vector<std::size_t> rows(pairs.size());
  std::iota(rows.begin(), rows.end(), std::size_t{0});
  const Batch batch = batcher.make_batch(rows);
  DecodeOptions options = checkpoint.options.decode;
  options.beam = beam;
  std::vector<std::string> texts;
  for (const Hypothesis& hypothesis : decode(*checkpoint.model, batch.source, batch.source_lengths, options))
    texts.push_back(detokenize(checkpoint.data, checkpoint.vocabs.target.decode(hypothesis.tokens)));
  return texts;
}

/// Loads `kind`'s legacy checkpoint and checks that every weight in its file is a parameter of
/// the rebuilt model under the same name, bit for bit.
Checkpoint load_legacy(const std::string& kind) {
  Checkpoint checkpoint = load_checkpoint(legacy_checkpoint(kind));
  const TensorFile file = read_safetensors(legacy_checkpoint(kind) + "/model.safetensors");
  const auto state = checkpoint.model->state_dict();
  CHECK(state.size() == file.reals.size());
  for (const auto& entry : file.reals) {
    const auto& name = entry.first;
    const auto& value = entry.second;
    CAPTURE(name);
    REQUIRE(state.contains(name));
    CHECK(test::max_abs_diff(state.at(name), value) == 0);
  }
  checkpoint.model->eval();
  return checkpoint;
}

}  // namespace

TEST_CASE("legacy checkpoint: a transformer from before the layers refactor translates as it did") {
  const Checkpoint checkpoint = load_legacy("transformer");
  // The saved stream under its old name is now the attention's Dropout submodule's.
  const auto random_state = checkpoint.model->random_state();
  CHECK(random_state.contains("encoder.layers.0.self_attn.attention.dropout.dropout_rng"));
  CHECK(random_state.contains("source_positions.dropout.dropout_rng"));
  const std::vector<std::string> expected = {"e e d e v", "t q h t q", "k k k"};
  CHECK(translate_batch(checkpoint, inputs, 1) == expected);
  CHECK(translate_batch(checkpoint, inputs, 3) == expected);
}

TEST_CASE("legacy checkpoint: a Bahdanau model from before the layers refactor translates as it did") {
  const Checkpoint checkpoint = load_legacy("bahdanau");
  CHECK(checkpoint.model->random_state().contains("attention.dropout.dropout_rng"));
  const std::vector<std::string> expected = {"e d c b a", "t q r q", "k"};
  CHECK(translate_batch(checkpoint, inputs, 1) == expected);
  CHECK(translate_batch(checkpoint, inputs, 3) == expected);
}
