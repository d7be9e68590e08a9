// qkv-attribution: does attention say which source tokens matter? For every target token of
// held-out sentence pairs (teacher-forced on the reference), the source tokens are ranked by
// each cross-attention map, by attention rollout and flow over the encoder self-attention, by
// input x gradient and by occlusion, and the rankings are compared with Spearman's ρ
// (study/attribution.hpp defines every method).
//
//   qkv-attribution --checkpoint runs/dates --out attr/dates
//   qkv-attribution --checkpoint runs/fra --data pairs.tsv --limit 50 --out attr/fra
//
// Sentences: the checkpoint's own data (its test split, or validation when it has none;
// --split picks one), or --data FILE, tab-separated source and target per line, tokenized as
// the checkpoint's data was. The first --limit pairs are used.
//
// It runs in float64 (qkv::study_f64; a float32 checkpoint's weights are widened on loading):
// occlusion of a token that barely matters changes a log-probability near 0 by 1e-5 or less,
// and those changes differ by about float32's resolution of the logits; Spearman's ρ ranks
// those tokens too.
//
// Writes DIR/summary.md (mean ρ and top-1 agreement for each pair of methods, by magnitude and
// signed),
// DIR/sentences.csv (ρ per sentence and pair of methods) and DIR/example.csv (every method's
// scores for the first sentence).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/text/batching.hpp"
#include "study/attribution.hpp"
#include "train/checkpoint.hpp"
#include "train/data_spec.hpp"

namespace {

namespace fs = std::filesystem;
using namespace qkv;
using namespace qkv::study;

/// A CSV field, quoted when it holds a comma, a quote or a newline.
std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (const char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

/// Tab-separated pairs, each side tokenized as the checkpoint's data. Throws ParseError naming
/// the line for a line without a tab or with an empty side.
std::vector<SentencePair> read_pairs(const std::string& path, const nlohmann::json& data_spec) {
  std::ifstream in(path);
  if (!in) throw Error("qkv-attribution: cannot open " + path);
  std::vector<SentencePair> pairs;
  std::string line;
  for (std::size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const std::size_t tab = line.find('\t');
    if (tab == std::string::npos) throw ParseError(path + ":" + std::to_string(number) + ": no tab between source and target");
    SentencePair pair{train::tokenize_input(data_spec, line.substr(0, tab)),
                      train::tokenize_input(data_spec, line.substr(tab + 1))};
    if (pair.source.empty() || pair.target.empty())
      throw ParseError(path + ":" + std::to_string(number) + ": a side has no tokens");
    pairs.push_back(std::move(pair));
  }
  return pairs;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  return text;
}

std::string joined(const Tokens& tokens, const nlohmann::json& data_spec) { return train::detokenize(data_spec, tokens); }

/// Every method's scores for one sentence, long form.
std::string example_csv(const SentenceAttribution& sentence, const Tokens& source, const Tokens& target) {
  std::string csv = "method,target_position,target_token,source_position,source_token,score\n";
  const auto token = [](const Tokens& tokens, std::size_t i) { return i < tokens.size() ? tokens[i] : std::string("<eos>"); };
  const auto add = [&](const NamedScores& method) {
    for (std::size_t t = 0; t < method.scores.shape()[0]; ++t)
      for (std::size_t j = 0; j < method.scores.shape()[1]; ++j)
        csv += csv_field(method.name) + "," + std::to_string(t) + "," + csv_field(token(target, t)) + "," +
               std::to_string(j) + "," + csv_field(token(source, j)) + "," + number(method.scores(t, j)) + "\n";
  };
  for (const NamedScores& method : sentence.attention) add(method);
  for (const NamedScores& method : sentence.attribution) add(method);
  return csv;
}

int run(int argc, char** argv) {
  CLI::App app{"qkv-attribution: attention against input x gradient and occlusion, with rollout and flow"};
  std::string checkpoint_dir, data_file, split, out;
  std::size_t limit = 200;
  int threads = 1;
  AttributionOptions options;
  bool no_gradient = false, no_occlusion = false, no_rollout = false, no_flow = false;
  app.add_option("--checkpoint", checkpoint_dir, "a qkv-train output directory (or its best/)")->required();
  app.add_option("--data", data_file, "tab-separated source and target per line (default: the checkpoint's data)")
      ->check(CLI::ExistingFile);
  app.add_option("--split", split, "the checkpoint's split to use: test, validation or train (default: test, or "
                                   "validation when there is no test split)")
      ->check(CLI::IsMember({"test", "validation", "train"}));
  app.add_option("--limit", limit, "sentence pairs at most (the first ones)")->check(CLI::Range(1, 1000000));
  app.add_option("--out", out, "output directory (created)")->required();
  app.add_flag("--no-gradient", no_gradient, "skip input x gradient");
  app.add_flag("--no-occlusion", no_occlusion, "skip occlusion");
  app.add_flag("--no-rollout", no_rollout, "skip attention rollout and flow");
  app.add_flag("--no-flow", no_flow, "skip attention flow (the slowest method)");
  app.add_option("--threads", threads, "threads for gemm and kernels")->check(CLI::Range(1, 256));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "qkv-attribution: %s\n", e.what());
    return 2;
  }
  if (!data_file.empty() && !split.empty()) {
    std::fprintf(stderr, "qkv-attribution: --split picks a split of the checkpoint's data; it cannot go with --data\n");
    return 2;
  }
  options.gradient = !no_gradient;
  options.occlusion = !no_occlusion;
  options.rollout = !no_rollout;
  options.flow = !no_flow && !no_rollout;
  check_arg(options.gradient || options.occlusion, "qkv-attribution",
            "--no-gradient and --no-occlusion together leave no attribution to compare attention with");
  parallel::set_num_threads(threads);
  const auto start = std::chrono::steady_clock::now();

