#include "fastsoftmax/simd_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTSOFTMAX_SIMD_X86 1
#include <immintrin.h>
#define FASTSOFTMAX_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTSOFTMAX_SIMD_X86 0
#endif

namespace fastsoftmax::simd {

#if FASTSOFTMAX_SIMD_X86

bool avx2_fma_available() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

namespace {

constexpr int kMR = 6;   // rows of C per register tile
constexpr int kNR = 16;  // columns of C per register tile (two AVX registers)
static_assert(kNR == kPanel, "a register tile spans one panel");

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-6 polynomial (Cephes
// expf coefficients), 2^n through the exponent bits. Results below FLT_MIN flush to 0; NaN stays.
FASTSOFTMAX_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 nan_mask = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  xc = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  xc = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), xc);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, xc, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(xc, xc), _mm256_add_ps(xc, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  e = _mm256_slli_epi32(e, 23);
  __m256 r = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  r = _mm256_andnot_ps(tiny, r);
  return _mm256_blendv_ps(r, x, nan_mask);
}

// C tile (MR x 16) = or += sum_k A(i, k) B(k, 0:16). Named accumulators (not an array) so that
// the compiler keeps all 2 * MR of them in registers.
#define FASTSOFTMAX_TILE_FMA(i)                                     \
  if constexpr (MR > i) {                                           \
    const __m256 ai = _mm256_broadcast_ss(ak + i * a_rs);           \
    c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);                     \
    c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);                     \
  }
#define FASTSOFTMAX_TILE_STORE(i)                                   \
  if constexpr (MR > i) {                                           \
    float* ci = c + i * c_rs;                                       \
    if (accumulate) {                                               \
      c##i##0 = _mm256_add_ps(c##i##0, _mm256_loadu_ps(ci));        \
      c##i##1 = _mm256_add_ps(c##i##1, _mm256_loadu_ps(ci + 8));    \
    }                                                               \
    _mm256_storeu_ps(ci, c##i##0);                                  \
    _mm256_storeu_ps(ci + 8, c##i##1);                              \
  }

template <int MR>
FASTSOFTMAX_AVX2 void tile(index_t K, const float* a, index_t a_rs, index_t a_cs, index_t a_ps,
                           const float* b, index_t b_rs, float* c, index_t c_rs, bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (index_t kp = 0; kp < K; kp += kPanel) {
    const float* ap = a + (kp / kPanel) * a_ps;
    const float* bp = b + kp * b_rs;
    const index_t kn = std::min<index_t>(kPanel, K - kp);
    for (index_t k = 0; k < kn; ++k) {
      const __m256 b0 = _mm256_loadu_ps(bp + k * b_rs);
      const __m256 b1 = _mm256_loadu_ps(bp + k * b_rs + 8);
      const float* ak = ap + k * a_cs;
      FASTSOFTMAX_TILE_FMA(0)
      FASTSOFTMAX_TILE_FMA(1)
      FASTSOFTMAX_TILE_FMA(2)
      FASTSOFTMAX_TILE_FMA(3)
      FASTSOFTMAX_TILE_FMA(4)
      FASTSOFTMAX_TILE_FMA(5)
    }
  }
  FASTSOFTMAX_TILE_STORE(0)
  FASTSOFTMAX_TILE_STORE(1)
  FASTSOFTMAX_TILE_STORE(2)
  FASTSOFTMAX_TILE_STORE(3)
  FASTSOFTMAX_TILE_STORE(4)
  FASTSOFTMAX_TILE_STORE(5)
}
#undef FASTSOFTMAX_TILE_FMA
#undef FASTSOFTMAX_TILE_STORE

using TileFn = void (*)(index_t, const float*, index_t, index_t, index_t, const float*, index_t,
                        float*, index_t, bool);
constexpr TileFn kTiles[kMR + 1] = {nullptr, &tile<1>, &tile<2>, &tile<3>,
                                    &tile<4>, &tile<5>, &tile<6>};

}  // namespace

void gemm(index_t M, index_t N, index_t K, const Operand& a, const Operand& b, const Output& c,
          bool accumulate) {
  // Column panels outside: the K x 16 panel of B stays in L1 while every row tile uses it.
  for (index_t l0 = 0; l0 < N; l0 += kNR) {
    const float* bp = b.data + (l0 / kPanel) * b.panel_stride;
    float* cp = c.data + (l0 / kPanel) * c.panel_stride;
    for (index_t i0 = 0; i0 < M; i0 += kMR) {
      const int mr = static_cast<int>(std::min<index_t>(kMR, M - i0));
      kTiles[mr](K, a.data + i0 * a.row_stride, a.row_stride, a.col_stride, a.panel_stride, bp,
                 b.row_stride, cp + i0 * c.row_stride, c.row_stride,
                 accumulate);
    }
  }
}

namespace {

FASTSOFTMAX_AVX2 void online_exp_block_avx2(float* x, index_t rows, index_t cols, index_t stride,
                                            float* m, float* s, float* alpha) {
  // Row by row (sequential memory); alpha holds the new column max until the third loop.
  std::copy_n(m, cols, alpha);
  for (index_t i = 0; i < rows; ++i) {
    const float* xi = x + i * stride;
    for (index_t l = 0; l < cols; l += 8) {
      _mm256_storeu_ps(alpha + l,
                       _mm256_max_ps(_mm256_loadu_ps(alpha + l), _mm256_loadu_ps(xi + l)));
    }
  }
  for (index_t l = 0; l < cols; l += 8) {
    const __m256 new_m = _mm256_loadu_ps(alpha + l);
    const __m256 a = exp8(_mm256_sub_ps(_mm256_loadu_ps(m + l), new_m));  // 0 when m = -inf
    _mm256_storeu_ps(s + l, _mm256_mul_ps(_mm256_loadu_ps(s + l), a));
    _mm256_storeu_ps(m + l, new_m);
    _mm256_storeu_ps(alpha + l, a);
  }
  for (index_t i = 0; i < rows; ++i) {
    float* xi = x + i * stride;
    for (index_t l = 0; l < cols; l += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(xi + l), _mm256_loadu_ps(m + l)));
      _mm256_storeu_ps(xi + l, e);
      _mm256_storeu_ps(s + l, _mm256_add_ps(_mm256_loadu_ps(s + l), e));
    }
  }
}

