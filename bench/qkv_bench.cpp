// qkv-bench: training (or decoding: greedy or beam search) throughput of the example models on
// random tokens, as one JSON line. bench/torch_ref.py measures the same configurations in PyTorch and
// bench/compare.py runs the two side by side; see bench/README.md.
//
// The models are built through the registry, exactly as qkv-train builds them, and a step is
// what qkv-train's Trainer does: forward, cross-entropy (ignoring <pad> = 0), zero_grad,
// backward, global-norm clipping at 1.0, an Adam step.
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "autograd/ops.hpp"
#include "lib/numerics/blas.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/rng.hpp"
#include "layers/quantized.hpp"
#include "models/registry.hpp"
#include "optim/adam.hpp"
#include "optim/clip.hpp"
#include "train/checkpoint.hpp"

namespace {

using namespace qkv;

/// One benchmark configuration: the model's registry kind and config, and the batch shape.
struct BenchConfig {
  std::string kind;
  nlohmann::json model;
  std::size_t vocab = 0;
  std::size_t batch = 0;
  std::size_t source_length = 0;
  std::size_t target_length = 0;
};

BenchConfig bench_config(const std::string& name) {
  if (name == "transformer-tiny")
    return {"transformer",
            {{"d_model", 64}, {"num_heads", 4}, {"encoder_layers", 2}, {"decoder_layers", 2},
             {"dim_feedforward", 256}, {"dropout", 0.1}, {"activation", "relu"}, {"norm_first", false},
             {"positional", "sinusoidal"}},
            64, 64, 24, 24};
  if (name == "transformer-small")
    return {"transformer",
            {{"d_model", 256}, {"num_heads", 8}, {"encoder_layers", 3}, {"decoder_layers", 3},
             {"dim_feedforward", 1024}, {"dropout", 0.1}, {"activation", "relu"}, {"norm_first", false},
             {"positional", "sinusoidal"}},
            512, 32, 32, 32};
  if (name == "bahdanau")
    return {"bahdanau",
            {{"embed_size", 64}, {"hidden_size", 128}, {"encoder_layers", 1}, {"bidirectional", false},
             {"decoder_layers", 1}, {"attention_size", 128}, {"dropout", 0.0}},
            64, 64, 20, 20};
  throw Error("unknown config '" + name + "'; known: transformer-tiny, transformer-small, bahdanau");
}

/// Forward matmul FLOPs (2·M·N·K per product, attention products included) of one teacher-forced
/// pass; bench/torch_ref.py computes the same formula.
double forward_flops(const BenchConfig& c) {
  const double B = double(c.batch), S = double(c.source_length), T = double(c.target_length), V = double(c.vocab);
  if (c.kind == "transformer") {
    const double D = c.model["d_model"].get<double>(), F = c.model["dim_feedforward"].get<double>();
    const double enc = c.model["encoder_layers"].get<double>(), dec = c.model["decoder_layers"].get<double>();
    // Heads split D, so the score and value products sum to 2·B·Tq·Tk·D each.
    const double encoder_layer = 2 * B * S * D * 3 * D + 2 * (2 * B * S * S * D) + 2 * B * S * D * D + 2 * (2 * B * S * D * F);
    const double self_attention = 2 * B * T * D * 3 * D + 2 * (2 * B * T * T * D) + 2 * B * T * D * D;
    const double cross_attention = 2 * B * T * D * D + 2 * B * S * D * 2 * D + 2 * (2 * B * T * S * D) + 2 * B * T * D * D;
    const double decoder_layer = self_attention + cross_attention + 2 * (2 * B * T * D * F);
    return enc * encoder_layer + dec * decoder_layer + 2 * B * T * D * V;
  }
  const double E = c.model["embed_size"].get<double>(), H = c.model["hidden_size"].get<double>();
  const double A = c.model["attention_size"].get<double>();
  const double encoder = S * (2 * B * E * 3 * H + 2 * B * H * 3 * H);  // GRU input and hidden gates
  const double keys = 2 * B * S * H * A;                              // W_k k, once
  const double attention = 2 * B * H * A + 2 * B * S * A + 2 * B * S * H;  // W_q q, vᵀ tanh(·), context
  const double cell = 2 * B * (E + H) * 3 * H + 2 * B * H * 3 * H;
  return encoder + keys + T * (attention + cell) + 2 * B * T * H * V;
}

/// Uniform token ids in [4, vocab): no <pad>, <bos>, <eos> or <unk>, so every position counts.
IndexArray random_tokens(std::size_t rows, std::size_t columns, std::size_t vocab, Rng& rng) {
  IndexArray tokens = IndexArray::from_shape({rows, columns});
  for (auto& token : tokens) token = 4 + static_cast<std::int64_t>(rng.next_u64() % (vocab - 4));
  return tokens;
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) / 1024.0;  // Linux reports kilobytes
}

