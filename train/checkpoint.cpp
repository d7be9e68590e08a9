#include "train/checkpoint.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "lib/numerics/safetensors.hpp"
#include "models/registry.hpp"

namespace qkv::train {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* checkpoint_format = "qkv.checkpoint";
constexpr int checkpoint_version = 1;

/// The checkpoint files, in the order save_checkpoint moves them out of DIR/.staging.
constexpr const char* checkpoint_files[] = {"model.safetensors", "optimizer.safetensors", "config.json"};

json progress_to_json(const Progress& p) {
  return {{"epoch", p.epoch}, {"batch_in_epoch", p.batch_in_epoch}, {"step", p.step},
          {"best_value", p.best_value}, {"best_epoch", p.best_epoch}};
}

Progress progress_from_json(const json& j, const std::string& where) {
  Progress p;
  p.epoch = json_field<std::size_t>(j, where, "epoch");
  p.batch_in_epoch = json_field<std::size_t>(j, where, "batch_in_epoch");
  p.step = json_field<std::int64_t>(j, where, "step");
  p.best_value = json_field<double>(j, where, "best_value");
  p.best_epoch = json_field<std::int64_t>(j, where, "best_epoch");
  return p;
}

/// A save that was killed while moving its files into place leaves DIR with some new files
/// and some old ones (load_checkpoint would refuse the mix as torn). Its staging directory
/// still holds the rest, and config.json there means staging was complete (it is written
/// last): moving what remains finishes that save. Called before every load and every save.
void finish_interrupted_save(const fs::path& dir) {
  const fs::path staging = dir / ".staging";
  std::error_code error;
  if (!fs::is_regular_file(staging / "config.json", error)) return;
  for (const char* name : checkpoint_files) {
    if (!fs::exists(staging / name, error)) continue;
    fs::rename(staging / name, dir / name, error);
    if (error)
      throw Error("checkpoint " + dir.string() + ": cannot finish an interrupted save (moving " +
                  (staging / name).string() + "): " + error.message());
  }
}

}  // namespace

Checkpoint load_checkpoint(const std::string& directory) {
  const fs::path dir(directory);
  const fs::path config_path = dir / "config.json";
  finish_interrupted_save(dir);
  if (!fs::exists(config_path)) throw Error("no checkpoint in " + directory + ": " + config_path.string() + " is missing");
  const json config = read_json_file(config_path.string());
  const std::string where = config_path.string();
  // Compared as JSON values: value("format", "") would throw a raw json error for a number.
  if (!config.is_object() || !config.contains("format") || config.at("format") != checkpoint_format)
    throw Error(where + ": not a qkv checkpoint (format is not \"" + checkpoint_format + "\")");
  if (!config.contains("version") || config.at("version") != checkpoint_version)
    throw Error(where + ": checkpoint version " + (config.contains("version") ? config.at("version").dump() : "(none)") +
                " is not supported (expected " + std::to_string(checkpoint_version) + ")");

  Checkpoint checkpoint;
  checkpoint.directory = directory;
  try {
    const json vocab = json_field<json>(config, where, "vocab");
    checkpoint.vocabs.source = Vocab::from_json(json_field<json>(vocab, where, "source"));
    checkpoint.vocabs.target = Vocab::from_json(json_field<json>(vocab, where, "target"));
  } catch (const Error& e) {
    throw Error(where + ": bad vocabulary: " + e.what());
  }
  checkpoint.options = TrainOptions::from_json(json_field<json>(config, where, "training"));
  checkpoint.data = config.value("data", json::object());
  checkpoint.progress = progress_from_json(json_field<json>(config, where, "progress"), where + " progress");
  checkpoint.history = config.value("history", json::array());

  const json model = json_field<json>(config, where, "model");
  const std::string kind = json_field<std::string>(model, where + " model", "kind");
  checkpoint.model = models::make_model(kind, json_field<json>(model, where + " model", "config"),
                                        checkpoint.vocabs.source.size(), checkpoint.vocabs.target.size());
  const std::string weights = (dir / "model.safetensors").string();
  try {
    checkpoint.model->load(weights);
  } catch (const Error& e) {
    throw Error("checkpoint " + directory + ": cannot load the " + kind + " weights: " + e.what());
  }
  const TensorFile header = read_safetensors(weights);  // small models: reading twice is cheap
  const auto step = header.metadata.find("step");
  if (step == header.metadata.end() || step->second != std::to_string(checkpoint.progress.step))
    throw Error("checkpoint " + directory + ": model.safetensors is from step " +
                (step == header.metadata.end() ? std::string("?") : step->second) + " but config.json from step " +
                std::to_string(checkpoint.progress.step) + " (a torn save?)");
  // The dropout streams, so that a resumed run draws the masks an uninterrupted one would.
  try {
    checkpoint.model->load_random_state(
        json_field<json>(config, where, "random_state").get<std::map<std::string, std::string>>());
  } catch (const Error& e) {
    throw Error("checkpoint " + directory + ": " + e.what());
  } catch (const json::exception& e) {
    throw Error(where + ": random_state is not an object of strings: " + e.what());
  }
  return checkpoint;
}

