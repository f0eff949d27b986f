#include "fastsoftmax/wals.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "fastsoftmax/simd_kernels.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

using MatrixXd = Eigen::MatrixXd;  // column-major scratch (internal only)
using VectorXd = Eigen::VectorXd;

// A task of solve_rows ends after kWalsRowChunk rows or once it holds this many entries, so that a
// few very dense rows (popular items) do not end up in one task. Rows are independent, so the
// chunking never changes the results, only the load balance.
constexpr index_t kChunkEntries = 1 << 14;
// Observed rows of the fixed factors gathered per GEMM update of the Cholesky path.
constexpr index_t kGatherRows = 64;

// Task boundaries over the rows of `a`: chunk c covers rows [bounds[c], bounds[c + 1]).
std::vector<index_t> row_chunks(const CsrView& a) {
  std::vector<index_t> bounds{0};
  index_t begin = 0;
  for (index_t r = 0; r < a.n_rows; ++r) {
    const index_t rows = r + 1 - begin;
    const index_t entries = a.indptr[r + 1] - a.indptr[begin];
    if (rows >= kWalsRowChunk || entries >= kChunkEntries) {
      bounds.push_back(r + 1);
      begin = r + 1;
    }
  }
  if (begin < a.n_rows) bounds.push_back(a.n_rows);
  return bounds;
}

// Per-thread scratch memory, sized once per call: no heap allocation per row.
struct Scratch {
  explicit Scratch(index_t dim)
      : a(dim, dim), b(dim), xd(dim), gathered(kGatherRows, dim), scaled(kGatherRows, dim) {}
  // Cholesky path (float64).
  MatrixXd a;
  VectorXd b, xd;
  RowMatrixXd gathered, scaled;  // kGatherRows x dim: y_j and (w_ij - w0) y_j
};

// Prefetches the fixed-side rows that row `row` will read: issued one row ahead, the cache misses
// of the random gathers overlap with the arithmetic of the current row.
inline void prefetch_row(const CsrView& a, index_t row, const float* fixed, index_t dim) {
  if (row >= a.n_rows) return;
  const index_t bytes = dim * static_cast<index_t>(sizeof(float));
  for (index_t k = a.indptr[row]; k < a.indptr[row + 1]; ++k) {
    const char* y = reinterpret_cast<const char*>(fixed + a.indices[k] * dim);
    for (index_t off = 0; off < bytes; off += 64) __builtin_prefetch(y + off);
  }
}

// Prefetch distance (in entries) inside a long row: its fixed-side rows may not fit in cache, so
// every pass gathers them again from memory.
constexpr index_t kPrefetchAhead = 12;

inline void prefetch_entry(const CsrView& a, index_t k, index_t end, const float* fixed,
                           index_t dim) {
  if (k >= end) return;
  const char* y = reinterpret_cast<const char*>(fixed + a.indices[k] * dim);
  for (index_t off = 0; off < dim * static_cast<index_t>(sizeof(float)); off += 64) {
    __builtin_prefetch(y + off);
  }
}

inline float weight_at(const CsrView& a, index_t k) {
  return a.weights != nullptr ? a.weights[k] : 1.0f;
}

// Observed part of the objective for row `row` with solution x (see solve_rows).
template <int D = Eigen::Dynamic>
double observed_loss(const CsrView& a, index_t row, const float* fixed, index_t dim,
                     const float* x_data, double w0) {
  using Vec = Eigen::Matrix<float, D, 1>;
  const Eigen::Map<const Vec> x(x_data, dim);
  double loss = 0.0;
  for (index_t k = a.indptr[row]; k < a.indptr[row + 1]; ++k) {
    const double pred = Eigen::Map<const Vec>(fixed + a.indices[k] * dim, dim).dot(x);
    const double resid = static_cast<double>(a.targets[k]) - pred;
    loss += static_cast<double>(weight_at(a, k)) * resid * resid - w0 * pred * pred;
  }
  return loss;
}

