// qkv-translate: translates sentences read on stdin, one per line, with a qkv-train checkpoint.
//
//   echo "wed, 3 mar 2021" | qkv-translate --checkpoint runs/dates
//   qkv-translate --checkpoint runs/fra/best --beam 4 --attention-svg go.svg < sentences.txt
//
// Input is preprocessed as the model's training data was (config.json's "data": characters
// for dates, d2l.ai's normalisation for corpora); words the vocabulary lacks become <unk>.
// One output line per input line, in order; an empty line gives an empty line. A line that
// cannot be translated — not valid UTF-8, no token the vocabulary knows, longer than the model
// takes — is reported as `stdin:LINE: why` on stderr, gives an empty output line, and makes the
// exit status 1; the other lines are translated. --attention-svg FILE writes the attention plots
// of the first sentence (train/attention_plots.hpp: FILE, FILE-connections.svg, ...); --explore
// FILE its explorer page (train/attention_explorer.hpp), with --head-importance JSON's numbers.
// --int8 decodes with int8 weights (layers/quantized.hpp; docs/variants.md, "Int8 inference").
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "lib/text/batching.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/json_field.hpp"
#include "layers/quantized.hpp"
#include "train/attention_explorer.hpp"
#include "train/attention_plots.hpp"
#include "train/data_spec.hpp"
#include "models/decoding.hpp"
#include "train/trainer.hpp"

namespace {

namespace fs = std::filesystem;
using namespace qkv;
using namespace qkv::models;
using namespace qkv::train;

struct Line {
  std::size_t number = 0;  // 1-based line on stdin
  Tokens tokens;
};

/// Translates `lines` (all non-empty) as one batch; returns one text per line.
std::vector<std::string> translate(Seq2SeqModel& model, const Checkpoint& checkpoint, const std::vector<Line>& lines,
                                   const DecodeOptions& decode) {
  std::vector<SentencePair> pairs;
  for (const Line& line : lines) pairs.push_back({line.tokens, {}});
  const Batcher batcher(pairs, checkpoint.vocabs.source, checkpoint.vocabs.target,
                        {.batch_size = pairs.size(), .shuffle = false});
  std::vector<std::size_t> all(pairs.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const Batch batch = batcher.make_batch(all);
  const std::vector<Hypothesis> hypotheses = models::decode(model, batch.source, batch.source_lengths, decode);
  std::vector<std::string> texts;
  for (const Hypothesis& hypothesis : hypotheses)
    texts.push_back(detokenize(checkpoint.data, checkpoint.vocabs.target.decode(hypothesis.tokens)));
  return texts;
}

void report(std::size_t number, const std::string& why) {
  std::fprintf(stderr, "qkv-translate: stdin:%zu: %s\n", number, why.c_str());
}

/// translate(), but a line the model refuses (too long, ...) costs only that line: when the batch
/// fails, its lines are translated one by one and each failure is reported; those get "".
std::vector<std::string> translate_each(Seq2SeqModel& model, const Checkpoint& checkpoint,
                                        const std::vector<Line>& lines, const DecodeOptions& decode, int& status) {
  try {
    return translate(model, checkpoint, lines, decode);
  } catch (const Error&) {
    std::vector<std::string> texts;
    for (const Line& line : lines) {
      try {
        texts.push_back(translate(model, checkpoint, {line}, decode).front());
      } catch (const Error& e) {
        report(line.number, e.what());
        texts.emplace_back();
        status = 1;
      }
    }
    return texts;
  }
}

int run(int argc, char** argv) {
  CLI::App app{"qkv-translate: translate stdin, one sentence per line, with a qkv-train checkpoint"};
  std::string checkpoint_dir, attention_svg, explore, head_importance;
  std::size_t beam = 0, max_length = 0, sink_tokens = 0, cache_window = 0;
  int threads = 1;
  bool int8 = false;
  app.add_option("--checkpoint", checkpoint_dir, "a qkv-train output directory (or its best/)")->required();
  app.add_option("--beam", beam, "beam size (default: the one training evaluated with)")->check(CLI::Range(1, 1024));
  app.add_option("--max-length", max_length, "tokens generated at most (default: the checkpoint's)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--sink-tokens", sink_tokens,
                 "keep the first N target steps in the self-attention KV cache (attention sinks; needs --cache-window)");
  app.add_option("--cache-window", cache_window,
                 "keep the last N target steps in the self-attention KV cache, evicting older ones but the sinks");
  app.add_option("--attention-svg", attention_svg, "write the first sentence's attention plots to this SVG file");
  app.add_option("--explore", explore, "write the first sentence's attention explorer (HTML) to this file");
  app.add_option("--head-importance", head_importance, "a JSON file of head importances for --explore's page")
      ->check(CLI::ExistingFile);
  app.add_option("--threads", threads, "threads for gemm and kernels")->check(CLI::Range(1, 256));
  app.add_flag("--int8", int8,
               "int8 inference: per-channel int8 weights for every Linear and attention projection, "
               "activations quantized per token");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "qkv-translate: %s\n", e.what());
    return 2;
  }
  parallel::set_num_threads(threads);
  // stdout carries the translations and nothing else, so logs go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("qkv-translate"));
  const Checkpoint checkpoint = load_checkpoint(checkpoint_dir);
  const nlohmann::json importance = head_importance.empty() ? nlohmann::json() : read_json_file(head_importance);
  Seq2SeqModel& model = *checkpoint.model;
  model.eval();
  if (int8) {
    const Int8Report converted = quantize_for_inference(model);
    spdlog::info("int8: {} weight matrices, {} bytes in float -> {} in int8 (other parameters: {} bytes)",
                 converted.weights, converted.float_bytes, converted.int8_bytes, converted.other_bytes);
  }
  DecodeOptions decode = checkpoint.options.decode;
  if (beam > 0) decode.beam = beam;
  if (max_length > 0) decode.max_length = max_length;
  decode.cache_limit = {.sink_tokens = sink_tokens, .window = cache_window};

