#include "step_trace.hpp"

#include <spdlog/spdlog.h>

#include "lib/numerics/error.hpp"
#include "lib/numerics/safetensors.hpp"

namespace qkv::train_cli {

StepTrace::StepTrace(std::size_t steps, std::filesystem::path directory)
    : steps_(steps), directory_(std::move(directory)) {
  check_arg(steps_ > 0, "--trace-steps", "needs at least one step");
}

void StepTrace::on_train_start(train::Trainer& trainer) {
  check_arg(trainer.progress().step == 0, "--trace-steps", "traces a fresh run only, not a resumed one");
  std::filesystem::create_directories(directory_);
  trainer.model().save((directory_ / "initial.safetensors").string());
}

void StepTrace::on_step_end(train::Trainer& /*trainer*/, const train::StepInfo& step) {
  if (written_ || static_cast<std::size_t>(step.step) > steps_) return;
  const Batch& batch = *step.current_batch;  // the Trainer's own batch of this step
  const std::string prefix = std::to_string(step.step) + ".";
  batches_[prefix + "source"] = batch.source;
  batches_[prefix + "source_lengths"] = batch.source_lengths;
  batches_[prefix + "target_input"] = batch.target_input;
  batches_[prefix + "target_output"] = batch.target_output;
  losses_.push_back(step.loss);
  if (losses_.size() == steps_) write();
}

void StepTrace::on_train_end(train::Trainer& /*trainer*/, const train::TrainResult& /*result*/) {
  if (!written_ && !losses_.empty()) write();
}

void StepTrace::write() {
  written_ = true;
  Array losses = Array::from_shape({losses_.size()});
  for (std::size_t k = 0; k < losses_.size(); ++k) losses(k) = static_cast<real>(losses_[k]);
  const std::string path = (directory_ / "steps.safetensors").string();
  write_safetensors(path, {{"loss", losses}}, batches_, {{"steps", std::to_string(losses_.size())}});
  spdlog::info("--trace-steps: wrote {} and initial.safetensors ({} steps)", path, losses_.size());
}

}  // namespace qkv::train_cli