void solve_row_cholesky(const CsrView& a, index_t row, const float* fixed, index_t dim,
                        const MatrixXd& base, double w0, bool simd_llt, Scratch& s,
                        float* x_out) {
  const index_t begin = a.indptr[row];
  const index_t end = a.indptr[row + 1];
  s.a = base;  // w0 G + lambda I (only the lower triangle is used)
  s.b.setZero();
  // A += sum_j (w_ij - w0) y_j y_j^T and b = sum_j w_ij a_ij y_j, kGatherRows entries at a time
  // gathered (row-major) and added by the AVX2 rank-k kernel or Eigen's triangular product.
  for (index_t k0 = begin; k0 < end; k0 += kGatherRows) {
    const index_t count = std::min(kGatherRows, end - k0);
    for (index_t t = 0; t < count; ++t) {
      const index_t k = k0 + t;
      if (k + kPrefetchAhead < end) prefetch_entry(a, k + kPrefetchAhead, end, fixed, dim);
      const double w = weight_at(a, k);
      const double wt = w * static_cast<double>(a.targets[k]);
      const float* y = fixed + a.indices[k] * dim;
      double* g = s.gathered.data() + t * dim;
      double* sc = s.scaled.data() + t * dim;
      for (index_t f = 0; f < dim; ++f) {
        g[f] = y[f];
        sc[f] = (w - w0) * g[f];
        s.b[f] += wt * g[f];
      }
    }
    if (simd_llt) {
      simd::rank_k_update_lower(s.a.data(), dim, s.scaled.data(), s.gathered.data(), count);
    } else {
      s.a.triangularView<Eigen::Lower>() +=
          s.gathered.topRows(count).transpose() * s.scaled.topRows(count);
    }
  }
  bool factored;
  if (simd_llt) {
    factored = simd::cholesky_lower(s.a.data(), dim);
  } else {
    Eigen::LLT<Eigen::Ref<MatrixXd>, Eigen::Lower> llt(s.a);  // factors s.a in place
    factored = llt.info() == Eigen::Success;
  }
  if (!factored) {
    throw std::runtime_error(str_cat(
        "WALS: the normal equations of row ", row, " (", end - begin,
        " observed entries) are not positive definite; increase regularization (lambda > 0 "
        "makes every row solvable) or check the weights"));
  }
  // x = L^-T L^-1 b with L in the lower triangle of s.a.
  s.xd = s.b;
  s.a.triangularView<Eigen::Lower>().solveInPlace(s.xd);
  s.a.triangularView<Eigen::Lower>().adjoint().solveInPlace(s.xd);
  for (index_t f = 0; f < dim; ++f) x_out[f] = static_cast<float>(s.xd[f]);
}

// Conjugate-gradient vectors, created once per task and reused for its rows. For the common
// dimensions D is a compile-time constant (fixed-size Eigen vectors on the stack, loops fully
// unrolled); otherwise Eigen::Dynamic (four small heap vectors per task, none per row).
template <int D>
struct CgVectors {
  using Vec = Eigen::Matrix<float, D, 1>;
  explicit CgVectors(index_t dim) : x(dim), r(dim), p(dim), ap(dim) {}
  Vec x, r, p, ap;
};

