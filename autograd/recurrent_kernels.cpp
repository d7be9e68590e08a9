#include "autograd/recurrent_kernels.hpp"

#include <algorithm>
#include <vector>

#include "lib/numerics/simd.hpp"
#include "lib/numerics/vector_math.hpp"

namespace qkv::kernels {

namespace {
using vector_math::sigmoid_of;
using vector_math::tanh_of;
}  // namespace

// ---- additive attention scores -------------------------------------------------------------

namespace {

/// Σ x[a] · y[a] over n elements, summed in `lanes` interleaved partial sums: a plain running
/// sum is a chain the compiler may not reorder (no -ffast-math), so it would stay scalar; fixed
/// partial sums vectorise, and give the same result in every SIMD clone. The partial sums are
/// then added pairwise (3 dependent adds, not 8: this runs once per short row).
inline real dot_in_lanes(const real* __restrict x, const real* __restrict y, std::size_t n) {
  constexpr std::size_t lanes = 8;
  real partial[lanes] = {};
  std::size_t a = 0;
  for (; a + lanes <= n; a += lanes)
    for (std::size_t l = 0; l < lanes; ++l) partial[l] += x[a + l] * y[a + l];
  for (std::size_t l = 0; a < n; ++a, ++l) partial[l] += x[a] * y[a];  // the last n % lanes
  for (std::size_t width = lanes / 2; width > 0; width /= 2)
    for (std::size_t l = 0; l < width; ++l) partial[l] += partial[l + width];
  return partial[0];
}
}  // namespace

QKV_SIMD_CLONES
void additive_scores_forward(const real* queries, const real* keys, const std::int64_t* key_rows, const real* v,
                             std::size_t batch, std::size_t query_count, std::size_t key_count, std::size_t hidden,
                             real* features, real* scores) {
  std::vector<real> feature_row(features ? 0 : hidden);  // the one row reused when none are kept [A]
  for (std::size_t b = 0; b < batch; ++b) {
    const std::size_t key_row = key_rows ? static_cast<std::size_t>(key_rows[b]) : b;
    for (std::size_t i = 0; i < query_count; ++i) {
      const real* __restrict q = queries + (b * query_count + i) * hidden;  // [A]
      for (std::size_t j = 0; j < key_count; ++j) {
        const real* __restrict k = keys + (key_row * key_count + j) * hidden;  // [A]
        const std::size_t row = (b * query_count + i) * key_count + j;
        real* __restrict f = features ? features + row * hidden : feature_row.data();  // [A]
        for (std::size_t a = 0; a < hidden; ++a) f[a] = tanh_of(q[a] + k[a]);
        scores[row] = dot_in_lanes(v, f, hidden);
      }
    }
  }
}

QKV_SIMD_CLONES
void additive_scores_backward(const real* grad_scores, const real* features, const std::int64_t* key_rows,
                              const real* v, std::size_t batch, std::size_t query_count, std::size_t key_count,
                              std::size_t hidden, real* grad_queries, real* grad_keys, real* grad_v) {
  std::vector<real> d(hidden);  // grad · v ⊙ (1 - f²) of one (b, i, j)
  for (std::size_t b = 0; b < batch; ++b) {
    const std::size_t key_row = key_rows ? static_cast<std::size_t>(key_rows[b]) : b;
    for (std::size_t i = 0; i < query_count; ++i)
      for (std::size_t j = 0; j < key_count; ++j) {
        const std::size_t row = (b * query_count + i) * key_count + j;
        const real g = grad_scores[row];
        const real* __restrict f = features + row * hidden;
        if (grad_v)
          for (std::size_t a = 0; a < hidden; ++a) grad_v[a] += g * f[a];
        real* __restrict dd = d.data();
        for (std::size_t a = 0; a < hidden; ++a) dd[a] = g * v[a] * (real(1) - f[a] * f[a]);
        if (grad_queries) {
          real* dq = grad_queries + (b * query_count + i) * hidden;
          for (std::size_t a = 0; a < hidden; ++a) dq[a] += dd[a];
        }
        if (grad_keys) {
          real* dk = grad_keys + (key_row * key_count + j) * hidden;
          for (std::size_t a = 0; a < hidden; ++a) dk[a] += dd[a];
        }
      }
  }
}

// ---- GRU cell ------------------------------------------------------------------------------

QKV_SIMD_CLONES
void gru_cell_forward(const real* input_gates, const real* extra_input_gates, const real* hidden_gates, const real* h,
                      std::size_t batch, std::size_t hidden, real* h_next, real* saved) {
  std::vector<real> summed(extra_input_gates ? 3 * hidden : 0);  // input + extra of one row [3H]
  // One simple loop per gate, so that each vectorises.
  for (std::size_t b = 0; b < batch; ++b) {
    const real* input_row = input_gates + b * 3 * hidden;
    if (extra_input_gates) {
      const real* __restrict given = input_row;
      const real* __restrict extra = extra_input_gates + b * 3 * hidden;
      real* __restrict sum = summed.data();
      for (std::size_t j = 0; j < 3 * hidden; ++j) sum[j] = given[j] + extra[j];
      input_row = sum;
    }
    const real* __restrict xi = input_row;                      // [3H]: i_r, i_z, i_n
    const real* __restrict hi = hidden_gates + b * 3 * hidden;  // [3H]: h_r, h_z, h_n
    const real* __restrict hb = h + b * hidden;                 // [H]
    real* __restrict r = saved + b * 3 * hidden;                // saved [3H]: r, z, n
    real* __restrict z = r + hidden;
    real* __restrict n = z + hidden;
    real* __restrict out = h_next + b * hidden;
    for (std::size_t j = 0; j < hidden; ++j) r[j] = sigmoid_of(xi[j] + hi[j]);
    for (std::size_t j = 0; j < hidden; ++j) z[j] = sigmoid_of(xi[hidden + j] + hi[hidden + j]);
    for (std::size_t j = 0; j < hidden; ++j) n[j] = tanh_of(xi[2 * hidden + j] + r[j] * hi[2 * hidden + j]);
    for (std::size_t j = 0; j < hidden; ++j) out[j] = n[j] + z[j] * (hb[j] - n[j]);
  }
}

namespace {
/// out[j] (+)= values[j] for j < n: added, or written over a fresh buffer.
inline void put(const GradientOut& out, std::size_t offset, const real* __restrict values, std::size_t n) {
  real* __restrict to = out.data + offset;
  if (out.accumulate)
    for (std::size_t j = 0; j < n; ++j) to[j] += values[j];
  else
    std::copy_n(values, n, to);
}
}  // namespace

QKV_SIMD_CLONES
void gru_cell_backward(const real* grad_h_next, const real* hidden_gates, const real* h, const real* saved,
                       std::size_t batch, std::size_t hidden, GradientOut grad_input_gates,
                       GradientOut grad_extra_input_gates, GradientOut grad_hidden_gates, GradientOut grad_h) {
  std::vector<real> scratch(5 * hidden);
  real* __restrict pre = scratch.data();               // [3H] d(i_r + h_r), d(i_z + h_z), d(i_n + r h_n)
  real* __restrict dr = pre;
  real* __restrict dz = dr + hidden;
  real* __restrict dn = dz + hidden;
  real* __restrict dhn = pre + 3 * hidden;             // [H] d(h_n) = d(i_n + r h_n) ⊙ r
  real* __restrict dh = dhn + hidden;                  // [H] d(h) through h' directly
  for (std::size_t b = 0; b < batch; ++b) {
    const real* __restrict g = grad_h_next + b * hidden;
    const real* __restrict hi = hidden_gates + b * 3 * hidden;
    const real* __restrict hb = h + b * hidden;
    const real* __restrict r = saved + b * 3 * hidden;
    const real* __restrict z = r + hidden;
    const real* __restrict n = z + hidden;
    // h' = n + z (h - n): through n with weight 1 - z, through z with h - n, through h with z.
    for (std::size_t j = 0; j < hidden; ++j) dn[j] = g[j] * (real(1) - z[j]) * (real(1) - n[j] * n[j]);
    for (std::size_t j = 0; j < hidden; ++j) dz[j] = g[j] * (hb[j] - n[j]) * z[j] * (real(1) - z[j]);
    for (std::size_t j = 0; j < hidden; ++j) dr[j] = dn[j] * hi[2 * hidden + j] * r[j] * (real(1) - r[j]);
    if (grad_input_gates.data) put(grad_input_gates, b * 3 * hidden, pre, 3 * hidden);
    if (grad_extra_input_gates.data) put(grad_extra_input_gates, b * 3 * hidden, pre, 3 * hidden);
    if (grad_hidden_gates.data) {
      for (std::size_t j = 0; j < hidden; ++j) dhn[j] = dn[j] * r[j];
      put(grad_hidden_gates, b * 3 * hidden, pre, 2 * hidden);
      put(grad_hidden_gates, b * 3 * hidden + 2 * hidden, dhn, hidden);
    }
    if (grad_h.data) {
      for (std::size_t j = 0; j < hidden; ++j) dh[j] = g[j] * z[j];
      put(grad_h, b * hidden, dh, hidden);
    }
  }
}

// ---- attention context ------------------------------------------------------------------------

QKV_SIMD_CLONES
void attention_context_forward(const real* weights, const real* values, const std::int64_t* value_rows,
                               std::size_t batch, std::size_t query_count, std::size_t key_count,
                               std::size_t value_size, real* output) {
  for (std::size_t b = 0; b < batch; ++b) {
    const std::size_t value_row = value_rows ? static_cast<std::size_t>(value_rows[b]) : b;
    for (std::size_t i = 0; i < query_count; ++i) {
      const real* w = weights + (b * query_count + i) * key_count;  // [Tk]
      real* __restrict out = output + (b * query_count + i) * value_size;  // [dv]
      std::fill_n(out, value_size, real(0));
      for (std::size_t j = 0; j < key_count; ++j) {
        const real weight = w[j];
        const real* __restrict value = values + (value_row * key_count + j) * value_size;  // [dv]
        for (std::size_t d = 0; d < value_size; ++d) out[d] += weight * value[d];
      }
    }
  }
}

QKV_SIMD_CLONES
void attention_context_backward(const real* grad_output, const real* weights, const real* values,
                                const std::int64_t* value_rows, std::size_t batch, std::size_t query_count,
                                std::size_t key_count, std::size_t value_size, real* grad_weights,
                                real* grad_values) {
  for (std::size_t b = 0; b < batch; ++b) {
    const std::size_t value_row = value_rows ? static_cast<std::size_t>(value_rows[b]) : b;
    for (std::size_t i = 0; i < query_count; ++i) {
      const std::size_t row = b * query_count + i;
      const real* __restrict g = grad_output + row * value_size;  // [dv]
      for (std::size_t j = 0; j < key_count; ++j) {
        const std::size_t key = value_row * key_count + j;
        if (grad_weights) grad_weights[row * key_count + j] += dot_in_lanes(g, values + key * value_size, value_size);
        if (grad_values) {
          const real weight = weights[row * key_count + j];
          real* __restrict dv = grad_values + key * value_size;  // [dv]
          for (std::size_t d = 0; d < value_size; ++d) dv[d] += weight * g[d];
        }
      }
    }
  }
}

}  // namespace qkv::kernels