  // A person typing waits for each answer; a pipe is translated in batches.
  const std::size_t batch_size = ::isatty(STDIN_FILENO) ? 1 : 64;
  int status = 0;
  bool plotted = attention_svg.empty() && explore.empty();
  std::vector<Line> pending;
  std::vector<std::string> outputs;  // per input line since the last flush; "" for empty/bad
  std::vector<std::size_t> pending_slot;
  const auto flush = [&] {
    if (!pending.empty()) {
      const std::vector<std::string> texts = translate_each(model, checkpoint, pending, decode, status);
      for (std::size_t i = 0; i < texts.size(); ++i) outputs[pending_slot[i]] = texts[i];
    }
    for (const std::string& text : outputs) std::printf("%s\n", text.c_str());
    std::fflush(stdout);
    pending.clear();
    pending_slot.clear();
    outputs.clear();
  };
  std::string text;
  for (std::size_t number = 1; std::getline(std::cin, text); ++number) {
    outputs.emplace_back();
    try {
      Tokens tokens = tokenize_input(checkpoint.data, text);
      const std::vector<std::int64_t> ids = checkpoint.vocabs.source.encode(tokens);
      if (!tokens.empty() && std::all_of(ids.begin(), ids.end(), [](std::int64_t id) { return id == Vocab::unk_id; }))
        throw Error("no token of the line is in the model's vocabulary (" + std::to_string(tokens.size()) +
                    " tokens, all <unk>)");
      if (!tokens.empty()) {
        if (!plotted) {
          const SentenceAttention sentence = sentence_attention(model, checkpoint.vocabs, tokens, decode);
          std::string files;
          if (!attention_svg.empty())
            for (const std::string& file : write_attention_plots(sentence, checkpoint.vocabs, checkpoint.data,
                                                                 fs::path(attention_svg).replace_extension().string())
                                               .files)
              files += " " + file;
          if (!explore.empty()) {
            write_attention_explorer(sentence, checkpoint.vocabs, checkpoint.data, explore, importance);
            files += " " + explore;
          }
          spdlog::info("attention plots of line {}:{}", number, files);
          plotted = true;
        }
        pending.push_back({number, std::move(tokens)});
        pending_slot.push_back(outputs.size() - 1);
      }
    } catch (const Error& e) {
      report(number, e.what());
      status = 1;
    }
    if (pending.size() >= batch_size) flush();
  }
  flush();
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-translate: %s\n", e.what());
    return 2;
  }
}
