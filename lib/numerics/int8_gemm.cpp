#include "lib/numerics/int8_gemm.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "lib/numerics/error.hpp"
#include "lib/numerics/parallel.hpp"
#include "lib/numerics/shape.hpp"
#include "lib/numerics/simd.hpp"

// The VNNI kernel is compiled with a target attribute and chosen at run time (cpuid); the
// portable one is compiled for x86-64-v3 and the baseline (QKV_SIMD_CLONES). Both compute the
// same exact integers. Off outside x86-64 GCC/clang, under sanitizers and with QKV_NO_SIMD_CLONES.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(QKV_NO_SIMD_CLONES) && !defined(QKV_SANITIZED_BUILD)
#define QKV_INT8_VNNI 1
#else
#define QKV_INT8_VNNI 0
#endif

namespace qkv::int8 {

namespace {

constexpr float kLevels = 127;  // symmetric: [-127, 127]

/// Σ_k b[j, k] for each row j of b [n, k].
std::vector<std::int32_t> row_sums(const std::int8_t* b, std::size_t n, std::size_t k) {
  std::vector<std::int32_t> sums(n);
  for (std::size_t j = 0; j < n; ++j) {
    std::int32_t sum = 0;
    for (std::size_t p = 0; p < k; ++p) sum += b[j * k + p];
    sums[j] = sum;
  }
  return sums;
}

/// max |row| and whether every value is finite, in one pass GCC vectorises (x·0 is 0 for a
/// finite x and NaN otherwise, so one sum tells).
QKV_SIMD_CLONES real max_abs(const real* row, std::size_t n, bool& finite) {
  real largest = 0, poison = 0;
  for (std::size_t k = 0; k < n; ++k) {
    largest = std::max(largest, std::abs(row[k]));
    poison += row[k] * real(0);
  }
  finite = poison == real(0);
  return largest;
}

QKV_SIMD_CLONES void round_row(const real* row, std::size_t n, real inverse, std::int8_t* out) {
  // |row[k]| · inverse ≤ 127 up to one rounding of the product; the clamp keeps it in range.
  for (std::size_t k = 0; k < n; ++k)
    out[k] = static_cast<std::int8_t>(std::clamp(std::nearbyint(row[k] * inverse), real(-kLevels), real(kLevels)));
}

/// Rows of b per cache block: each block (≤ 16 KB of int8) stays in L1 while every row of a
/// meets it.
std::size_t rows_per_block(std::size_t k) { return std::max<std::size_t>(1, 16384 / std::max<std::size_t>(1, k)); }

/// Σ_p a[p] · b[p] in int32: GCC 12 vectorises it by sign-extending the bytes (vpmovsxbw / vpmovsxwd)
/// and multiplying in int32 lanes — not the pmaddwd form a standalone copy of this loop gets;
/// the VNNI kernel is the fast one, this the portable fallback.
inline std::int32_t dot_s8(const std::int8_t* a, const std::int8_t* b, std::size_t k) {
  std::int32_t sum = 0;
  for (std::size_t p = 0; p < k; ++p) sum += std::int16_t(a[p]) * std::int16_t(b[p]);
  return sum;
}

/// The portable kernel: c[i, j] for every row i of a and j in [j_begin, j_end).
QKV_SIMD_CLONES void gemm_block_portable(const std::int8_t* a, const std::int8_t* b, std::int32_t* c, std::size_t m,
                                         std::size_t n, std::size_t k, std::size_t j_begin, std::size_t j_end) {
  const std::size_t block = rows_per_block(k);
  for (std::size_t j0 = j_begin; j0 < j_end; j0 += block) {
    const std::size_t j1 = std::min(j_end, j0 + block);
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = j0; j < j1; ++j) c[i * n + j] = dot_s8(a + i * k, b + j * k, k);
  }
}

#if QKV_INT8_VNNI
#define QKV_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
/// Σ_p ua[p] · b[p] with ua unsigned: the form AVX-512 VNNI's vpdpbusd multiplies (u8 x s8,
/// four products summed into each int32 lane, not saturating), which GCC emits for this loop.
QKV_VNNI_TARGET inline std::int32_t dot_u8s8(const std::uint8_t* ua, const std::int8_t* b, std::size_t k) {
  std::int32_t sum = 0;
  for (std::size_t p = 0; p < k; ++p) sum += std::int32_t(ua[p]) * std::int32_t(b[p]);
  return sum;
}

/// The VNNI kernel: with ua = a + 128 (so every value is in [0, 255]),
///   Σ a·b = Σ ua·b − 128 · Σ b,
/// exact in int32, with Σ b per row of b (b_row_sums) computed once when the weight is quantized.
QKV_VNNI_TARGET void gemm_block_vnni(const std::uint8_t* ua, const std::int8_t* b, const std::int32_t* b_row_sums,
                                     std::int32_t* c, std::size_t m, std::size_t n, std::size_t k, std::size_t j_begin,
                                     std::size_t j_end) {
  const std::size_t block = rows_per_block(k);
  for (std::size_t j0 = j_begin; j0 < j_end; j0 += block) {
    const std::size_t j1 = std::min(j_end, j0 + block);
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = j0; j < j1; ++j) c[i * n + j] = dot_u8s8(ua + i * k, b + j * k, k) - 128 * b_row_sums[j];
  }
}
#endif

}  // namespace