template <int D>
void solve_row_cg(const CsrView& a, index_t row, const float* fixed, index_t dim,
                  const float* base_data, float w0, int cg_steps, CgVectors<D>& v,
                  float* x_out) {
  using Vec = Eigen::Matrix<float, D, 1>;
  using Row = Eigen::Map<const Vec>;
  // base is symmetric: read it column-major, the faster layout for a matrix-vector product.
  const Eigen::Map<const Eigen::Matrix<float, D, D>> base(base_data, dim, dim);
  constexpr float kTiny = 1e-20f;
  const index_t begin = a.indptr[row];
  const index_t end = a.indptr[row + 1];
  v.x = Eigen::Map<const Vec>(x_out, dim);
  // r = b - A x = sum_j (w_j a_j - (w_j - w0) y_j.x) y_j - (w0 G + lambda I) x
  v.r.noalias() = base * v.x;
  v.r = -v.r;
  const bool long_row = end - begin > 64;
  for (index_t k = begin; k < end; ++k) {
    if (long_row) prefetch_entry(a, k + kPrefetchAhead, end, fixed, dim);
    const Row y(fixed + a.indices[k] * dim, dim);
    const float w = weight_at(a, k);
    v.r += (w * a.targets[k] - (w - w0) * y.dot(v.x)) * y;
  }
  v.p = v.r;
  float rs_old = v.r.squaredNorm();
  for (int step = 0; step < cg_steps && rs_old > kTiny; ++step) {
    v.ap.noalias() = base * v.p;
    if (long_row) {
      for (index_t k = begin; k < std::min(end, begin + kPrefetchAhead); ++k) {
        prefetch_entry(a, k, end, fixed, dim);
      }
    }
    for (index_t k = begin; k < end; ++k) {
      if (long_row) prefetch_entry(a, k + kPrefetchAhead, end, fixed, dim);
      const Row y(fixed + a.indices[k] * dim, dim);
      v.ap += ((weight_at(a, k) - w0) * y.dot(v.p)) * y;
    }
    const float p_ap = v.p.dot(v.ap);
    if (!(p_ap > 0.0f)) break;  // A p = 0: the matrix is singular in direction p
    const float alpha = rs_old / p_ap;
    v.x += alpha * v.p;
    v.r -= alpha * v.ap;
    const float rs_new = v.r.squaredNorm();
    v.p = v.r + (rs_new / rs_old) * v.p;
    rs_old = rs_new;
  }
  Eigen::Map<Vec>(x_out, dim) = v.x;
}

// Solves rows [begin, end) with conjugate gradients (see solve_rows).
template <int D>
void cg_rows(const CsrView& a, index_t begin, index_t end, const float* fixed, index_t dim,
             const float* base, float w0, int cg_steps, float* x, double* row_loss) {
  CgVectors<D> v(dim);
  for (index_t row = begin; row < end; ++row) {
    float* xr = x + row * dim;
    prefetch_row(a, row + 1, fixed, dim);
    if (a.indptr[row + 1] == a.indptr[row]) {
      std::fill(xr, xr + dim, 0.0f);  // no observed entry: right-hand side 0, solution 0
      if (row_loss != nullptr) row_loss[row] = 0.0;
      continue;
    }
    solve_row_cg<D>(a, row, fixed, dim, base, w0, cg_steps, v, xr);
    if (row_loss != nullptr) row_loss[row] = observed_loss<D>(a, row, fixed, dim, xr, w0);
  }
}

void cg_rows_dispatch(const CsrView& a, index_t begin, index_t end, const float* fixed,
                      index_t dim, const float* base, float w0, int cg_steps, float* x,
                      double* row_loss) {
  switch (dim) {
    case 16:
      return cg_rows<16>(a, begin, end, fixed, dim, base, w0, cg_steps, x, row_loss);
    case 32:
      return cg_rows<32>(a, begin, end, fixed, dim, base, w0, cg_steps, x, row_loss);
    case 64:
      return cg_rows<64>(a, begin, end, fixed, dim, base, w0, cg_steps, x, row_loss);
    case 128:
      return cg_rows<128>(a, begin, end, fixed, dim, base, w0, cg_steps, x, row_loss);
    default:
      return cg_rows<Eigen::Dynamic>(a, begin, end, fixed, dim, base, w0, cg_steps, x, row_loss);
  }
}

}  // namespace

