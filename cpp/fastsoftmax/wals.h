#pragma once
// Weighted matrix factorisation trained by weighted alternating least squares (WALS).
//
// Objective (DESIGN.md section 2), for A (n x m, sparse) ~ U V^T:
//
//   sum_{(i,j) observed} w_ij (a_ij - u_i.v_j)^2 + w0 sum_{(i,j) unobserved} (u_i.v_j)^2
//     + lambda (|U|^2 + |V|^2)
//
// With the fixed side Y (the item factors V when solving for U, and U when solving for V) and its
// Gramian G = Y^T Y, row i solves the d x d normal equations
//
//   (w0 G + sum_{j in obs(i)} (w_ij - w0) y_j y_j^T + lambda I) x_i = sum_{j in obs(i)} w_ij a_ij y_j
//
// solve_rows() is the whole kernel of one half-sweep, written so that it can also run on any block
// of rows (a distributed WALS calls it once per block with the same Y and G): the rows come as a
// CSR view whose column ids index Y, and only those rows of X are read and written. Rows are
// solved independently in fixed chunks on the thread pool, so X is bit-identical for every thread
// count. An empty row has the exact solution 0 and gets it.

#include <cstdint>

#include "fastsoftmax/common.h"

namespace fastsoftmax {

/// Read-only CSR view of the observed entries of a block of rows: row r has the entries
/// k in [indptr[r], indptr[r + 1]), column indices[k] (an index into the fixed factors), target
/// targets[k] (a_ij) and weight weights[k] (w_ij; weights == nullptr means every weight is 1).
struct CsrView {
  index_t n_rows = 0;
  index_t n_cols = 0;
  const index_t* indptr = nullptr;   // n_rows + 1 entries, indptr[0] == 0, non-decreasing
  const index_t* indices = nullptr;  // nnz entries in [0, n_cols)
  const float* targets = nullptr;    // nnz entries, finite
  const float* weights = nullptr;    // nnz entries, finite and >= 0, or nullptr (all 1)

  index_t nnz() const { return n_rows > 0 ? indptr[n_rows] : 0; }
};

enum class WalsSolver { kCholesky, kCg };

struct WalsOptions {
  double unobserved_weight = 0.1;  // w0 >= 0
  double regularization = 0.05;    // lambda >= 0
  WalsSolver solver = WalsSolver::kCg;
  int cg_steps = 3;  // >= 1, used by kCg
  int num_threads = 0;
};

/// At most this many rows per task of solve_rows and wals_objective. Tasks depend on the data
/// only (never on the thread count), and each row's solution depends on its own data only.
inline constexpr index_t kWalsRowChunk = 64;
/// Rows per task (and per float32 partial sum) of gramian().
inline constexpr index_t kGramianChunk = 1024;

/// Checks the structure of `a` (indptr monotone from 0, column ids in range, weights >= 0, finite
/// values). Throws std::invalid_argument / std::out_of_range naming `name`. O(nnz + n_rows).
void check_csr(const CsrView& a, const char* name);

/// Checks the options; throws std::invalid_argument naming the bad one.
void check_wals_options(const WalsOptions& options);

/// G = Y^T Y for Y (n x dim, row-major float32), written to `gram` (dim x dim, row-major float64).
/// Partial sums over fixed chunks of kGramianChunk rows, added in chunk order: bit-identical for
/// every thread count.
void gramian(const float* factors, index_t n, index_t dim, double* gram, int num_threads);

/// Precondition of solve_rows and wals_objective: check_csr(a) passed (the bindings check every
/// matrix before they release the GIL).
///
/// One half-sweep on a block of rows: for every row r of `a`, solves the normal equations above
/// with the fixed factors Y (a.n_cols x dim, row-major float32) and its Gramian `gram` (dim x dim,
/// row-major float64, normally gramian(Y)), and writes the solution to row r of X (a.n_rows x dim,
/// row-major float32). kCholesky solves exactly (Eigen LLT, float64) and throws std::runtime_error
/// with a hint when a row's matrix is not positive definite; kCg runs options.cg_steps conjugate
/// gradient steps (float32) warm-started from the current row of X, never forming the matrix.
///
/// If `row_loss` is not null, row_loss[r] receives the observed part of the objective for the new
/// x_r: sum_{j in obs(r)} [w_rj (a_rj - x_r.y_j)^2 - w0 (x_r.y_j)^2] (float64), so that
/// objective = sum(row_loss) + w0 <X^T X, G>_F + lambda (tr(X^T X) + tr(G)) after the half-sweep.
void solve_rows(const CsrView& a, const float* fixed, const double* gram, index_t dim,
                const WalsOptions& options, float* x, double* row_loss);

/// The exact WALS objective for U (n x dim), V (m x dim) and the observed entries `a` (n x m),
/// without any dense n x m matrix: the all-pairs sum of (u_i.v_j)^2 is <U^T U, V^T V>_F.
/// Returns float64; the result does not depend on num_threads.
double wals_objective(const CsrView& a, const float* user_factors, const float* item_factors,
                      index_t dim, double unobserved_weight, double regularization,
                      int num_threads);

}  // namespace fastsoftmax
