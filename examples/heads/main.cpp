// qkv-heads: what every attention head of a trained transformer does and how much it matters.
//
//   qkv-heads --checkpoint runs/dates --out runs/dates/heads
//   qkv-heads --checkpoint runs/fra/best --limit 500 --beam 1
//
// For every head (study/head_analysis.hpp): Michel et al.'s importance, the loss / exact match /
// BLEU with that head alone masked, pruning curves (heads masked least important first, and
// least costly to ablate first), and its attention pattern. Writes OUT/heads.csv, OUT/pruning.csv, OUT/pruning.svg, OUT/heads.md
// and OUT/head_importance.json (for `qkv-translate --explore FILE --head-importance`), and
// prints heads.md and how many heads go with at most --points lost.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "study/head_analysis.hpp"
#include "train/checkpoint.hpp"
#include "train/data_spec.hpp"

namespace {

namespace fs = std::filesystem;
using namespace qkv;
using namespace qkv::study;

int run(int argc, char** argv) {
  CLI::App app{"qkv-heads: importance, ablation, pruning curve and attention patterns of every head"};
  std::string checkpoint_dir, out, split = "auto";
  std::size_t limit = 1000, beam = 0, max_length = 0;
  double points = 1;
  int threads = 1;
  HeadAnalysisOptions options;
  bool no_ablation = false, no_pruning = false;
  app.add_option("--checkpoint", checkpoint_dir, "a qkv-train output directory (or its best/)")->required();
  app.add_option("--out", out, "output directory (default: CHECKPOINT/heads)");
  app.add_option("--split", split, "the pairs to analyse: test, validation, or auto (test when the data has one: "
                                   "the generated tasks; validation for a corpus, whose test split is empty)")
      ->check(CLI::IsMember({"auto", "test", "validation"}));
  app.add_option("--limit", limit, "analyse the first N pairs of the split (0: all)");
  app.add_option("--beam", beam, "beam size for exact match and BLEU (default: the checkpoint's)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--max-length", max_length, "tokens generated at most (default: the checkpoint's)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--batch", options.batch_size, "evaluation batch size")->check(CLI::PositiveNumber);
  app.add_option("--importance-batch", options.importance_batch_size,
                 "batch size of the importance estimate (|dL/dxi| is taken per batch)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-ablation", no_ablation, "skip masking each head alone (one evaluation per head)");
  app.add_flag("--no-pruning", no_pruning, "skip the pruning curve (one evaluation per head)");
  app.add_option("--points", points, "quality loss allowed when counting prunable heads (exact-match points, BLEU)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "threads for gemm and kernels")->check(CLI::Range(1, 256));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "qkv-heads: %s\n", e.what());
    return 2;
  }
  parallel::set_num_threads(threads);
  spdlog::set_default_logger(spdlog::stderr_color_mt("qkv-heads"));
  options.ablate = !no_ablation;
  options.prune = !no_pruning;

  const train::Checkpoint checkpoint = train::load_checkpoint(checkpoint_dir);
  options.decode = checkpoint.options.decode;
  if (beam > 0) options.decode.beam = beam;
  if (max_length > 0) options.decode.max_length = max_length;
  const Dataset data = train::load_data(checkpoint.data);
  if (split == "auto") split = data.test.empty() ? "validation" : "test";
  std::vector<SentencePair> pairs = split == "test" ? data.test : data.validation;
  if (pairs.empty()) throw Error("the checkpoint's data has no " + split + " pairs");
  if (limit > 0 && pairs.size() > limit) pairs.resize(limit);
  if (out.empty()) out = (fs::path(checkpoint_dir) / "heads").string();
  fs::create_directories(out);
  spdlog::info("{} pairs of the {} split, beam {}", pairs.size(), split, options.decode.beam);

  const HeadAnalysis analysis = analyse_heads(*checkpoint.model, pairs, checkpoint.vocabs, options,
                                              [](const std::string& line) { spdlog::info("{}", line); });

  // The chart names the data: the task, or the corpus file's stem ("fra-eng").
  const nlohmann::json& spec = checkpoint.data;
  const std::string name = spec.contains("task") ? spec.at("task").get<std::string>()
                                                 : fs::path(spec.at("file").get<std::string>()).stem().string();
  const std::string markdown = heads_markdown(analysis);
  write_file_atomically((fs::path(out) / "heads.csv").string(), heads_csv(analysis));
  write_file_atomically((fs::path(out) / "pruning.csv").string(), pruning_csv(analysis));
  write_file_atomically((fs::path(out) / "heads.md").string(), markdown);
  write_file_atomically((fs::path(out) / "head_importance.json").string(), head_importance_json(analysis).dump(1) + "\n");
  if (options.prune)
    write_file_atomically((fs::path(out) / "pruning.svg").string(),
                          pruning_svg(analysis, "pruning " + name + " (" + std::to_string(pairs.size()) + " " + split +
                                                    " pairs)"));
  std::printf("%s\n", markdown.c_str());
  if (options.prune) {
    std::printf("heads: %zu; prunable with at most %g exact-match points lost: %zu; with at most %g BLEU lost: %zu\n",
                analysis.heads.size(), points, prunable_heads(analysis, QualityMetric::exact_match, points), points,
                prunable_heads(analysis, QualityMetric::bleu, points));
    if (options.ablate)
      std::printf("in ablation-loss order: %zu with at most %g exact-match points lost; %zu with at most %g BLEU lost\n",
                  prunable_heads(analysis, QualityMetric::exact_match, points, PruningOrder::ablation), points,
                  prunable_heads(analysis, QualityMetric::bleu, points, PruningOrder::ablation), points);
  }
  std::printf("wrote %s/{heads.csv,pruning.csv,heads.md,head_importance.json%s}\n", out.c_str(),
              options.prune ? ",pruning.svg" : "");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qkv-heads: %s\n", e.what());
    return 2;
  }
}