void check_csr(const CsrView& a, const char* name) {
  if (a.n_rows < 0 || a.n_cols < 0) {
    throw_invalid(name, ": expected a non-negative shape, got (", a.n_rows, ", ", a.n_cols, ")");
  }
  if (a.n_rows == 0) return;
  if (a.indptr[0] != 0) throw_invalid(name, ": indptr must start at 0, got ", a.indptr[0]);
  for (index_t r = 0; r < a.n_rows; ++r) {
    if (a.indptr[r + 1] < a.indptr[r]) {
      throw_invalid(name, ": indptr must be non-decreasing, got ", a.indptr[r], " then ",
                    a.indptr[r + 1], " at row ", r);
    }
  }
  const index_t nnz = a.indptr[a.n_rows];
  for (index_t k = 0; k < nnz; ++k) {
    const index_t j = a.indices[k];
    if (j < 0 || j >= a.n_cols) {
      throw_out_of_range(name, ": column index ", j, " out of range [0, ", a.n_cols, ")");
    }
    if (!std::isfinite(a.targets[k])) {
      throw_invalid(name, ": expected finite values, got ", a.targets[k], " at entry ", k);
    }
  }
  if (a.weights != nullptr) {
    for (index_t k = 0; k < nnz; ++k) {
      const float w = a.weights[k];
      if (!std::isfinite(w)) throw_invalid("weights: expected finite values, got ", w);
      if (w < 0) throw_invalid("weights: expected non-negative values, got ", w, " at entry ", k);
    }
  }
}

void check_wals_options(const WalsOptions& o) {
  if (!(o.unobserved_weight >= 0) || !std::isfinite(o.unobserved_weight)) {
    throw_invalid("unobserved_weight: expected a finite number >= 0, got ", o.unobserved_weight);
  }
  if (!(o.regularization >= 0) || !std::isfinite(o.regularization)) {
    throw_invalid("regularization: expected a finite number >= 0, got ", o.regularization);
  }
  if (o.solver == WalsSolver::kCg && o.cg_steps < 1) {
    throw_invalid("cg_steps: expected an integer >= 1, got ", o.cg_steps);
  }
  resolve_num_threads(o.num_threads);
}

void gramian(const float* factors, index_t n, index_t dim, double* gram, int num_threads) {
  if (dim <= 0) throw_invalid("dim: expected an integer > 0, got ", dim);
  if (n < 0) throw_invalid("factors: expected a non-negative number of rows, got ", n);
  const index_t n_chunks = (n + kGramianChunk - 1) / kGramianChunk;
  const index_t cells = dim * dim;
  std::vector<double> partial(static_cast<std::size_t>(n_chunks * cells));
  const int threads = threads_for(n_chunks, num_threads);
  std::vector<Eigen::MatrixXf> scratch(threads, Eigen::MatrixXf(dim, dim));
  parallel_for(n_chunks, num_threads, [&](std::int64_t c, int slot) {
    const index_t begin = c * kGramianChunk;
    const index_t rows = std::min(kGramianChunk, n - begin);
    const ConstMapRowMatrixXf y(factors + begin * dim, rows, dim);
    Eigen::MatrixXf& g = scratch[slot];
    g.setZero();
    g.selfadjointView<Eigen::Lower>().rankUpdate(y.transpose());
    double* out = partial.data() + c * cells;
    for (index_t i = 0; i < dim; ++i) {
      for (index_t j = 0; j <= i; ++j) out[i * dim + j] = g(i, j);
    }
  });
  std::fill(gram, gram + cells, 0.0);
  for (index_t c = 0; c < n_chunks; ++c) {  // fixed order: identical for every thread count
    const double* p = partial.data() + c * cells;
    for (index_t i = 0; i < dim; ++i) {
      for (index_t j = 0; j <= i; ++j) gram[i * dim + j] += p[i * dim + j];
    }
  }
  for (index_t i = 0; i < dim; ++i) {
    for (index_t j = i + 1; j < dim; ++j) gram[i * dim + j] = gram[j * dim + i];
  }
}