FASTSOFTMAX_AVX2 void exp_shifted_avx2(float* x, index_t rows, index_t cols, index_t stride,
                                       const float* shift) {
  for (index_t i = 0; i < rows; ++i) {
    float* xi = x + i * stride;
    for (index_t l = 0; l < cols; l += 8) {
      _mm256_storeu_ps(xi + l,
                       exp8(_mm256_sub_ps(_mm256_loadu_ps(xi + l), _mm256_loadu_ps(shift + l))));
    }
  }
}

FASTSOFTMAX_AVX2 void scale_columns_avx2(float* x, index_t rows, index_t cols, index_t stride,
                                         const float* f) {
  for (index_t i = 0; i < rows; ++i) {
    float* xi = x + i * stride;
    for (index_t l = 0; l < cols; l += 8) {
      _mm256_storeu_ps(xi + l, _mm256_mul_ps(_mm256_loadu_ps(xi + l), _mm256_loadu_ps(f + l)));
    }
  }
}

FASTSOFTMAX_AVX2 void add_row_values_avx2(float* x, index_t rows, index_t cols, index_t stride,
                                          const float* v) {
  for (index_t i = 0; i < rows; ++i) {
    float* xi = x + i * stride;
    const __m256 vi = _mm256_set1_ps(v[i]);
    for (index_t l = 0; l < cols; l += 8) {
      _mm256_storeu_ps(xi + l, _mm256_add_ps(_mm256_loadu_ps(xi + l), vi));
    }
  }
}

FASTSOFTMAX_AVX2 void row_dots_avx2(const float* x, index_t rows, index_t cols, index_t stride,
                                    const float* f, float* out) {
  for (index_t i = 0; i < rows; ++i) {
    const float* xi = x + i * stride;
    __m256 acc = _mm256_setzero_ps();
    for (index_t l = 0; l < cols; l += 8) {
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(xi + l), _mm256_loadu_ps(f + l), acc);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc);
    out[i] += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
              ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  }
}

// out[0..4) += acc (subtract: -= acc).
FASTSOFTMAX_AVX2 inline void put_4(double* out, __m256d acc, bool subtract) {
  const __m256d old = _mm256_loadu_pd(out);
  _mm256_storeu_pd(out, subtract ? _mm256_sub_pd(old, acc) : _mm256_add_pd(old, acc));
}