float quantize_row(const real* row, std::size_t n, std::int8_t* out, const char* what) {
  bool finite = true;
  const real largest = max_abs(row, n, finite);
  if (!finite) throw Error(std::string(what) + ": cannot quantize to int8 a row holding a NaN or an infinity");
  if (largest == real(0)) {
    std::fill(out, out + n, std::int8_t{0});
    return 0;
  }
  const real scale = largest / real(kLevels);
  round_row(row, n, real(1) / scale, out);
  return static_cast<float>(scale);
}

QuantizedMatrix quantize_rows(const Array& matrix, const char* what) {
  const Shape shape = shape_of(matrix);
  check_shape(shape.size() == 2, what, "int8 quantization takes a matrix [out, in], got " + to_string(shape));
  QuantizedMatrix quantized;
  quantized.rows = shape[0];
  quantized.cols = shape[1];
  quantized.values.resize(quantized.rows * quantized.cols);
  quantized.scales.resize(quantized.rows);
  const real* data = matrix.data();
  for (std::size_t r = 0; r < quantized.rows; ++r)
    quantized.scales[r] =
        quantize_row(data + r * quantized.cols, quantized.cols, quantized.values.data() + r * quantized.cols, what);
  quantized.row_sums = row_sums(quantized.values.data(), quantized.rows, quantized.cols);
  return quantized;
}

Array dequantize(const QuantizedMatrix& matrix) {
  Array out = Array::from_shape({matrix.rows, matrix.cols});  // [rows, cols]
  for (std::size_t r = 0; r < matrix.rows; ++r)
    for (std::size_t c = 0; c < matrix.cols; ++c)
      out.data()[r * matrix.cols + c] = real(matrix.values[r * matrix.cols + c]) * real(matrix.scales[r]);
  return out;
}

bool vnni_available() {
#if QKV_INT8_VNNI
  static const bool available = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
#else
  return false;
#endif
}

void gemm_s8s8s32(const std::int8_t* a, const std::int8_t* b, const std::int32_t* b_row_sums, std::int32_t* c,
                  std::size_t m, std::size_t n, std::size_t k, Int8Kernel kernel) {
  // Chunks of b's rows, each at least ~64k multiply-adds: below that a wake-up costs more.
  const std::size_t min_rows = std::max<std::size_t>(1, 65536 / std::max<std::size_t>(1, m * k));
  if (kernel == Int8Kernel::vnni && !vnni_available())
    throw Error("gemm_s8s8s32: the AVX-512 VNNI kernel was asked for, but this CPU (or build) has none");
#if QKV_INT8_VNNI
  if (kernel != Int8Kernel::portable && vnni_available()) {
    std::vector<std::int32_t> computed_sums;
    if (!b_row_sums) {
      computed_sums = row_sums(b, n, k);
      b_row_sums = computed_sums.data();
    }
    std::vector<std::uint8_t> ua(m * k);  // a + 128, in [0, 255]
    for (std::size_t i = 0; i < m * k; ++i) ua[i] = static_cast<std::uint8_t>(int(a[i]) + 128);
    parallel::for_chunks(n, min_rows, [&](std::size_t begin, std::size_t end) {
      gemm_block_vnni(ua.data(), b, b_row_sums, c, m, n, k, begin, end);
    });
    return;
  }
#endif
  (void)b_row_sums;
  parallel::for_chunks(n, min_rows,
                       [&](std::size_t begin, std::size_t end) { gemm_block_portable(a, b, c, m, n, k, begin, end); });
}

Array linear(const Array& x, const QuantizedMatrix& weight, std::size_t row_begin, std::size_t row_end,
             const real* bias, const char* what) {
  const Shape shape = shape_of(x);
  if (shape.empty() || shape.back() != weight.cols)
    check_shape(false, what, [&] {
      return "int8 linear: input " + to_string(shape) + " must end in " + std::to_string(weight.cols) + " features";
    });
  check_shape(row_begin < row_end && row_end <= weight.rows, what, [&] {
    return "int8 linear: rows [" + std::to_string(row_begin) + ", " + std::to_string(row_end) +
           ") are not inside the weight's " + std::to_string(weight.rows);
  });
  const std::size_t k = weight.cols, n = row_end - row_begin;
  const std::size_t m = numel(shape) / k;
  Shape out_shape = shape;
  out_shape.back() = n;
  Array y = Array::from_shape(out_shape);  // [..., n]
  // A block of rows at a time, so that the int8 rows and int32 sums stay small (a teacher-forced
  // pass through the vocabulary projection has thousands of rows) and in cache.
  constexpr std::size_t kRowsPerBlock = 64;
  std::vector<std::int8_t> qx(std::min(m, kRowsPerBlock) * k);
  std::vector<float> x_scales(std::min(m, kRowsPerBlock));
  std::vector<std::int32_t> sums(std::min(m, kRowsPerBlock) * n);  // [rows, n]
  const float* w_scales = weight.scales.data() + row_begin;
  for (std::size_t i0 = 0; i0 < m; i0 += kRowsPerBlock) {
    const std::size_t rows = std::min(kRowsPerBlock, m - i0);
    const real* xd = x.data() + i0 * k;
    for (std::size_t i = 0; i < rows; ++i) x_scales[i] = quantize_row(xd + i * k, k, qx.data() + i * k, what);
    gemm_s8s8s32(qx.data(), weight.values.data() + row_begin * k, weight.row_sums.data() + row_begin, sums.data(),
                 rows, n, k);
    real* yd = y.data() + i0 * n;
    for (std::size_t i = 0; i < rows; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        const real value = real(sums[i * n + j]) * (real(x_scales[i]) * real(w_scales[j]));
        yd[i * n + j] = bias ? value + bias[row_begin + j] : value;
      }
  }
  return y;
}

}  // namespace qkv::int8