/// Resident memory now (not the peak): what a model holds after int8 conversion released its
/// float weights. Linux only (/proc/self/statm); 0 elsewhere.
double current_rss_mb() {
  std::FILE* statm = std::fopen("/proc/self/statm", "r");
  if (!statm) return 0;
  unsigned long size = 0, resident = 0;
  const int read = std::fscanf(statm, "%lu %lu", &size, &resident);
  std::fclose(statm);
  return read == 2 ? double(resident) * double(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0) : 0;
}

/// CPU time of the calling thread, in milliseconds.
double thread_cpu_ms() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return double(now.tv_sec) * 1e3 + double(now.tv_nsec) / 1e6;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double milliseconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}


/// Decodes one batch for `length` steps through the model's KV-cached incremental interface, with
/// no early stop at <eos> (random weights decide when <eos> would come, so every run does the
/// same work). beam == 1 is greedy; beam K keeps K hypotheses per sentence: each step adds every
/// row's log-softmax to its hypothesis score, keeps the K best of the K·V extensions per sentence
/// and reorders the decoder state to their parents (DecoderState::select_rows), as
/// models::beam_search does, minus its bookkeeping of finished hypotheses.
void decode_batch(models::Seq2SeqModel& model, const IndexArray& source, const IndexArray& source_lengths,
                  std::size_t beam, std::size_t length, std::size_t vocab) {
  const std::size_t sentences = source.shape()[0], rows = sentences * beam;
  const auto state = model.start_decoding(source, source_lengths);
  if (beam > 1) {
    std::vector<std::size_t> repeated(rows);  // row s·K + k starts as sentence s
    for (std::size_t r = 0; r < rows; ++r) repeated[r] = r / beam;
    state->select_rows(repeated);
  }
  IndexArray previous = IndexArray::from_shape({rows});
  previous.fill(1);  // <bos>
  // Only each sentence's first hypothesis is live at the start, so the first step does not
  // pick K copies of the same token.
  std::vector<double> scores(rows, -std::numeric_limits<double>::infinity());
  for (std::size_t s = 0; s < sentences; ++s) scores[s * beam] = 0;
  std::vector<double> candidates(beam * vocab);
  std::vector<std::size_t> order(beam * vocab), parents(rows);
  for (std::size_t t = 0; t < length; ++t) {
    // Keep the step's output alive: `logits` refers into it.
    const models::StepOutput step = model.decode_step(*state, previous);
    const Array& logits = step.logits.value();  // [rows, V]
    if (beam == 1) {
      for (std::size_t r = 0; r < rows; ++r) {
        const real* row = logits.data() + r * vocab;
        previous(r) = std::max_element(row, row + vocab) - row;
      }
      continue;
    }
    std::vector<double> next_scores(rows);
    for (std::size_t s = 0; s < sentences; ++s) {
      for (std::size_t k = 0; k < beam; ++k) {
        const std::size_t r = s * beam + k;
        const real* row = logits.data() + r * vocab;
        const double top = *std::max_element(row, row + vocab);
        double sum = 0;
        for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - top);
        const double log_normaliser = top + std::log(sum);  // log Σ exp(logits)
        for (std::size_t v = 0; v < vocab; ++v) candidates[k * vocab + v] = scores[r] + double(row[v]) - log_normaliser;
      }
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(beam), order.end(),
                        [&](std::size_t a, std::size_t b) { return candidates[a] > candidates[b]; });
      for (std::size_t k = 0; k < beam; ++k) {
        const std::size_t r = s * beam + k, chosen = order[k];
        parents[r] = s * beam + chosen / vocab;
        previous(r) = static_cast<std::int64_t>(chosen % vocab);
        next_scores[r] = candidates[chosen];
      }
    }
    scores = std::move(next_scores);
    state->select_rows(parents);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qkv-bench: training or decoding throughput of the example models, one JSON line"};
  std::string config_name = "transformer-tiny";
  int threads = 1;
  std::size_t steps = 20, warmup = 3, decode_length = 24, beam = 1, batch = 0;
  bool decode = false;
  std::uint64_t seed = 0;
  app.add_option("--config", config_name, "transformer-tiny | transformer-small | bahdanau");
  app.add_option("--threads", threads, "OpenBLAS threads")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed steps (training) or decoded batches (--decode)")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first");
  app.add_flag("--decode", decode,
               "time decoding (KV cache, no grad, eval mode) of --decode-length tokens per sentence instead");
  app.add_option("--decode-length", decode_length)->check(CLI::PositiveNumber);
  app.add_option("--beam", beam, "with --decode: hypotheses per sentence (1 = greedy)")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "sentences per batch instead of the config's (1: latency)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", seed);
  bool int8 = false;
  std::string checkpoint_dir;
  app.add_flag("--int8", int8, "with --decode: int8 weights for every Linear and attention projection (layers/quantized.hpp)");
  app.add_option("--checkpoint", checkpoint_dir,
                 "with --decode: decode this qkv-train checkpoint's model (random sources of --config's shape)")
      ->check(CLI::ExistingDirectory);
  bool sgemm = false;
  app.add_flag("--sgemm", sgemm, "time OpenBLAS sgemm on 1024x1024 matrices instead (the peak to compare with), naming the kernel");
  CLI11_PARSE(app, argc, argv);

  try {
    if (sgemm) {
      blas::set_openblas_threads(threads);  // OpenBLAS's own threads: the peak it reaches alone
      nlohmann::ordered_json result = {{"config", "sgemm-1024"}, {"threads", threads},
                                       {"kernel", blas::kernel_name()}, {"describe", blas::describe()},
                                       {"gflops_per_s", blas::sgemm_rate(1024, 10)}};
      std::printf("%s\n", result.dump().c_str());
      return 0;
    }
    if (beam > 1 && !decode) throw Error("--beam " + std::to_string(beam) + " needs --decode");
    if ((int8 || !checkpoint_dir.empty()) && !decode) throw Error("--int8 and --checkpoint need --decode");
    BenchConfig config = bench_config(config_name);
    if (batch > 0) config.batch = batch;
    parallel::set_num_threads(threads);
    nlohmann::json model_config = config.model;
    model_config["seed"] = seed;
    std::size_t source_vocab = config.vocab, target_vocab = config.vocab;
    std::shared_ptr<models::Seq2SeqModel> model;
    if (checkpoint_dir.empty()) {
      model = models::make_model(config.kind, model_config, config.vocab, config.vocab);
    } else {
      const train::Checkpoint checkpoint = train::load_checkpoint(checkpoint_dir);
      model = checkpoint.model;
      source_vocab = checkpoint.vocabs.source.size();
      target_vocab = checkpoint.vocabs.target.size();
    }
    std::size_t params = 0, weight_bytes = 0;
    for (const auto& [name, parameter] : model->named_parameters()) params += parameter.numel();
    for (const auto& [name, tensor] : model->state_dict()) weight_bytes += tensor.size() * sizeof(real);
    if (int8) {
      const Int8Report converted = quantize_for_inference(*model);
      weight_bytes = converted.int8_bytes + converted.other_bytes;
#if defined(__GLIBC__)
      malloc_trim(0);  // hand the released float weights back to the system, so that rss_mb shows them gone
#endif
    }

    Rng rng(seed + 1);
    const IndexArray source = random_tokens(config.batch, config.source_length, source_vocab, rng);
    IndexArray source_lengths = IndexArray::from_shape({config.batch});
    source_lengths.fill(static_cast<std::int64_t>(config.source_length));
    nlohmann::ordered_json result = {{"config", config_name}, {"threads", threads}};

    if (decode) {
      model->eval();
      NoGradGuard no_grad;
      std::vector<double> times, cpu_times;
      for (std::size_t i = 0; i < warmup + steps; ++i) {
        const auto start = std::chrono::steady_clock::now();
        const double cpu_start = thread_cpu_ms();
        decode_batch(*model, source, source_lengths, beam, decode_length, target_vocab);
        if (i >= warmup) times.push_back(milliseconds_since(start));
        if (i >= warmup) cpu_times.push_back(thread_cpu_ms() - cpu_start);
      }
      const double batch_ms = median(times);
      result["mode"] = "decode";
      if (int8) result["int8"] = true;
      // With --int8 or --checkpoint: the CPU time of this thread too, which a machine shared with
      // other jobs does not inflate the way it inflates the wall clock (meaningful at --threads 1).
      if (int8 || !checkpoint_dir.empty()) result["batch_cpu_ms_median"] = median(cpu_times);
      if (!checkpoint_dir.empty()) result["checkpoint"] = checkpoint_dir;
      result["beam"] = beam;
      result["batch"] = config.batch;
      result["decode_length"] = decode_length;
      result["batch_ms_median"] = batch_ms;
      result["sentences_per_s"] = double(config.batch) / (batch_ms / 1000.0);
      result["ms_per_token"] = batch_ms / double(decode_length);  // per decoding step of the whole batch
    } else {
      model->train();
      Adam optimizer(model->named_parameters(), {.lr = 1e-3, .betas = {0.9, 0.98}, .eps = 1e-9});
      std::vector<double> times;
      for (std::size_t i = 0; i < warmup + steps; ++i) {
        // Fresh tokens every step, drawn before the clock starts.
        const IndexArray target_output = random_tokens(config.batch, config.target_length, config.vocab, rng);
        IndexArray target_input = IndexArray::from_shape({config.batch, config.target_length});  // <bos> + output
        for (std::size_t b = 0; b < config.batch; ++b) {
          target_input(b, 0) = 1;
          for (std::size_t t = 1; t < config.target_length; ++t) target_input(b, t) = target_output(b, t - 1);
        }
        const auto start = std::chrono::steady_clock::now();
        const models::Seq2SeqOutput out = model->forward(source, source_lengths, target_input);
        Variable loss = cross_entropy(out.logits, target_output, {.ignore_index = 0});
        optimizer.zero_grad();
        loss.backward();
        clip_grad_norm(optimizer.parameters(), 1.0);
        optimizer.step();
        if (i >= warmup) times.push_back(milliseconds_since(start));
      }
      const double step_ms = median(times);
      const double flops = 3 * forward_flops(config);
      result["step_ms_median"] = step_ms;
      result["tgt_tokens_per_s"] = double(config.batch * config.target_length) / (step_ms / 1000.0);
      result["flops_per_step"] = flops;
      result["gflops_per_s"] = flops / (step_ms / 1000.0) / 1e9;
    }
    result["peak_rss_mb"] = peak_rss_mb();
    result["params"] = params;
    if (decode && (int8 || !checkpoint_dir.empty())) {
      result["weight_bytes"] = weight_bytes;
      result["rss_mb"] = current_rss_mb();
    }
    std::printf("%s\n", result.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
