// Trains the gated attention layer briefly (float32, Adam) on a task only attention solves:
// every position must output the mean of the sequence's vectors. Prints the loss as it falls
// and exits 1 unless it fell at least tenfold.
#include <cstdio>

#include "autograd/ops.hpp"
#include "gated_attention.hpp"
#include "optim/adam.hpp"

int main() {
  static_assert(sizeof(qkv::real) == 4, "the training build links qkv::qkv (float32)");
  const std::size_t batch = 16, length = 5, d_model = 8, steps = 300;
  qkv::Rng rng(0);
  custom::GatedSelfAttention layer(d_model, rng);
  qkv::Adam optimizer(layer.named_parameters(), {.lr = 1e-2});

  double first = 0, last = 0;
  for (std::size_t step = 1; step <= steps; ++step) {
    const qkv::Variable x(qkv::normal({batch, length, d_model}, 0, 1, rng));   // [B, T, D]
    const qkv::Variable target = qkv::expand(qkv::mean(x, {1}, true), x.shape());  // [B, T, D]
    const qkv::Variable error = layer.forward(x) - target;
    qkv::Variable loss = qkv::mean(error * error);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    if (step == 1) first = loss.item();
    last = loss.item();
    if (step == 1 || step % 50 == 0) std::printf("step %3zu  loss %.5f\n", step, last);
  }
  const bool learned = last < first / 10;
  std::printf("gated attention %s: loss %.5f -> %.5f\n", learned ? "learned" : "did NOT learn", first, last);
  return learned ? 0 : 1;
}
