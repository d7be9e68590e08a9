// The parts of data parallelism that need no MPI (train/distributed.hpp): dropout masks under a
// batch shard are the whole batch's, read at the shard's rows; the start-up handshake's and the
// hash check's messages; the gradient all-reduce's weighting. The multi-rank runs themselves
// are tests/mpi/run.sh under mpirun.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "lib/numerics/error.hpp"
#include "lib/numerics/kernels.hpp"
#include "lib/numerics/rng.hpp"
#include "train/distributed.hpp"

using namespace qkv;
using namespace qkv::train;

namespace {

/// Rank 0 of a job of two whose rank 1 sent `other_text` / `other_hashes`: what rank 0 sees of
/// a collective, without a second process.
class RankZeroOfTwo : public Communicator {
 public:
  std::string other_text;
  std::vector<std::uint64_t> other_hashes;
  std::vector<double> other_doubles;
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void sum(std::span<float>) override { FAIL("not used"); }
  void sum(std::span<double> values) override {
    for (std::size_t i = 0; i < values.size(); ++i) values[i] += other_doubles.at(i);
  }
  std::vector<std::uint64_t> all_gather(std::span<const std::uint64_t> values) override {
    std::vector<std::uint64_t> all(values.begin(), values.end());
    all.insert(all.end(), other_hashes.begin(), other_hashes.end());
    return all;
  }
  std::vector<std::string> gather_text(const std::string& text) override { return {text, other_text}; }
  void broadcast_text(std::string&) override {}
};

/// The dropout mask of x under a shard (or none), as 0/1 per element.
std::vector<int> mask_of(const Array& x, real p, std::uint64_t seed, std::size_t batch_axis,
                         const kernels::BatchShard* shard) {
  Rng rng(seed);
  std::optional<kernels::ScopedBatchShard> scope;
  if (shard) scope.emplace(*shard);
  const Variable y = dropout(Variable(x), p, true, rng, batch_axis);
  std::vector<int> mask;
  for (const real value : y.value()) mask.push_back(value != 0);
  return mask;
}

}  // namespace

TEST_CASE("dropout under a batch shard draws the whole batch's mask at the shard's rows") {
  // [B, T, D] batch-first, [T, B, D] time-major (batch axis 1) and [B·H, T, S] (B·H rows).
  struct Layout {
    Shape shape;
    std::size_t batch_axis, rows_per_example;
  };
  const std::size_t batch = 5;
  for (const Layout& layout : {Layout{{batch, 3, 7}, 0, 1}, Layout{{4, batch, 3}, 1, 1}, Layout{{batch * 2, 3, 3}, 0, 2}}) {
    CAPTURE(to_string(layout.shape));
    const Array ones = Array(xt::ones<real>(layout.shape));
    const std::vector<int> whole = mask_of(ones, real(0.5), 17, layout.batch_axis, nullptr);
    // Shards {0..1}, {2..4} and a lone middle row: each must equal the whole mask's rows.
    for (const auto& [first, last] : std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}, {2, 5}, {3, 4}}) {
      Shape local = layout.shape;
      local[layout.batch_axis] = (last - first) * layout.rows_per_example;
      const Array local_ones = Array(xt::ones<real>(local));
      const kernels::BatchShard shard{.first_row = first, .rows = last - first, .global_rows = batch};
      const std::vector<int> part = mask_of(local_ones, real(0.5), 17, layout.batch_axis, &shard);
      std::size_t outer = 1;
      for (std::size_t axis = 0; axis < layout.batch_axis; ++axis) outer *= layout.shape[axis];
      const std::size_t row = whole.size() / (outer * batch);  // elements per example per outer index
      std::vector<int> expected;
      for (std::size_t o = 0; o < outer; ++o)
        for (std::size_t b = first; b < last; ++b)
          for (std::size_t i = 0; i < row; ++i) expected.push_back(whole[(o * batch + b) * row + i]);
      CHECK(part == expected);
    }
  }
  // A whole-batch shard is exactly dropout_forward's mask (one process's), odd sizes included.
  const Array odd = Array(xt::ones<real>(Shape{3, 5, 7}));
  const kernels::BatchShard all_rows{.first_row = 0, .rows = 3, .global_rows = 3};
  CHECK(mask_of(odd, real(0.3), 4, 0, &all_rows) == mask_of(odd, real(0.3), 4, 0, nullptr));
}

