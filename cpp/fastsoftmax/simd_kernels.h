#pragma once
// Hand-written AVX2/FMA kernels for the full-softmax loss (softmax_loss.cpp): a register-tiled
// GEMM whose left operand is read through strides (so the three B x n x d products of the loss
// need no packing beyond one d x B transpose of psi per batch), and the column-wise operations of
// an online log-sum-exp. Every function here may be called only when avx2_fma_available() is true
// (they are compiled for AVX2/FMA whatever the build's -march, and selected at run time).
//
// Layout conventions: matrices are row-major with an explicit row stride; "columns" of width
// `cols` are always a multiple of 16 floats (callers pad with zeros).

#include "fastsoftmax/common.h"

namespace fastsoftmax::simd {

/// True when this CPU runs AVX2 and FMA instructions (checked once).
bool avx2_fma_available();

/// Columns are grouped in panels of 16: a matrix's columns [16 p, 16 p + 16) may lie anywhere
/// (panel_stride floats apart), so a matrix is either plain row-major (col_stride 1, panel_stride
/// 16) or "panel-major" (each 16-column panel stored as its own contiguous rows x 16 block,
/// row_stride 16, panel_stride rows * 16), which keeps the K x 16 slices the kernel streams
/// contiguous (no cache-set conflicts from large power-of-two row strides).
constexpr index_t kPanel = 16;

/// Element (i, k) of an operand is data[(k / 16) * panel_stride + i * row_stride +
/// (k % 16) * col_stride].
struct Operand {
  const float* data;
  index_t row_stride;
  index_t col_stride = 1;
  index_t panel_stride = kPanel;
};

/// The output of gemm: element (i, l) is data[(l / 16) * panel_stride + i * row_stride + l % 16].
struct Output {
  float* data;
  index_t row_stride;
  index_t panel_stride = kPanel;
};

/// Copies a rows x cols matrix (element (r, l) at src[r * row_stride + l * col_stride]; cols a
/// multiple of 16) into panel-major order in dst (rows * cols floats): panel p is the contiguous
/// rows x 16 block dst[p * rows * 16 ..]. As gemm's B operand (panel_operand) it streams without
/// the cache-set conflicts of a power-of-two row stride. Portable code (no AVX2 needed).
void pack_panels(const float* src, index_t rows, index_t cols, index_t row_stride,
                 index_t col_stride, float* dst);

/// Writes n <= 16 rows of a matrix (row i: src[i * src_stride .. + len)) as lanes 0..n-1 of a
/// panel: dst[j * 16 + i] = src[i * src_stride + j] (a panel of the transpose, or part of one
/// when dst points at a later lane). Exact copies; AVX2 8 x 8 transposes when available. Portable.
void pack_rows_transposed(const float* src, index_t n, index_t len, index_t src_stride,
                          float* dst);

/// The AVX2 part of pack_rows_transposed for n = 8: false (nothing written) when AVX2 is not
/// available.
bool transpose_8_rows(const float* src, index_t len, index_t src_stride, float* dst);

/// The Operand of a rows x cols matrix packed by pack_panels.
inline Operand panel_operand(const float* packed, index_t rows) {
  return Operand{packed, kPanel, 1, rows * kPanel};
}

/// C = A B (accumulate == false) or C += A B for A (M x K), B (K x N), C (M x N), N a multiple
/// of 16; B must have col_stride 1. Each C(i, l) is one sequential FMA chain over
/// k = 0..K-1 (then + C(i, l) when accumulating): the result does not depend on how a caller
/// splits M or N.
void gemm(index_t M, index_t N, index_t K, const Operand& a, const Operand& b, const Output& c,
          bool accumulate);

/// One block of an online log-sum-exp over the rows of X (rows x cols, stride `stride`), per
/// column l: new_m = max(m_l, max_i X(i, l)); alpha_l = exp(m_l - new_m) (0 when m_l = -inf);
/// X(i, l) = exp(X(i, l) - new_m); s_l = s_l * alpha_l + X(0, l) + X(1, l) + ... (in row order);
/// m_l = new_m. `cols` is a multiple of 8.
void online_exp_block(float* x, index_t rows, index_t cols, index_t stride, float* m, float* s,
                      float* alpha);

/// X(i, l) = exp(X(i, l) - shift_l) for a rows x cols block.
void exp_shifted(float* x, index_t rows, index_t cols, index_t stride, const float* shift);

/// X(i, l) *= f_l for a rows x cols block.
void scale_columns(float* x, index_t rows, index_t cols, index_t stride, const float* f);

/// X(i, l) += v_i for a rows x cols block (v has `rows` entries).
void add_row_values(float* x, index_t rows, index_t cols, index_t stride, const float* v);

/// out_i += sum_l X(i, l) f_l for a rows x cols block.
void row_dots(const float* x, index_t rows, index_t cols, index_t stride, const float* f,
              float* out);

/// Cholesky factorisation in place: A (n x n, column-major, n a multiple of 4; the lower
/// triangle is read, the upper one is scratch) becomes L with A = L L^T in its lower triangle.
/// Left-looking by 4-column panels, the panel updates as AVX2 register tiles (~2x Eigen's LLT at
/// n = 64). Returns false (A partly overwritten) when A is not positive definite.
bool cholesky_lower(double* a, index_t n);

/// A += P^T Q on the lower triangle's 4-column blocks: A(i, c) += sum_k P(k, i) Q(k, c) for
/// i >= 4 floor(c / 4), with P and Q row-major K x n (n a multiple of 4) and A as in
/// cholesky_lower (entries above the diagonal inside a diagonal block also change: scratch).
void rank_k_update_lower(double* a, index_t n, const double* p, const double* q, index_t K);

}  // namespace fastsoftmax::simd
