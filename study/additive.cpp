#include "study/additive.hpp"

#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <sstream>

#include "autograd/ops.hpp"
#include "layers/attention.hpp"
#include "layers/linear.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/rng.hpp"
#include "optim/adam.hpp"
#include "study/spread_runs.hpp"

namespace qkv::study {

using nlohmann::json;

namespace {

/// One batch of the task: keys [B, n, d_in], queries [B, 1, d_in], targets.
struct TaskBatch {
  Array keys, queries;
  std::vector<std::size_t> targets;
};

/// The task's two code tables, [types, d_in] each, N(0, 1): what a query of type c looks like
/// and what a key of type c looks like (different, so that matching them must be learned).
struct Codes {
  Array query, key;
};

/// Keys: the n = types types in a random order, each its key code plus N(0, 0.1²) noise; the
/// query: the query code of one of them, the target.
TaskBatch draw_batch(const Codes& codes, std::size_t batch, Rng& rng) {
  const std::size_t types = codes.key.shape(0), d = codes.key.shape(1);
  TaskBatch b{zeros({batch, types, d}), zeros({batch, 1, d}), std::vector<std::size_t>(batch)};
  std::vector<std::size_t> order(types);
  for (std::size_t i = 0; i < batch; ++i) {
    for (std::size_t j = 0; j < types; ++j) order[j] = j;
    for (std::size_t j = types - 1; j > 0; --j) std::swap(order[j], order[std::size_t(rng.next_u64() % (j + 1))]);
    for (std::size_t j = 0; j < types; ++j)
      for (std::size_t c = 0; c < d; ++c) b.keys(i, j, c) = codes.key(order[j], c) + real(0.1 * rng.normal());
    const std::size_t t = std::size_t(rng.next_u64() % types);
    b.targets[i] = t;
    for (std::size_t c = 0; c < d; ++c) b.queries(i, 0, c) = codes.query(order[t], c);
  }
  return b;
}

/// The layer under test, with what it trains.
class RetrievalModel : public Module {
 public:
  RetrievalModel(Mechanism mechanism, std::size_t input_size, std::size_t key_size, Rng& rng) : mechanism_(mechanism) {
    if (mechanism == Mechanism::additive) {
      additive_ = register_module("attention", std::make_shared<AdditiveAttention>(input_size, input_size, key_size, rng));
    } else {
      query_ = register_module("query", std::make_shared<Linear>(input_size, key_size, rng, LinearOptions{.bias = false}));
      key_ = register_module("key", std::make_shared<Linear>(input_size, key_size, rng, LinearOptions{.bias = false}));
      dot_ = register_module("attention", std::make_shared<DotProductAttention>(
                                              mechanism == Mechanism::dot ? ScoreScale::none() : ScoreScale::inverse_sqrt_dim()));
    }
  }
  /// keys [B, n, d_in] (also the values), queries [B, 1, d_in] -> output [B, 1, d_in], weights [B, 1, n].
  AttentionOutput forward(const Variable& keys, const Variable& queries) {
    if (additive_) return additive_->forward(queries, keys, keys);
    return dot_->forward(query_->forward(queries), key_->forward(keys), keys);
  }