// A (column-major, lda n) rows [i0, i0 + R), columns [j0, j0 + 4) += (subtract: -=) sum_{k < K}
// p[k * step + i] q[k * step + c], as R / 4 x 4 register tiles.
template <int R>
FASTSOFTMAX_AVX2 inline void rank_k_tile(double* a, index_t n, index_t i0, index_t j0,
                                         const double* p, const double* q, index_t step,
                                         index_t K, bool subtract) {
  static_assert(R == 4 || R == 8, "4 or 8 rows");
  // Named accumulators (an array was kept on the stack): column c, rows i0 + 4 v.
  __m256d a00 = _mm256_setzero_pd(), a10 = a00, a20 = a00, a30 = a00;
  __m256d a01 = a00, a11 = a00, a21 = a00, a31 = a00;
  for (index_t k = 0; k < K; ++k) {
    const double* pk = p + k * step + i0;
    const double* qk = q + k * step + j0;
    const __m256d l0 = _mm256_loadu_pd(pk);
    const __m256d b0 = _mm256_broadcast_sd(qk), b1 = _mm256_broadcast_sd(qk + 1);
    const __m256d b2 = _mm256_broadcast_sd(qk + 2), b3 = _mm256_broadcast_sd(qk + 3);
    a00 = _mm256_fmadd_pd(l0, b0, a00);
    a10 = _mm256_fmadd_pd(l0, b1, a10);
    a20 = _mm256_fmadd_pd(l0, b2, a20);
    a30 = _mm256_fmadd_pd(l0, b3, a30);
    if constexpr (R == 8) {
      const __m256d l1 = _mm256_loadu_pd(pk + 4);
      a01 = _mm256_fmadd_pd(l1, b0, a01);
      a11 = _mm256_fmadd_pd(l1, b1, a11);
      a21 = _mm256_fmadd_pd(l1, b2, a21);
      a31 = _mm256_fmadd_pd(l1, b3, a31);
    }
  }
  // Column c, rows i0 + 4 v of A (a plain function: a lambda would not inherit the target).
  double* col = a + j0 * n + i0;
  put_4(col, a00, subtract);
  put_4(col + n, a10, subtract);
  put_4(col + 2 * n, a20, subtract);
  put_4(col + 3 * n, a30, subtract);
  if constexpr (R == 8) {
    put_4(col + 4, a01, subtract);
    put_4(col + n + 4, a11, subtract);
    put_4(col + 2 * n + 4, a21, subtract);
    put_4(col + 3 * n + 4, a31, subtract);
  }
}

// Rows [i0, n) of the 4-column panel at j0: 8-row tiles, then a 4-row one (n - i0 is a
// multiple of 4).
FASTSOFTMAX_AVX2 inline void rank_k_panel(double* a, index_t n, index_t j0, const double* p,
                                          const double* q, index_t step, index_t K,
                                          bool subtract) {
  index_t i0 = j0;
  for (; i0 + 8 <= n; i0 += 8) rank_k_tile<8>(a, n, i0, j0, p, q, step, K, subtract);
  for (; i0 + 4 <= n; i0 += 4) rank_k_tile<4>(a, n, i0, j0, p, q, step, K, subtract);
}

FASTSOFTMAX_AVX2 bool cholesky_lower_avx2(double* a, index_t n) {
  for (index_t j0 = 0; j0 < n; j0 += 4) {
    // Update the panel's rows with every earlier column: A(i, c) -= sum_{k < j0} L(i, k) L(c, k)
    // (column k of L is a + k n)...
    rank_k_panel(a, n, j0, a, a, n, j0, true);
    // ...then factor it column by column.
    for (index_t c = j0; c < j0 + 4; ++c) {
      double* col = a + c * n;
      const double pivot = col[c];
      if (!(pivot > 0.0)) return false;  // also NaN
      const double d = std::sqrt(pivot);
      col[c] = d;
      const double inv = 1.0 / d;
      for (index_t i = c + 1; i < n; ++i) col[i] *= inv;
      for (index_t c2 = c + 1; c2 < j0 + 4; ++c2) {
        double* col2 = a + c2 * n;
        const double f = col[c2];
        for (index_t i = c2; i < n; ++i) col2[i] -= col[i] * f;
      }
    }
  }
  return true;
}

}  // namespace

void online_exp_block(float* x, index_t rows, index_t cols, index_t stride, float* m, float* s,
                      float* alpha) {
  online_exp_block_avx2(x, rows, cols, stride, m, s, alpha);
}
namespace {
// dst[j * 16 + i] = src[i * src_stride + j] for i < 8, j < len (len a multiple of 8): 8 x 8
// blocks transposed in registers (only moves: the values are copied exactly).
FASTSOFTMAX_AVX2 void transpose_8_rows_avx2(const float* src, index_t len, index_t src_stride,
                                            float* dst) {
  for (index_t j = 0; j < len; j += 8) {
    __m256 r0 = _mm256_loadu_ps(src + 0 * src_stride + j);
    __m256 r1 = _mm256_loadu_ps(src + 1 * src_stride + j);
    __m256 r2 = _mm256_loadu_ps(src + 2 * src_stride + j);
    __m256 r3 = _mm256_loadu_ps(src + 3 * src_stride + j);
    __m256 r4 = _mm256_loadu_ps(src + 4 * src_stride + j);
    __m256 r5 = _mm256_loadu_ps(src + 5 * src_stride + j);
    __m256 r6 = _mm256_loadu_ps(src + 6 * src_stride + j);
    __m256 r7 = _mm256_loadu_ps(src + 7 * src_stride + j);
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
    r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
    r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
    r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
    r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
    float* d = dst + j * kPanel;
    _mm256_storeu_ps(d + 0 * kPanel, r0);
    _mm256_storeu_ps(d + 1 * kPanel, r1);
    _mm256_storeu_ps(d + 2 * kPanel, r2);
    _mm256_storeu_ps(d + 3 * kPanel, r3);
    _mm256_storeu_ps(d + 4 * kPanel, r4);
    _mm256_storeu_ps(d + 5 * kPanel, r5);
    _mm256_storeu_ps(d + 6 * kPanel, r6);
    _mm256_storeu_ps(d + 7 * kPanel, r7);
  }
}
}  // namespace