void solve_rows(const CsrView& a, const float* fixed, const double* gram, index_t dim,
                const WalsOptions& options, float* x, double* row_loss) {
  if (dim <= 0) throw_invalid("dim: expected an integer > 0, got ", dim);
  check_wals_options(options);
  for (index_t i = 0; i < dim * dim; ++i) {
    if (!std::isfinite(gram[i])) throw_invalid("gramian: expected finite values, got ", gram[i]);
  }
  const double w0 = options.unobserved_weight;
  const double lambda = options.regularization;
  const bool cholesky = options.solver == WalsSolver::kCholesky;
  const Eigen::Map<const RowMatrixXd> g(gram, dim, dim);

  // The part of the matrix shared by every row: w0 G + lambda I.
  MatrixXd base_d;
  RowMatrixXf base_f;
  if (cholesky) {
    base_d = w0 * g;
    base_d.diagonal().array() += lambda;
  } else {
    base_f = (w0 * g).cast<float>();
    base_f.diagonal().array() += static_cast<float>(lambda);
  }

  const std::vector<index_t> bounds = row_chunks(a);
  const auto n_chunks = static_cast<index_t>(bounds.size()) - 1;
  const int threads = threads_for(n_chunks, options.num_threads);
  // The AVX2 Cholesky kernel (~2x Eigen's LLT at d = 64) when the CPU and d allow it.
  const bool simd_llt = cholesky && simd::avx2_fma_available() && dim % 4 == 0;
  std::vector<Scratch> scratch;  // per-thread scratch of the Cholesky path
  scratch.reserve(threads);
  if (cholesky) {
    for (int t = 0; t < threads; ++t) scratch.emplace_back(dim);
  }

  parallel_for(n_chunks, options.num_threads, [&](std::int64_t c, int slot) {
    if (!cholesky) {
      cg_rows_dispatch(a, bounds[c], bounds[c + 1], fixed, dim, base_f.data(),
                       static_cast<float>(w0), options.cg_steps, x, row_loss);
      return;
    }
    Scratch& s = scratch[slot];
    for (index_t row = bounds[c]; row < bounds[c + 1]; ++row) {
      float* xr = x + row * dim;
      prefetch_row(a, row + 1, fixed, dim);
      if (a.indptr[row + 1] == a.indptr[row]) {
        // No observed entry: the right-hand side is 0, so is the solution.
        std::fill(xr, xr + dim, 0.0f);
        if (row_loss != nullptr) row_loss[row] = 0.0;
        continue;
      }
      solve_row_cholesky(a, row, fixed, dim, base_d, w0, simd_llt, s, xr);
      if (row_loss != nullptr) row_loss[row] = observed_loss(a, row, fixed, dim, xr, w0);
    }
  });
}

double wals_objective(const CsrView& a, const float* user_factors, const float* item_factors,
                      index_t dim, double unobserved_weight, double regularization,
                      int num_threads) {
  if (dim <= 0) throw_invalid("dim: expected an integer > 0, got ", dim);
  const index_t n_chunks = (a.n_rows + kWalsRowChunk - 1) / kWalsRowChunk;
  std::vector<double> partial(static_cast<std::size_t>(n_chunks), 0.0);
  parallel_for(n_chunks, num_threads, [&](std::int64_t c, int) {
    const index_t end = std::min(a.n_rows, (c + 1) * kWalsRowChunk);
    double sum = 0.0;
    for (index_t row = c * kWalsRowChunk; row < end; ++row) {
      sum += observed_loss(a, row, item_factors, dim, user_factors + row * dim, unobserved_weight);
    }
    partial[c] = sum;
  });
  double total = 0.0;
  for (const double p : partial) total += p;
  const index_t cells = dim * dim;
  std::vector<double> gu(cells), gv(cells);
  gramian(user_factors, a.n_rows, dim, gu.data(), num_threads);
  gramian(item_factors, a.n_cols, dim, gv.data(), num_threads);
  double all_pairs = 0.0, trace = 0.0;
  for (index_t i = 0; i < cells; ++i) all_pairs += gu[i] * gv[i];
  for (index_t i = 0; i < dim; ++i) trace += gu[i * dim + i] + gv[i * dim + i];
  return total + unobserved_weight * all_pairs + regularization * trace;
}

}  // namespace fastsoftmax