void save_checkpoint(const std::string& directory, const CheckpointContents& contents) {
  const fs::path dir(directory), staging = fs::path(directory) / ".staging";
  std::error_code error;
  fs::create_directories(staging, error);
  if (error) throw Error("cannot create checkpoint directory " + staging.string() + ": " + error.message());
  finish_interrupted_save(dir);  // else this save's staging files would mix with that one's

  // Everything is written completely before anything in `dir` changes.
  const std::string step = std::to_string(contents.progress.step);
  contents.model.save((staging / "model.safetensors").string(), {{"step", step}, {"kind", contents.model.kind()}});
  contents.optimizer.save((staging / "optimizer.safetensors").string());
  const json config = {
      {"format", checkpoint_format},
      {"version", checkpoint_version},
      {"model", {{"kind", contents.model.kind()}, {"config", contents.model.config()}}},
      {"vocab", {{"source", contents.vocabs.source.to_json()}, {"target", contents.vocabs.target.to_json()}}},
      {"training", contents.options.to_json()},
      {"data", contents.data},
      {"progress", progress_to_json(contents.progress)},
      {"random_state", contents.model.random_state()},
      {"history", contents.history}};
  write_file_atomically((staging / "config.json").string(), config.dump(2) + "\n");
  for (const char* name : checkpoint_files) {
    fs::rename(staging / name, dir / name, error);
    if (error) throw Error("cannot move " + (staging / name).string() + " into place: " + error.message());
  }
}

RunDirectoryLock::RunDirectoryLock(const std::string& directory) : directory_(directory) {
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) throw Error("cannot create run directory " + directory + ": " + error.message());
  const std::string path = (fs::path(directory) / ".lock").string();
  descriptor_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (descriptor_ < 0) throw Error("cannot open " + path + ": " + std::strerror(errno));
  if (::flock(descriptor_, LOCK_EX | LOCK_NB) != 0) {
    const int reason = errno;
    std::string holder;
    std::ifstream(path) >> holder;
    ::close(descriptor_);
    descriptor_ = -1;
    if (reason == EWOULDBLOCK)
      throw Error("run directory " + directory + " is in use by " +
                  (holder.empty() ? std::string("another process") : "process " + holder) +
                  " (it holds " + path + "); wait for it to finish, stop it, or choose another --out");
    throw Error("cannot lock " + path + ": " + std::strerror(reason));
  }
  // Who holds it, for the message above. Not fatal when it fails: the lock is what protects
  // the directory; a second run's message would only lack the pid.
  const std::string pid = std::to_string(::getpid()) + "\n";
  [[maybe_unused]] const bool recorded =
      ::ftruncate(descriptor_, 0) == 0 && ::write(descriptor_, pid.data(), pid.size()) == ssize_t(pid.size());
}

RunDirectoryLock::RunDirectoryLock(RunDirectoryLock&& other) noexcept
    : directory_(std::move(other.directory_)), descriptor_(other.descriptor_) {
  other.descriptor_ = -1;
}

RunDirectoryLock::~RunDirectoryLock() {
  if (descriptor_ >= 0) ::close(descriptor_);  // closing the descriptor releases the flock
}

}  // namespace qkv::train