TEST_CASE("dropout under a batch shard names a tensor whose batch axis does not hold the rows") {
  Rng rng(1);
  const kernels::BatchShard shard{.first_row = 0, .rows = 2, .global_rows = 4};
  const kernels::ScopedBatchShard scope(shard);
  CHECK_THROWS_WITH_AS(dropout(Variable(Array(xt::ones<real>(Shape{3, 4}))), real(0.5), true, rng),
                       doctest::Contains("axis 0 of [3, 4] must hold the batch"), ShapeError);
  CHECK_THROWS_WITH_AS(kernels::ScopedBatchShard{shard}, doctest::Contains("do not nest"), Error);
}

TEST_CASE("the start-up handshake names every field that differs, and passes equal identities") {
  RankZeroOfTwo world;
  const nlohmann::json identity = {{"qkv", build_identity()}, {"options", {{"lr", 0.001}, {"batch_size", 32}}}};
  world.other_text = identity.dump();
  CHECK_NOTHROW(check_same_on_every_rank(world, identity));
  nlohmann::json other = identity;
  other["options"]["lr"] = 0.002;
  other["qkv"] = "qkv 0.0.9 (git 0000000, float32)";
  world.other_text = other.dump();
  CHECK_THROWS_WITH_AS(check_same_on_every_rank(world, identity),
                       doctest::Contains("options.lr: 0.002 on rank 1, 0.001 on rank 0"), Error);
  CHECK_THROWS_WITH_AS(check_same_on_every_rank(world, identity),
                       doctest::Contains("qkv: \"qkv 0.0.9 (git 0000000, float32)\" on rank 1"), Error);
  CHECK_NOTHROW(check_same_on_every_rank(*single_process(), other));
}

TEST_CASE("the parameter hash check names the first tensor that differs and the rank") {
  const Variable a(Array(xt::ones<real>(Shape{2, 3})), true), b(Array(xt::zeros<real>(Shape{4})), true);
  const std::vector<NamedVariable> parameters{{"encoder.weight", a}, {"decoder.bias", b}};
  RankZeroOfTwo world;
  world.other_hashes = {hash_of(a.value()), hash_of(b.value())};
  CHECK_NOTHROW(check_parameters_agree(world, parameters, "step 7"));
  Array nudged = b.value();
  nudged(2) = real(1e-30);
  world.other_hashes = {hash_of(a.value()), hash_of(nudged)};
  CHECK_THROWS_WITH_AS(check_parameters_agree(world, parameters, "step 7"),
                       doctest::Contains("step 7: the parameters differ between the processes: 'decoder.bias' "
                                         "(the first tensor that differs) on rank 1"),
                       Error);
}

TEST_CASE("the gradient all-reduce sums weighted gradients and keeps a parameter no rank touched without one") {
  Variable a(Array(xt::zeros<real>(Shape{2, 3})), true), b(Array(xt::zeros<real>(Shape{4})), true),
      c(Array(xt::zeros<real>(Shape{1})), true);
  a.add_grad(Array(xt::arange<real>(6).reshape({2, 3})));  // this rank's gradient of a; none of b, c
  GradientAllReduce all_reduce({a, b, c});
  CHECK(all_reduce.bytes_per_step() == (6 + 4 + 1 + 3) * sizeof(real));
  RankZeroOfTwo world;
  // The other rank's buffer: its scaled gradients of a and b, then the presence flags (a, b, c).
  world.other_doubles = {1, 1, 1, 1, 1, 1, 10, 11, 12, 13, 0, 1, 1, 0};
  all_reduce.sum(world, real(0.5));
  CHECK(a.grad() == Array(Array(0.5 * xt::arange<real>(6).reshape({2, 3})) + 1.0));
  CHECK(b.has_grad());
  CHECK(b.grad() == Array({10, 11, 12, 13}));
  CHECK_FALSE(c.has_grad());
}