bool transpose_8_rows(const float* src, index_t len, index_t src_stride, float* dst) {
  if (!avx2_fma_available()) return false;
  const index_t bulk = len - len % 8;
  transpose_8_rows_avx2(src, bulk, src_stride, dst);
  for (index_t j = bulk; j < len; ++j) {  // the last len % 8 columns, one by one
    for (index_t i = 0; i < 8; ++i) dst[j * kPanel + i] = src[i * src_stride + j];
  }
  return true;
}
void exp_shifted(float* x, index_t rows, index_t cols, index_t stride, const float* shift) {
  exp_shifted_avx2(x, rows, cols, stride, shift);
}
void scale_columns(float* x, index_t rows, index_t cols, index_t stride, const float* f) {
  scale_columns_avx2(x, rows, cols, stride, f);
}
void add_row_values(float* x, index_t rows, index_t cols, index_t stride, const float* v) {
  add_row_values_avx2(x, rows, cols, stride, v);
}
void row_dots(const float* x, index_t rows, index_t cols, index_t stride, const float* f,
              float* out) {
  row_dots_avx2(x, rows, cols, stride, f, out);
}
bool cholesky_lower(double* a, index_t n) { return cholesky_lower_avx2(a, n); }
void rank_k_update_lower(double* a, index_t n, const double* p, const double* q, index_t K) {
  for (index_t j0 = 0; j0 < n; j0 += 4) rank_k_panel(a, n, j0, p, q, n, K, false);
}

#else  // not x86: the callers never select these kernels.

bool avx2_fma_available() { return false; }
bool transpose_8_rows(const float*, index_t, index_t, float*) { return false; }
void gemm(index_t, index_t, index_t, const Operand&, const Operand&, const Output&, bool) {
  throw std::logic_error("simd::gemm: AVX2 kernels are not available on this platform");
}
void online_exp_block(float*, index_t, index_t, index_t, float*, float*, float*) {
  throw std::logic_error("simd kernels are not available on this platform");
}
void exp_shifted(float*, index_t, index_t, index_t, const float*) {
  throw std::logic_error("simd kernels are not available on this platform");
}
void scale_columns(float*, index_t, index_t, index_t, const float*) {
  throw std::logic_error("simd kernels are not available on this platform");
}
void add_row_values(float*, index_t, index_t, index_t, const float*) {
  throw std::logic_error("simd kernels are not available on this platform");
}
void row_dots(const float*, index_t, index_t, index_t, const float*, float*) {
  throw std::logic_error("simd kernels are not available on this platform");
}
bool cholesky_lower(double*, index_t) {
  throw std::logic_error("simd kernels are not available on this platform");
}
void rank_k_update_lower(double*, index_t, const double*, const double*, index_t) {
  throw std::logic_error("simd kernels are not available on this platform");
}
#endif

void pack_panels(const float* src, index_t rows, index_t cols, index_t row_stride,
                 index_t col_stride, float* dst) {
  for (index_t p = 0; p < cols / kPanel; ++p) {
    float* out = dst + p * rows * kPanel;
    const float* in = src + p * kPanel * col_stride;
    if (col_stride == 1) {  // each row's 16 values are contiguous: one block copy per row
      // memcpy of a constant 64 bytes is inlined (std::copy_n became a memmove call per row).
      for (index_t r = 0; r < rows; ++r) {
        std::memcpy(out + r * kPanel, in + r * row_stride, kPanel * sizeof(float));
      }
    } else if (row_stride == 1) {  // a transpose: the panel's 16 source columns are rows
      pack_rows_transposed(in, kPanel, rows, col_stride, out);
    } else {
      for (index_t r = 0; r < rows; ++r) {
        for (index_t l = 0; l < kPanel; ++l) {
          out[r * kPanel + l] = in[r * row_stride + l * col_stride];
        }
      }
    }
  }
}

void pack_rows_transposed(const float* src, index_t n, index_t len, index_t src_stride,
                          float* dst) {
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    if (!transpose_8_rows(src + i * src_stride, len, src_stride, dst + i)) break;
  }
  for (; i < n; ++i) {
    const float* row = src + i * src_stride;
    for (index_t j = 0; j < len; ++j) dst[j * kPanel + i] = row[j];
  }
}

}  // namespace fastsoftmax::simd
