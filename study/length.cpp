#include "study/length.hpp"

#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"
#include "lib/text/tasks.hpp"
#include "study/spread_runs.hpp"
#include "study/toy_run.hpp"
#include "train/evaluation.hpp"
#include "train/trainer.hpp"

namespace qkv::study {

using nlohmann::json;

namespace {

ScoreScale layer_scale(const LengthOptions& options, LengthScale scale) {
  switch (scale) {
    case LengthScale::inverse_sqrt_dim: return ScoreScale::inverse_sqrt_dim();
    case LengthScale::log_length: return ScoreScale::log_length(real(options.log_s));
    case LengthScale::scalable_softmax: return ScoreScale::scalable_softmax(real(options.ssmax_initial_s));
  }
  throw Error("length study: unknown scale");
}

std::string length_name(std::size_t length) { return length == 0 ? "train" : std::to_string(length); }

}  // namespace

std::string length_scale_label(LengthScale scale) {
  switch (scale) {
    case LengthScale::inverse_sqrt_dim: return "1/√d_k";
    case LengthScale::log_length: return "ln n/√d_k";
    case LengthScale::scalable_softmax: return "SSMax (s learned)";
  }
  return "?";
}

void FadingOptions::validate() const {
  check_arg(!key_counts.empty() && !gaps.empty() && key_size > 0 && trials > 0, "FadingOptions",
            "key_counts, gaps, key_size and trials must not be empty or zero");
  for (const std::size_t n : key_counts) check_arg(n >= 2, "FadingOptions", "need at least 2 keys, got " + std::to_string(n));
}

std::vector<FadingPoint> measure_fading(const FadingOptions& options) {
  options.validate();
  std::vector<FadingPoint> points;
  const std::size_t d = options.key_size;
  const real root = std::sqrt(static_cast<real>(d));
  for (const LengthScale scale : {LengthScale::inverse_sqrt_dim, LengthScale::log_length}) {
    DotProductAttention attention(scale == LengthScale::log_length ? ScoreScale::log_length(real(options.s))
                                                                   : ScoreScale::inverse_sqrt_dim());
    for (const bool gaussian : {false, true})
      for (const double gap : options.gaps)
        for (const std::size_t n : options.key_counts) {
          // q = √d e_1, so q·k/√d_k = k_1: key 0 carries the gap, the others 0 or N(0, 1).
          const std::size_t trials = gaussian ? options.trials : 1;
          Rng rng(options.seed ^ (n * 1000003 + std::size_t(gap * 1000)));
          Array q = zeros({trials, 1, d});   // [T, 1, d]
          Array k = zeros({trials, n, d});   // [T, n, d]
          Array v = zeros({trials, n, 1});   // [T, n, 1]: the output is the key's weight
          for (std::size_t t = 0; t < trials; ++t) {
            q(t, 0, 0) = root;
            k(t, 0, 0) = real(gap);
            v(t, 0, 0) = 1;
            if (gaussian)
              for (std::size_t j = 1; j < n; ++j) k(t, j, 0) = real(rng.normal());
          }
          const NoGradGuard no_grad;
          const Array out = attention.forward(Variable(q), Variable(k), Variable(v)).output.value();  // [T, 1, 1]
          double total = 0;
          for (std::size_t t = 0; t < trials; ++t) total += double(out(t, 0, 0));
          FadingPoint p;
          p.scale = scale, p.gaussian = gaussian, p.gap = gap, p.keys = n;
          p.weight = total / double(trials);
          const double c = scale == LengthScale::log_length ? options.s * std::log(double(n)) : 1.0;
          p.closed_form = gaussian ? kNaN : 1 / (1 + double(n - 1) * std::exp(-c * gap));
          points.push_back(p);
        }
  }
  return points;
}

void LengthOptions::validate() const {
  const char* owner = "LengthOptions";
  check_arg(!tasks.empty() && !scales.empty() && !positionals.empty() && !test_lengths.empty() && seeds > 0, owner,
            "tasks, scales, positionals, test_lengths and seeds must not be empty");
  for (const std::string& task : tasks)
    check_arg(task == "reverse" || task == "copy", owner, "tasks are reverse and copy, got " + task);
  check_arg(min_length >= 1 && min_length <= max_length, owner, "need 1 <= min_length <= max_length");
  for (const std::size_t length : test_lengths)
    check_arg(length >= 1 && length + 2 <= max_table, owner,
              "test length " + std::to_string(length) + " needs max_table >= length + 2, got " +
                  std::to_string(max_table));
  check_arg(d_model > 0 && heads > 0 && d_model % heads == 0 && layers > 0 && dim_feedforward > 0, owner,
            "d_model must be a positive multiple of heads; layers and dim_feedforward positive");
  check_arg(steps > 0 && batch_size > 0 && test_size > 0 && jobs > 0 && lr > 0, owner,
            "steps, batch_size, test_size, jobs and lr must be positive");
}

LengthRun train_length_run(const LengthOptions& options, const std::string& task, LengthScale scale,
                           models::PositionalKind positional, std::uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  // Held-out pairs of the training lengths come from the same distinct pool (test split),
  // longer ones from their own seeded draws. The Trainer clips at TrainOptions' default norm.
  ToyRunOptions toy;
  toy.task = task, toy.min_length = options.min_length, toy.max_length = options.max_length;
  toy.model.d_model = options.d_model;
  toy.model.nhead = options.heads;
  toy.model.encoder_layers = toy.model.decoder_layers = options.layers;
  toy.model.dim_feedforward = options.dim_feedforward;
  toy.model.dropout = 0;
  toy.model.positional = positional;
  toy.model.relative_max_distance = options.relative_max_distance;
  toy.model.max_len = options.max_table;
  toy.model.scale = layer_scale(options, scale);
  toy.model.seed = seed;
  toy.steps = options.steps, toy.batch_size = options.batch_size, toy.test_size = options.test_size;
  toy.training.lr = options.lr;
  ToyRun toy_run(toy);  // no evaluator: tested below
  const Dataset& data = toy_run.data;
  const Vocabs& vocabs = toy_run.vocabs;
  models::Seq2SeqModel& model = *toy_run.model;
  train::Trainer& trainer = toy_run.trainer;

  class LastLosses : public train::TrainerCallback {
   public:
    void on_step_end(train::Trainer& /*trainer*/, const train::StepInfo& info) override {
      losses.push_back(info.loss);
      if (losses.size() > 20) losses.erase(losses.begin());
    }
    std::vector<double> losses;
  };
  const auto last = std::make_shared<LastLosses>();
  trainer.add_callback(last);
  const train::TrainResult trained = trainer.train();
  check_arg(trained.reason != train::StopReason::diverged, "length study",
            task + " " + name_of(scale) + " " + name_of(positional) + " diverged: " + trained.message);

  LengthRun run;
  run.task = task, run.scale = scale, run.positional = positional, run.seed = seed;
  run.final_train_loss = 0;
  for (const double l : last->losses) run.final_train_loss += l / double(last->losses.size());
  run.mean_length_scale = kNaN;
  if (scale == LengthScale::scalable_softmax) {
    double total = 0;
    std::size_t count = 0;
    for (const auto& [name, p] : model.named_parameters())
      if (name.ends_with("length_scale"))
        for (std::size_t i = 0; i < p.numel(); ++i) total += double(p.value().data()[i]), ++count;
    run.mean_length_scale = count ? total / double(count) : kNaN;
  }
  std::vector<std::size_t> lengths = {0};
  lengths.insert(lengths.end(), options.test_lengths.begin(), options.test_lengths.end());
  for (const std::size_t length : lengths) {
    const std::vector<SentencePair> pairs =
        length == 0 ? data.test
                    : make_task(task, {.train_size = options.test_size, .validation_size = 1, .test_size = 1,
                                       .seed = seed + 7919 * length, .min_length = length, .max_length = length})
                          .train;
    const std::size_t longest = length == 0 ? options.max_length : length;
    const train::Evaluation e =
        train::evaluate(model, pairs, vocabs, {.beam = 1, .max_length = longest + 10}, options.test_size);
    run.points.push_back({length, e.loss, e.token_accuracy, e.exact_match});
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

namespace {

json length_run_json(const LengthRun& r) {
  json points = json::array();
  for (const LengthPoint& p : r.points)
    points.push_back({p.length, exact_json(p.loss), exact_json(p.token_accuracy), exact_json(p.exact_match)});
  return {{"task", r.task}, {"scale", name_of(r.scale)}, {"positional", name_of(r.positional)}, {"seed", r.seed},
          {"final_train_loss", exact_json(r.final_train_loss)}, {"mean_length_scale", exact_json(r.mean_length_scale)},
          {"points", points}, {"seconds", exact_json(r.seconds)}};
}

LengthRun length_run_from_json(const json& j) {
  LengthRun r;
  r.task = j.at("task").get<std::string>();
  r.scale = parse_name<LengthScale>(j.at("scale").get<std::string>(), "length scale");
  r.positional = parse_name<models::PositionalKind>(j.at("positional").get<std::string>(), "positional");
  r.seed = j.at("seed").get<std::uint64_t>();
  r.final_train_loss = exact_double(j.at("final_train_loss"));
  r.mean_length_scale = exact_double(j.at("mean_length_scale"));
  for (const json& p : j.at("points"))
    r.points.push_back({.length = p.at(0).get<std::size_t>(), .loss = exact_double(p.at(1)),
                        .token_accuracy = exact_double(p.at(2)), .exact_match = exact_double(p.at(3))});
  r.seconds = exact_double(j.at("seconds"));
  return r;
}

}  // namespace

std::vector<LengthRun> run_length_generalisation(const LengthOptions& options, train::Communicator& communicator,
                                                 const std::function<void(std::string_view)>& progress) {
  options.validate();
  struct Job {
    std::string task;
    models::PositionalKind positional;
    LengthScale scale;
    std::uint64_t seed;
  };
  std::vector<Job> jobs;
  for (const std::string& task : options.tasks)
    for (const models::PositionalKind positional : options.positionals)
      for (const LengthScale scale : options.scales)
        for (std::uint64_t seed = 0; seed < options.seeds; ++seed) jobs.push_back({task, positional, scale, seed});
  return spread_runs<LengthRun>(
      communicator, jobs.size(), options.jobs, "length", progress,
      [&](std::size_t i) {
        return train_length_run(options, jobs[i].task, jobs[i].scale, jobs[i].positional, jobs[i].seed);
      },
      length_run_json, [](std::size_t, const json& j) { return length_run_from_json(j); },
      [](const LengthRun& r) {
        std::ostringstream line;
        line << r.task << " " << name_of(r.positional) << " " << name_of(r.scale) << " seed " << r.seed << ": exact";
        for (const LengthPoint& p : r.points) line << " " << length_name(p.length) << "=" << fixed(p.exact_match, 2);
        line << ", " << fixed(r.seconds, 1) << " s";
        return line.str();
      });
}

namespace {

/// Mean over seeds of one test length's field for (task, positional, scale).
double mean_at(const std::vector<LengthRun>& runs, const std::string& task, models::PositionalKind positional,
               LengthScale scale, std::size_t length, double LengthPoint::*field) {
  double total = 0;
  std::size_t count = 0;
  for (const LengthRun& r : runs)
    if (r.task == task && r.positional == positional && r.scale == scale)
      for (const LengthPoint& p : r.points)
        if (p.length == length) total += p.*field, ++count;
  return count ? total / double(count) : kNaN;
}

}  // namespace

SectionOutput write_length_section(const std::string& directory, const FadingOptions& fo,
                                   const std::vector<FadingPoint>& fading, const LengthOptions& lo,
                                   const std::vector<LengthRun>& runs) {
  SectionOutput out;
  std::vector<std::string>& written = out.files;
  std::ostringstream md;
  md << "## 3. Length: attention fading and length generalisation\n\n";
  if (!fading.empty()) {
    Csv csv({"scale", "distractors", "gap", "keys", "weight", "closed_form"});
    for (const FadingPoint& p : fading)
      csv.row({name_of(p.scale), p.gaussian ? "gaussian" : "equal", cell(p.gap), std::to_string(p.keys), cell(p.weight),
               cell(p.closed_form)});
    csv.write(directory, "length_fading.csv", written);
    for (const bool gaussian : {false, true}) {
      LineChart chart;
      chart.title = std::string("Weight on the key whose logit is gap above ") +
                    (gaussian ? "N(0, 1) distractors" : "n − 1 equal distractors") + " (s = " + general(fo.s) + ")";
      chart.x_label = "keys n";
      chart.y_label = "softmax weight on the key";
      chart.log_x = true;
      for (const std::size_t n : fo.key_counts) chart.x_ticks.push_back(double(n));
      for (const LengthScale scale : {LengthScale::inverse_sqrt_dim, LengthScale::log_length})
        for (const double gap : fo.gaps) {
          Series measured{length_scale_label(scale) + ", gap " + general(gap), {}, {}, scale == LengthScale::inverse_sqrt_dim};
          for (const FadingPoint& p : fading)
            if (p.scale == scale && p.gaussian == gaussian && p.gap == gap)
              measured.x.push_back(double(p.keys)), measured.y.push_back(p.weight);
          chart.series.push_back(measured);
        }
      plot(directory, gaussian ? "length_fading_gaussian.svg" : "length_fading.svg", chart, written);
    }
    md << "### Attention fading\n\nOne key's logit (after 1/√d_k) is `gap` above the n − 1 others (all 0, or N(0, 1) "
       << "drawn, " << fo.trials << " queries per n); the weight DotProductAttention gives it, with 1/√d_k "
       << "and with s·ln n/√d_k (s = " << general(fo.s) << "). Closed form (equal distractors): "
       << "1 / (1 + (n − 1) e^{−c·gap}), c = 1 or s ln n; the largest deviation from it is reported.\n\n"
       << "| scale | gap | n = " << fo.key_counts.front() << " | n = " << fo.key_counts[fo.key_counts.size() / 2]
       << " | n = " << fo.key_counts.back() << " | N(0,1) distractors, n = " << fo.key_counts.back()
       << " | max abs deviation from closed form |\n|:---|---:|---:|---:|---:|---:|---:|\n";
    for (const LengthScale scale : {LengthScale::inverse_sqrt_dim, LengthScale::log_length})
      for (const double gap : fo.gaps) {
        double deviation = 0, first = kNaN, middle = kNaN, lastw = kNaN, gauss = kNaN;
        for (const FadingPoint& p : fading) {
          if (p.scale != scale || p.gap != gap) continue;
          if (p.gaussian) {
            if (p.keys == fo.key_counts.back()) gauss = p.weight;
            continue;
          }
          deviation = std::max(deviation, std::abs(p.weight - p.closed_form));
          if (p.keys == fo.key_counts.front()) first = p.weight;
          if (p.keys == fo.key_counts[fo.key_counts.size() / 2]) middle = p.weight;
          if (p.keys == fo.key_counts.back()) lastw = p.weight;
        }
        md << "| " << length_scale_label(scale) << " | " << general(gap) << " | " << fixed(first, 4) << " | "
           << fixed(middle, 4) << " | " << fixed(lastw, 4) << " | " << fixed(gauss, 4) << " | " << general(deviation)
           << " |\n";
      }
    md << "\n";
  }
  if (!runs.empty()) {
    Csv csv({"task", "positional", "scale", "seed", "test_length", "loss", "token_accuracy", "exact_match",
             "final_train_loss", "mean_length_scale", "seconds"});
    for (const LengthRun& r : runs)
      for (const LengthPoint& p : r.points)
        csv.row({r.task, name_of(r.positional), name_of(r.scale), std::to_string(r.seed), length_name(p.length),
                 cell(p.loss), cell(p.token_accuracy), cell(p.exact_match), cell(r.final_train_loss),
                 cell(r.mean_length_scale), cell(r.seconds)});
    csv.write(directory, "length_generalisation.csv", written);
    std::vector<std::size_t> lengths = {0};
    lengths.insert(lengths.end(), lo.test_lengths.begin(), lo.test_lengths.end());
    for (const std::string& task : lo.tasks)
      for (const models::PositionalKind positional : lo.positionals) {
        LineChart chart;
        chart.title = task + ", " + name_of(positional) + " positions: token accuracy (solid) and exact match "
                      "(dashed) by length, trained on " + std::to_string(lo.min_length) + "–" +
                      std::to_string(lo.max_length);
        chart.x_label = "sequence length (" + std::to_string(lo.max_length) + ": held-out training lengths)";
        chart.y_label = "greedy exact match / teacher-forced token accuracy";
        for (const std::size_t length : lengths) chart.x_ticks.push_back(double(length == 0 ? lo.max_length : length));
        for (const LengthScale scale : lo.scales) {
          Series tokens{length_scale_label(scale) + " token acc", {}, {}, false};
          Series exact{length_scale_label(scale) + " exact", {}, {}, true};
          for (const std::size_t length : lengths) {
            const double x = double(length == 0 ? lo.max_length : length);
            tokens.x.push_back(x), exact.x.push_back(x);
            tokens.y.push_back(mean_at(runs, task, positional, scale, length, &LengthPoint::token_accuracy));
            exact.y.push_back(mean_at(runs, task, positional, scale, length, &LengthPoint::exact_match));
          }
          chart.series.push_back(tokens);
          chart.series.push_back(exact);
        }
        plot(directory, "length_" + task + "_" + name_of(positional) + ".svg", chart, written);
      }
    md << "### Length generalisation\n\nTransformer d_model " << lo.d_model << ", " << lo.heads << " heads (d_k "
       << lo.d_model / lo.heads << "), " << lo.layers << "+" << lo.layers << " layers, feed-forward "
       << lo.dim_feedforward << ", dropout 0; Adam lr " << general(lo.lr) << ", batch " << lo.batch_size << ", "
       << lo.steps << " steps on lengths " << lo.min_length << "–" << lo.max_length << "; " << lo.seeds << " seed"
       << (lo.seeds > 1 ? "s" : "") << ". Scales: 1/√d_k; ln n/√d_k with s = " << general(lo.log_s)
       << "; SSMax with s learned per head from " << general(lo.ssmax_initial_s)
       << ". n = the keys a query may attend to (source length for encoder self- and cross-attention, i + 1 for "
       << "decoder query i). Relative positions clipped at " << lo.relative_max_distance
       << "; position tables of " << lo.max_table << " rows, so the *learned* table's rows beyond the training "
       << "lengths are untrained (their N(0, 0.02²) initialisation). Greedy exact match on " << lo.test_size
       << " pairs per length (\"train\": held-out pairs of the training lengths); token accuracy teacher-forced.\n\n";
    for (const std::string& task : lo.tasks) {
      md << "`" << task << "`, exact match (token accuracy):\n\n| positions | scale |";
      for (const std::size_t length : lengths) md << " " << length_name(length) << " |";
      md << " final s |\n|:---|:---|";
      for (std::size_t i = 0; i < lengths.size(); ++i) md << "---:|";
      md << "---:|\n";
      for (const models::PositionalKind positional : lo.positionals)
        for (const LengthScale scale : lo.scales) {
          md << "| " << name_of(positional) << (positional == models::PositionalKind::learned ? " (untrained rows > "
                                                                                               + std::to_string(lo.max_length + 1) + ")" : "")
             << " | " << length_scale_label(scale) << " |";
          for (const std::size_t length : lengths)
            md << " " << fixed(mean_at(runs, task, positional, scale, length, &LengthPoint::exact_match), 2) << " ("
               << fixed(mean_at(runs, task, positional, scale, length, &LengthPoint::token_accuracy), 2) << ") |";
          double s_total = 0;
          std::size_t s_count = 0;
          for (const LengthRun& r : runs)
            if (r.task == task && r.positional == positional && r.scale == scale && std::isfinite(r.mean_length_scale))
              s_total += r.mean_length_scale, ++s_count;
          md << " " << (s_count ? fixed(s_total / double(s_count), 3) : std::string("—")) << " |\n";
        }
      md << "\n";
    }
  }
  out.markdown = md.str();
  return out;
}

}  // namespace qkv::study