 private:
  Mechanism mechanism_;
  std::shared_ptr<AdditiveAttention> additive_;
  std::shared_ptr<Linear> query_, key_;
  std::shared_ptr<DotProductAttention> dot_;
};

/// ‖output − x_t‖² / d_in, mean over the batch: the gradient reaches the scores only through
/// the softmax's Jacobian, as inside a model. output [B, 1, d_in], keys [B, n, d_in].
Variable retrieval_loss(const Variable& output, const Array& keys, const std::vector<std::size_t>& targets) {
  const std::size_t batch = targets.size(), d = keys.shape(2);
  Array wanted = zeros({batch, 1, d});
  for (std::size_t i = 0; i < batch; ++i)
    for (std::size_t c = 0; c < d; ++c) wanted(i, 0, c) = keys(i, targets[i], c);
  const Variable error = output - Variable(wanted);  // [B, 1, d_in]
  return sum(error * error) / real(batch * d);
}

AdditiveProbe probe(RetrievalModel& model, const TaskBatch& batch, std::size_t step) {
  const NoGradGuard no_grad;
  const AttentionOutput attended = model.forward(Variable(batch.keys), Variable(batch.queries));
  AdditiveProbe p;
  p.step = step;
  p.loss = double(retrieval_loss(attended.output, batch.keys, batch.targets).item());
  const Array& weights = attended.weights.value();  // [B, 1, n]
  const std::size_t rows = batch.targets.size(), keys = weights.shape(2);
  for (std::size_t i = 0; i < rows; ++i) {
    std::size_t best = 0;
    double entropy = 0;
    for (std::size_t j = 0; j < keys; ++j) {
      const double x = weights(i, 0, j);
      if (x > 0) entropy -= x * std::log(x);
      if (x > weights(i, 0, best)) best = j;
    }
    p.accuracy += best == batch.targets[i] ? 1 : 0;
    p.entropy += entropy, p.max_weight += weights(i, 0, best);
  }
  p.accuracy /= double(rows), p.entropy /= double(rows), p.max_weight /= double(rows);
  return p;
}

}  // namespace

std::string mechanism_label(Mechanism mechanism) {
  switch (mechanism) {
    case Mechanism::additive: return "additive";
    case Mechanism::dot: return "dot (unscaled)";
    case Mechanism::scaled_dot: return "dot / √d_k";
  }
  return "?";
}

void AdditiveOptions::validate() const {
  check_arg(!key_sizes.empty() && !mechanisms.empty() && seeds > 0 && input_size > 0 && keys >= 2 && steps > 0 &&
                batch_size > 0 && probe_every > 0 && probe_size > 0 && jobs > 0 && lr > 0,
            "AdditiveOptions", "sizes, steps, seeds and jobs must be positive, keys at least 2");
  for (const std::size_t d : key_sizes) check_arg(d > 0, "AdditiveOptions", "key sizes must be positive");
}

AdditiveRun train_additive_run(const AdditiveOptions& options, Mechanism mechanism, std::size_t key_size,
                               std::uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  // The task depends on the seed alone: every mechanism and d_k sees the same matrix and batches.
  Rng task(seed * 7919 + 1);
  Codes codes;
  codes.query = normal({options.keys, options.input_size}, 0, 1, task);
  codes.key = normal({options.keys, options.input_size}, 0, 1, task);
  const TaskBatch held_out = draw_batch(codes, options.probe_size, task);
  Rng weights_rng(seed * 104729 + key_size);
  RetrievalModel model(mechanism, options.input_size, key_size, weights_rng);
  Adam adam(model.named_parameters(), {.lr = options.lr});

  AdditiveRun run;
  run.mechanism = mechanism, run.key_size = key_size, run.seed = seed, run.steps_to_target = kNaN;
  run.curve.push_back(probe(model, held_out, 0));
  for (std::size_t step = 1; step <= options.steps; ++step) {
    const TaskBatch batch = draw_batch(codes, options.batch_size, task);
    adam.zero_grad();
    Variable loss =
        retrieval_loss(model.forward(Variable(batch.keys), Variable(batch.queries)).output, batch.keys, batch.targets);
    loss.backward();
    adam.step();
    if (step % options.probe_every == 0 || step == options.steps) {
      run.curve.push_back(probe(model, held_out, step));
      if (std::isnan(run.steps_to_target) && run.curve.back().accuracy >= options.target_accuracy)
        run.steps_to_target = double(step);
    }
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return run;
}

namespace {

json additive_run_json(const AdditiveRun& r) {
  json curve = json::array();
  for (const AdditiveProbe& p : r.curve)
    curve.push_back(
        {p.step, exact_json(p.loss), exact_json(p.accuracy), exact_json(p.entropy), exact_json(p.max_weight)});
  return {{"mechanism", name_of(r.mechanism)}, {"key_size", r.key_size}, {"seed", r.seed}, {"curve", curve},
          {"steps_to_target", exact_json(r.steps_to_target)}, {"seconds", exact_json(r.seconds)}};
}

AdditiveRun additive_run_from_json(const json& j) {
  AdditiveRun r;
  r.mechanism = parse_name<Mechanism>(j.at("mechanism").get<std::string>(), "mechanism");
  r.key_size = j.at("key_size").get<std::size_t>();
  r.seed = j.at("seed").get<std::uint64_t>();
  for (const json& p : j.at("curve"))
    r.curve.push_back({.step = p.at(0).get<std::size_t>(), .loss = exact_double(p.at(1)),
                       .accuracy = exact_double(p.at(2)), .entropy = exact_double(p.at(3)),
                       .max_weight = exact_double(p.at(4))});
  r.steps_to_target = exact_double(j.at("steps_to_target"));
  r.seconds = exact_double(j.at("seconds"));
  return r;
}

}  // namespace

std::vector<AdditiveRun> run_additive(const AdditiveOptions& options, train::Communicator& communicator,
                                      const std::function<void(std::string_view)>& progress) {
  options.validate();
  struct Job {
    Mechanism mechanism;
    std::size_t key_size;
    std::uint64_t seed;
  };
  std::vector<Job> jobs;
  for (const std::size_t d : options.key_sizes)
    for (const Mechanism m : options.mechanisms)
      for (std::uint64_t seed = 0; seed < options.seeds; ++seed) jobs.push_back({m, d, seed});
  return spread_runs<AdditiveRun>(
      communicator, jobs.size(), options.jobs, "additive", progress,
      [&](std::size_t i) { return train_additive_run(options, jobs[i].mechanism, jobs[i].key_size, jobs[i].seed); },
      additive_run_json, [](std::size_t, const json& j) { return additive_run_from_json(j); },
      [](const AdditiveRun& r) {
        return name_of(r.mechanism) + " d_k " + std::to_string(r.key_size) + " seed " + std::to_string(r.seed) +
               ": initial entropy " + fixed(r.curve.front().entropy, 3) + ", final accuracy " +
               fixed(r.curve.back().accuracy, 3) + ", " + fixed(r.seconds, 1) + " s";
      });
}

namespace {

struct Cell {
  double initial_entropy = 0, initial_max_weight = 0, final_loss = 0, final_accuracy = 0, accuracy_std = 0;
  double steps_to_target = 0;  // mean over the runs that reached it
  std::size_t runs = 0, reached = 0;
};

Cell cell_of(const std::vector<AdditiveRun>& runs, Mechanism mechanism, std::size_t key_size) {
  Cell c;
  std::vector<double> accuracies;
  double steps = 0;
  for (const AdditiveRun& r : runs) {
    if (r.mechanism != mechanism || r.key_size != key_size) continue;
    ++c.runs;
    c.initial_entropy += r.curve.front().entropy, c.initial_max_weight += r.curve.front().max_weight;
    c.final_loss += r.curve.back().loss;
    accuracies.push_back(r.curve.back().accuracy);
    if (!std::isnan(r.steps_to_target)) ++c.reached, steps += r.steps_to_target;
  }
  if (c.runs == 0) return c;
  const double n = double(c.runs);
  c.initial_entropy /= n, c.initial_max_weight /= n, c.final_loss /= n;
  for (const double a : accuracies) c.final_accuracy += a / n;
  for (const double a : accuracies) c.accuracy_std += (a - c.final_accuracy) * (a - c.final_accuracy);
  c.accuracy_std = c.runs > 1 ? std::sqrt(c.accuracy_std / (n - 1)) : 0;
  c.steps_to_target = c.reached ? steps / double(c.reached) : kNaN;
  return c;
}

}  // namespace

SectionOutput write_additive_section(const std::string& directory, const AdditiveOptions& o,
                                     const std::vector<AdditiveRun>& runs) {
  SectionOutput out;
  Csv curves({"mechanism", "d_k", "seed", "step", "loss", "accuracy", "entropy", "max_weight", "seconds"});
  for (const AdditiveRun& r : runs)
    for (const AdditiveProbe& p : r.curve)
      curves.row({name_of(r.mechanism), std::to_string(r.key_size), std::to_string(r.seed), std::to_string(p.step),
                  cell(p.loss), cell(p.accuracy), cell(p.entropy), cell(p.max_weight), cell(r.seconds)});
  curves.write(directory, "additive_curves.csv", out.files);
  Csv summary({"mechanism", "d_k", "runs", "initial_entropy", "initial_max_weight", "final_loss", "final_accuracy",
               "final_accuracy_std", "reached_target", "steps_to_target"});
  for (const std::size_t d : o.key_sizes)
    for (const Mechanism m : o.mechanisms) {
      const Cell c = cell_of(runs, m, d);
      summary.row({name_of(m), std::to_string(d), std::to_string(c.runs), cell(c.initial_entropy),
                   cell(c.initial_max_weight), cell(c.final_loss), cell(c.final_accuracy), cell(c.accuracy_std),
                   std::to_string(c.reached), cell(c.steps_to_target)});
    }
  summary.write(directory, "additive_summary.csv", out.files);
  const auto chart = [&](const std::string& name, const std::string& title, const std::string& y_label,
                         double Cell::*field, bool log_y, std::vector<Series> extra = {}) {
    LineChart c;
    c.title = title, c.x_label = "d_k (attention width)", c.y_label = y_label, c.log_x = true, c.log_y = log_y;
    for (const std::size_t d : o.key_sizes) c.x_ticks.push_back(double(d));
    for (const Mechanism m : o.mechanisms) {
      Series s{mechanism_label(m), {}, {}, false};
      for (const std::size_t d : o.key_sizes) s.x.push_back(double(d)), s.y.push_back(cell_of(runs, m, d).*field);
      c.series.push_back(s);
    }
    for (Series& e : extra) c.series.push_back(std::move(e));
    plot(directory, name, c, out.files);
  };
  chart("additive_accuracy.svg",
        "Retrieval accuracy after " + std::to_string(o.steps) + " steps, mean of " + std::to_string(o.seeds) + " seed" +
            (o.seeds > 1 ? "s" : ""),
        "held-out accuracy", &Cell::final_accuracy, false);
  // Accuracy ends at 1 for additive and scaled dot alike (their lines overlap): the speed separates them.
  chart("additive_steps_to_target.svg",
        "Steps to " + fixed(100 * o.target_accuracy, 0) + "% held-out accuracy (mean over the seeds that reached it)",
        "steps", &Cell::steps_to_target, true,
        // The run length: a setting missing from the chart never reached the target within it.
        {Series{"steps per run (not reached: no point)", {double(o.key_sizes.front()), double(o.key_sizes.back())},
                {double(o.steps), double(o.steps)}, true}});
  chart("additive_initial_entropy.svg", "Attention entropy at initialisation (ln n = uniform)", "entropy (nats)",
        &Cell::initial_entropy, false);

  std::ostringstream md;
  md << "## 4. Additive against dot product as d_k grows\n\n"
     << "One attention layer finding the key of the query's type: n = " << o.keys << " types, each with a query "
     << "code and a different key code (N(0, I_" << o.input_size << ") tables); the keys are the n key codes shuffled, "
     << "plus N(0, 0.1²) noise, and are the values; loss ‖output − x_t‖² / d_in; Adam lr " << general(o.lr)
     << ", batch " << o.batch_size << ", " << o.steps << " steps; accuracy = argmax weight on the target, on "
     << o.probe_size << " held-out queries; " << o.seeds << " seed" << (o.seeds > 1 ? "s" : "")
     << " (the same task and batches for every layer within a seed). Entropy and largest weight at initialisation; "
     << "steps to " << fixed(100 * o.target_accuracy, 0) << "% over the runs that reached it.\n\n"
     << "| d_k | mechanism | initial entropy | initial max weight | final loss | final accuracy | reached | steps to "
     << fixed(100 * o.target_accuracy, 0) << "% |\n|---:|:---|---:|---:|---:|---:|---:|---:|\n";
  for (const std::size_t d : o.key_sizes)
    for (const Mechanism m : o.mechanisms) {
      const Cell c = cell_of(runs, m, d);
      md << "| " << d << " | " << mechanism_label(m) << " | " << fixed(c.initial_entropy, 3) << " | "
         << fixed(c.initial_max_weight, 3) << " | " << fixed(c.final_loss, 3) << " | " << fixed(c.final_accuracy, 3)
         << (c.runs > 1 ? " ± " + fixed(c.accuracy_std, 3) : std::string()) << " | " << c.reached << "/" << c.runs
         << " | " << fixed(c.steps_to_target, 0) << " |\n";
    }
  md << "\n";
  out.markdown = md.str();
  return out;
}

}  // namespace qkv::study
