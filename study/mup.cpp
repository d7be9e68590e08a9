#include "study/mup.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <sstream>

#include "lib/numerics/atomic_file.hpp"
#include "lib/numerics/error.hpp"
#include "lib/plot/svg.hpp"
#include "study/report_io.hpp"
#include "study/stability.hpp"

namespace qkv::study {

namespace fs = std::filesystem;

namespace {

std::string label_of(AttentionParametrisation p) {
  if (p == AttentionParametrisation::standard) return "1/√d";
  return p == AttentionParametrisation::mup ? "μP 8/d, q = 0" : "full μP (8/d, q = 0, lr/m, logits/m)";
}

TrackedRunOptions run_for(const MupOptions& o, AttentionParametrisation p, std::size_t width, double lr,
                          std::size_t steps, std::size_t batch, std::size_t probe_every, std::size_t probe_size,
                          std::uint64_t seed) {
  TrackedRunOptions r;
  r.model.d_model = width, r.model.nhead = o.heads;
  r.model.encoder_layers = r.model.decoder_layers = o.layers;
  r.model.dim_feedforward = o.feedforward_ratio * width, r.model.dropout = 0;
  r.model.norm_first = true;
  if (p != AttentionParametrisation::standard) r.model.scale = ScoreScale::inverse_dim(8), r.model.zero_query_init = true;
  if (p == AttentionParametrisation::full_mup) r.model.mup_base_d_model = o.base_width;
  r.model.seed = seed;
  r.steps = steps, r.batch_size = batch, r.lr = lr, r.probe_every = probe_every, r.probe_size = probe_size;
  r.label = "mup " + name_of(p) + " width " + std::to_string(width) + " lr " + general(lr) + " seed " + std::to_string(seed);
  return r;
}

/// `text` inside a markdown table cell: a bare "|" would end the cell.
std::string table_cell(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

double layer_mean(const TrackedProbe& p, double LayerProbe::*field) {
  double total = 0;
  for (const LayerProbe& l : p.layers) total += l.*field;
  return p.layers.empty() ? kNaN : total / double(p.layers.size());
}

}  // namespace

MupOptions MupOptions::quick() {
  MupOptions o;
  o.coordinate_widths = {64, 128, 256};
  o.coordinate_steps = 5;
  o.transfer_widths = {64, 128};
  o.learning_rates = {1e-3, 1e-2, 3e-2};
  o.transfer_steps = 40;
  return o;
}

void MupOptions::validate() const {
  check_arg(!coordinate_widths.empty() && !transfer_widths.empty() && !learning_rates.empty() && seeds > 0,
            "MupOptions", "widths, learning rates and seeds must not be empty");
  for (const auto* widths : {&coordinate_widths, &transfer_widths})
    for (const std::size_t w : *widths)
      check_arg(w > 0 && w % heads == 0, "MupOptions",
                "width " + std::to_string(w) + " is not a positive multiple of heads " + std::to_string(heads));
  for (const double lr : learning_rates)
    check_arg(lr > 0 && std::isfinite(lr), "MupOptions", "learning rates must be positive, got " + format_number(lr));
  check_arg(coordinate_steps > 0 && transfer_steps > 0 && coordinate_batch > 0 && transfer_batch > 0 && layers > 0 &&
                feedforward_ratio > 0 && coordinate_probe_size > 0 && transfer_probe_size > 0 && base_width > 0,
            "MupOptions", "sizes and step counts must be positive");
}

std::string run_mup_section(const MupOptions& options, const std::string& out_dir, std::size_t jobs,
                            train::Communicator& communicator, const std::function<void(std::string_view)>& progress) {
  options.validate();
  const auto start = std::chrono::steady_clock::now();
  const AttentionParametrisation kinds[] = {AttentionParametrisation::standard, AttentionParametrisation::mup,
                                            AttentionParametrisation::full_mup};
  // The widest runs first, so that two jobs do not end on one long run.
  std::vector<TrackedRunOptions> runs;
  std::vector<AttentionParametrisation> run_kind;
  for (auto w = options.coordinate_widths.rbegin(); w != options.coordinate_widths.rend(); ++w)
    for (const AttentionParametrisation p : kinds) {
      runs.push_back(run_for(options, p, *w, options.coordinate_lr, options.coordinate_steps, options.coordinate_batch,
                             1, options.coordinate_probe_size, 0));
      run_kind.push_back(p);
    }
  const std::size_t coordinate_runs = runs.size();
  for (auto w = options.transfer_widths.rbegin(); w != options.transfer_widths.rend(); ++w)
    for (const AttentionParametrisation p : kinds)
      for (const double lr : options.learning_rates)
        for (std::uint64_t seed = 0; seed < options.seeds; ++seed) {
          runs.push_back(run_for(options, p, *w, lr, options.transfer_steps, options.transfer_batch,
                                 options.transfer_steps, options.transfer_probe_size, seed));
          run_kind.push_back(p);
        }
  const std::vector<TrackedRun> results = train_all(runs, jobs, communicator, progress);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (communicator.rank() != 0) return {};  // rank 0 writes
  std::vector<std::string> files;

  // ---- coordinate check ---------------------------------------------------------------------
  std::ostringstream coordinates;
  coordinates << "parametrisation,width,d_head,step,layer,mean_abs_logit,max_abs_logit,mean_abs_attention_output,"
                 "mean_abs_output_logit,train_loss\n";
  for (std::size_t i = 0; i < coordinate_runs; ++i) {
    const TrackedRun& r = results[i];
    for (const TrackedProbe& p : r.probes)
      for (const LayerProbe& l : p.layers)
        coordinates << name_of(run_kind[i]) << "," << r.options.model.d_model << ","
                    << r.options.model.d_model / r.options.model.nhead << "," << p.step << "," << l.name << ","
                    << cell(l.mean_abs_logit) << "," << cell(l.max_abs_logit) << "," << cell(l.mean_abs_output) << ","
                    << cell(p.mean_abs_output_logit) << "," << cell(p.train_loss) << "\n";
  }
  write_file_atomically((fs::path(out_dir) / "mup_coordinates.csv").string(), coordinates.str());
  files.push_back("mup_coordinates.csv");
  std::vector<double> widths(options.coordinate_widths.begin(), options.coordinate_widths.end());
  std::vector<std::int64_t> shown_steps = {0, 1, std::int64_t(options.coordinate_steps / 2),
                                           std::int64_t(options.coordinate_steps)};
  shown_steps.erase(std::unique(shown_steps.begin(), shown_steps.end()), shown_steps.end());
  // value[kind][width index][step]
  const auto coordinate_value = [&](AttentionParametrisation kind, std::size_t width, std::int64_t step,
                                    double LayerProbe::*field) {
    for (std::size_t i = 0; i < coordinate_runs; ++i)
      if (run_kind[i] == kind && results[i].options.model.d_model == width)
        for (const TrackedProbe& p : results[i].probes)
          if (p.step == step) return layer_mean(p, field);
    return kNaN;
  };
  struct Quantity {
    const char* file;
    const char* title;
    double LayerProbe::*field;
  };
  const Quantity quantities[] = {{"logit", "mean |attention logit|", &LayerProbe::mean_abs_logit},
                                 {"output", "mean |attention output|", &LayerProbe::mean_abs_output}};
  for (const Quantity& q : quantities)
    for (const AttentionParametrisation kind : kinds) {
      LineChart chart{.title = std::string(q.title) + " over layers, " + label_of(kind) + " — coordinate check",
                      .x_label = "d_model (" + std::to_string(options.heads) + " heads)", .y_label = q.title,
                      .series = {}, .log_x = true, .log_y = true, .x_ticks = widths};
      for (const std::int64_t step : shown_steps) {
        Series s{.name = "step " + std::to_string(step), .x = {}, .y = {}, .dashed = false};
        for (const std::size_t w : options.coordinate_widths) {
          const double v = coordinate_value(kind, w, step, q.field);
          s.x.push_back(double(w)), s.y.push_back(v > 0 ? v : kNaN);
        }
        chart.series.push_back(s);
      }
      const std::string name = "mup_coordinates_" + std::string(q.file) + "_" + name_of(kind) + ".svg";
      write_svg((fs::path(out_dir) / name).string(), line_chart_svg(chart));
      files.push_back(name);
    }

  // ---- learning-rate transfer ---------------------------------------------------------------
  std::ostringstream transfer;
  transfer << "parametrisation,width,lr,seed,final_probe_loss,final_token_accuracy,diverged,seconds\n";
  // loss[kind][width][lr] as the mean over seeds
  const auto transfer_loss = [&](AttentionParametrisation kind, std::size_t width, double lr) {
    double total = 0;
    std::size_t count = 0;
    for (std::size_t i = coordinate_runs; i < results.size(); ++i) {
      const TrackedRun& r = results[i];
      if (run_kind[i] != kind || r.options.model.d_model != width || r.options.lr != lr) continue;
      // A diverged run counts as the worst loss it could have: infinity.
      total += r.diverged || !std::isfinite(r.last().probe_loss) ? std::numeric_limits<double>::infinity()
                                                                   : r.last().probe_loss;
      ++count;
    }
    return count ? total / double(count) : kNaN;
  };
  for (std::size_t i = coordinate_runs; i < results.size(); ++i) {
    const TrackedRun& r = results[i];
    transfer << name_of(run_kind[i]) << "," << r.options.model.d_model << "," << cell(r.options.lr) << ","
             << r.options.model.seed << "," << cell(r.last().probe_loss) << "," << cell(r.last().token_accuracy) << ","
             << (r.diverged ? 1 : 0) << "," << cell(r.seconds) << "\n";
  }
  write_file_atomically((fs::path(out_dir) / "mup_lr_transfer.csv").string(), transfer.str());
  files.push_back("mup_lr_transfer.csv");
  for (const AttentionParametrisation kind : kinds) {
    LineChart chart{.title = "final probe loss against learning rate, " + label_of(kind),
                    .x_label = "Adam learning rate", .y_label = "cross-entropy", .series = {}, .log_x = true,
                    .log_y = true, .x_ticks = options.learning_rates};
    for (const std::size_t w : options.transfer_widths) {
      Series s{.name = "d_model " + std::to_string(w), .x = {}, .y = {}, .dashed = false};
      for (const double lr : options.learning_rates) {
        const double loss = transfer_loss(kind, w, lr);
        s.x.push_back(lr), s.y.push_back(std::isfinite(loss) && loss > 0 ? loss : kNaN);
      }
      chart.series.push_back(s);
    }
    const std::string name = "mup_lr_transfer_" + name_of(kind) + ".svg";
    write_svg((fs::path(out_dir) / name).string(), line_chart_svg(chart));
    files.push_back(name);
  }

  // ---- summary ------------------------------------------------------------------------------
  std::ostringstream md;
  md << "## μP: the 1/d attention scale, and full μP for Adam\n\n"
     << "Pre-LN transformer, " << options.heads << " heads (d_head = d_model / " << options.heads << "), "
     << options.layers << "+" << options.layers << " layers, feed-forward " << options.feedforward_ratio
     << "·d_model, dropout 0, task reverse; Adam, constant rate, no warm-up. Compared: 1/√d_head with the standard "
     << "initialisation; μP's 8/d_head with the query projection initialised to zero, the rest standard; and full μP "
     << "for Adam with base width " << options.base_width << " (m = d_model / " << options.base_width
     << "): that attention, hidden weights at Adam lr / m, readout logits / m, width-independent biases and "
     << "embeddings (models/transformer/transformer.hpp).\n\n"
     << "Time: " << std::fixed << std::setprecision(1) << seconds << " s.\n\n"
     << "### Coordinate check\n\nMean over the attention layers of mean |logit| (scaled score) after "
     << options.coordinate_steps << " Adam steps at lr " << general(options.coordinate_lr) << ", batch "
     << options.coordinate_batch << ", probed on " << options.coordinate_probe_size << " held-out pairs:\n\n"
     << "| parametrisation |";
  for (const std::size_t w : options.coordinate_widths) md << " d_model " << w << " |";
  md << " widest / narrowest |\n|:---|";
  for (std::size_t i = 0; i <= options.coordinate_widths.size(); ++i) md << "---:|";
  md << "\n";
  for (const Quantity& q : quantities)
    for (const AttentionParametrisation kind : kinds) {
      md << "| " << label_of(kind) << ", " << table_cell(q.title) << " |";
      for (const std::size_t w : options.coordinate_widths)
        md << " " << general(coordinate_value(kind, w, std::int64_t(options.coordinate_steps), q.field)) << " |";
      const double first = coordinate_value(kind, options.coordinate_widths.front(),
                                            std::int64_t(options.coordinate_steps), q.field);
      const double last = coordinate_value(kind, options.coordinate_widths.back(),
                                           std::int64_t(options.coordinate_steps), q.field);
      md << " " << general(last / first) << " |\n";
    }
  // The readout is what full μP's logits / m acts on: the model's output logits, per width.
  const auto output_logit = [&](AttentionParametrisation kind, std::size_t width) {
    for (std::size_t i = 0; i < coordinate_runs; ++i)
      if (run_kind[i] == kind && results[i].options.model.d_model == width)
        for (const TrackedProbe& p : results[i].probes)
          if (p.step == std::int64_t(options.coordinate_steps)) return p.mean_abs_output_logit;
    return kNaN;
  };
  for (const AttentionParametrisation kind : kinds) {
    md << "| " << label_of(kind) << ", " << table_cell("mean |output logit|") << " |";
    for (const std::size_t w : options.coordinate_widths) md << " " << general(output_logit(kind, w)) << " |";
    md << " " << general(output_logit(kind, options.coordinate_widths.back()) /
                         output_logit(kind, options.coordinate_widths.front()))
       << " |\n";
  }
  md << "\n### Learning-rate transfer\n\nFinal probe loss after " << options.transfer_steps << " steps (batch "
     << options.transfer_batch << ", " << options.seeds << " seed" << (options.seeds > 1 ? "s" : "")
     << "); the optimum is the grid's learning rate with the lowest loss:\n\n| parametrisation | d_model |";
  for (const double lr : options.learning_rates) md << " lr " << general(lr) << " |";
  md << " best lr |\n|:---|---:|";
  for (std::size_t i = 0; i <= options.learning_rates.size(); ++i) md << "---:|";
  md << "\n";
  for (const AttentionParametrisation kind : kinds)
    for (const std::size_t w : options.transfer_widths) {
      md << "| " << label_of(kind) << " | " << w << " |";
      double best = std::numeric_limits<double>::infinity(), best_lr = kNaN;
      for (const double lr : options.learning_rates) {
        const double loss = transfer_loss(kind, w, lr);
        md << " " << (std::isinf(loss) ? std::string("diverged") : general(loss)) << " |";
        if (loss < best) best = loss, best_lr = lr;
      }
      md << " " << general(best_lr) << " |\n";
    }
  md << "\nFiles: ";
  for (std::size_t i = 0; i < files.size(); ++i) md << (i ? ", " : "") << "`" << files[i] << "`";
  md << ".\n";
  const std::string text = md.str();
  write_file_atomically((fs::path(out_dir) / "mup_summary.md").string(), text);
  return text;
}

}  // namespace qkv::study