  const train::Checkpoint checkpoint = train::load_checkpoint(checkpoint_dir);
  models::Seq2SeqModel& model = *checkpoint.model;
  model.eval();
  std::vector<SentencePair> pairs;
  std::string data_description;
  if (!data_file.empty()) {
    pairs = read_pairs(data_file, checkpoint.data);
    data_description = data_file;
  } else {
    const Dataset dataset = train::load_data(checkpoint.data);
    if (split.empty()) split = dataset.test.empty() ? "validation" : "test";
    pairs = split == "test" ? dataset.test : split == "validation" ? dataset.validation : dataset.train;
    data_description = "the " + split + " split of " + checkpoint.data.dump();
  }
  check_arg(!pairs.empty(), "qkv-attribution", "no sentence pairs in " + data_description);
  const std::size_t available = pairs.size();
  if (pairs.size() > limit) pairs.resize(limit);
  const Batcher batcher(pairs, checkpoint.vocabs.source, checkpoint.vocabs.target, {.batch_size = 1, .shuffle = false});
  fs::create_directories(out);

  AgreementTable by_magnitude, by_sign;
  std::string csv = "sentence,source,target,first,second,ranking,rho,top1,rows,skipped_rows\n";
  std::size_t skipped = 0;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const std::size_t index[1] = {i};
    const Batch sentence = batcher.make_batch(index);
    SentenceAttribution attribution;
    try {
      attribution = attribute_sentence(model, sentence, options);
    } catch (const ShapeError& e) {  // e.g. longer than the model's max_length
      spdlog::warn("sentence {} skipped: {}", i + 1, e.what());
      ++skipped;
      continue;
    }
    if (i == 0)
      write_file_atomically((fs::path(out) / "example.csv").string(),
                            example_csv(attribution, pairs[i].source, pairs[i].target));
    const std::vector<MethodPair> compared = method_pairs(attribution);
    const std::string source = csv_field(joined(pairs[i].source, checkpoint.data));
    const std::string target = csv_field(joined(pairs[i].target, checkpoint.data));
    for (const bool signed_scores : {false, true}) {
      const std::vector<RowAgreement> agreement = sentence_agreement(attribution, signed_scores);
      (signed_scores ? by_sign : by_magnitude).add(compared, agreement);
      for (std::size_t p = 0; p < compared.size(); ++p)
        csv += std::to_string(i + 1) + "," + source + "," + target + "," + csv_field(compared[p].first) + "," +
               csv_field(compared[p].second) + "," + (signed_scores ? "signed" : "magnitude") + "," +
               (agreement[p].rows ? number(agreement[p].mean) + "," + number(agreement[p].top1) : std::string(",")) + "," +
               std::to_string(agreement[p].rows) + "," + std::to_string(agreement[p].skipped_rows) + "\n";
    }
    if ((i + 1) % 25 == 0) spdlog::info("{} of {} sentences", i + 1, pairs.size());
  }
  check_arg(by_magnitude.sentences() > 0, "qkv-attribution", "every sentence was skipped");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Rollout and flow exist only for models with encoder self-attention (not Bahdanau).
  const auto paired_section = [](const std::string& ranking, const AgreementTable& table) {
    const std::string rows = composed_against_readout_markdown(table);
    return rows.empty() ? std::string()
                        : "\n## Rollout and flow against the raw weights they read out, paired per sentence, " + ranking +
                              "\n\n" + rows;
  };
  std::ostringstream summary;
  summary << "# Attention against attribution\n\n"
          << "- checkpoint: `" << checkpoint_dir << "` (" << model.kind() << ", step " << checkpoint.progress.step
          << ")\n"
          << "- sentences: " << by_magnitude.sentences() << " of " << available << " pairs in " << data_description
          << (skipped ? " (" + std::to_string(skipped) + " skipped)" : std::string()) << ", teacher-forced on the reference\n"
          << "- written " << utc_now() << " in " << number(seconds) << " s\n\n"
          << "Spearman's ρ between two methods' rankings of the source tokens (with <eos>) for one target token "
             "(with <eos>), averaged over the sentence's target tokens, then over sentences: mean ± standard "
             "deviation over sentences (number of sentences with a ρ). Definitions: study/attribution.hpp.\n\n"
          << "## Spearman's ρ, attributions ranked by magnitude\n\n"
          << agreement_markdown(by_magnitude.summary(), AgreementStatistic::spearman) << "\n"
          << "## Top-1 agreement (share of target tokens where both rank the same source token first), by magnitude\n\n"
          << agreement_markdown(by_magnitude.summary(), AgreementStatistic::top1)
          << paired_section("by magnitude", by_magnitude) << "\n"
          << "## Spearman's ρ, attributions ranked signed (a token that lowers the log-probability ranks last)\n\n"
          << agreement_markdown(by_sign.summary(), AgreementStatistic::spearman) << "\n"
          << "## Top-1 agreement, attributions signed\n\n"
          << agreement_markdown(by_sign.summary(), AgreementStatistic::top1) << paired_section("signed", by_sign);
  write_file_atomically((fs::path(out) / "summary.md").string(), summary.str());
  write_file_atomically((fs::path(out) / "sentences.csv").string(), csv);
  std::printf("%s\nwrote summary.md, sentences.csv and example.csv to %s\n", summary.str().c_str(), out.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-attribution: %s\n", e.what());
    return 2;
  }
}
