// libFuzzer target: vocabulary JSON (lib/vocab.*, Vocab::from_json, what Vocab::load and
// checkpoints read). A vocabulary that loads must round-trip and map ids and tokens both ways.
#include <cstdlib>

#include "fuzz_support.hpp"
#include "lib/numerics/error.hpp"
#include "lib/text/vocab.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const nlohmann::json json = qkv::fuzz::parse_json(qkv::fuzz::as_text(data, size));
  if (json.is_discarded()) return 0;
  try {
    const qkv::Vocab vocab = qkv::Vocab::from_json(json);
    if (!(qkv::Vocab::from_json(vocab.to_json()) == vocab)) std::abort();
    for (std::size_t id = 0; id < vocab.size(); ++id)
      if (vocab.id(vocab.token(static_cast<std::int64_t>(id))) != static_cast<std::int64_t>(id)) std::abort();
    const std::vector<std::int64_t> ids = vocab.encode(vocab.tokens());
    (void)vocab.decode(ids);
  } catch (const qkv::Error&) {
  }
  return 0;
}
