// libFuzzer target: a checkpoint's config.json (train/checkpoint.*: load_checkpoint,
// which reads the format, the vocabularies, TrainOptions, the progress, the random state and
// the model config, builds the model and loads its weights). The input becomes config.json in
// a directory that also holds a real model.safetensors (tests/fuzz/checkpoint/), so inputs
// close to the seed get as far as loading the weights.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fuzz_support.hpp"
#include "lib/numerics/error.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;

namespace {
fs::path directory;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  qkv::fuzz::silence_logging();
  directory = fs::temp_directory_path() / ("qkv_fuzz_checkpoint_" + std::to_string(::getpid()));
  fs::create_directories(directory);
  fs::copy_file(fs::path(QKV_FUZZ_DIR) / "checkpoint" / "model.safetensors", directory / "model.safetensors",
                fs::copy_options::overwrite_existing);
  std::atexit([] { fs::remove_all(directory); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = qkv::fuzz::as_text(data, size);
  // See integers_at_most: sizes beyond 64 are not built (the JSON still reaches the parser
  // when it is not JSON at all, or has no model config).
  const nlohmann::json json = qkv::fuzz::parse_json(text);
  if (!json.is_discarded() && json.is_object() && json.contains("model") && json["model"].is_object() &&
      json["model"].contains("config") && !qkv::fuzz::integers_at_most(json["model"]["config"], 64))
    return 0;
  {
    std::ofstream out(directory / "config.json", std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
  }
  try {
    const qkv::train::Checkpoint checkpoint = qkv::train::load_checkpoint(directory.string());
    (void)checkpoint.options.to_json();
  } catch (const qkv::Error&) {
  }
  return 0;
}
