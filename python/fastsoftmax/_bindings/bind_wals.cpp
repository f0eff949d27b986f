#include <optional>
#include <string>

#include "binding_utils.h"
#include "fastsoftmax/wals.h"

namespace fastsoftmax::py {
namespace {

// Arrays of a CSR matrix, kept alive while the view is used.
struct CsrArrays {
  pyb::array_t<std::int64_t, pyb::array::c_style> indptr, indices;
  pyb::array_t<float, pyb::array::c_style> targets;
  std::optional<pyb::array_t<float, pyb::array::c_style>> weights;
  CsrView view;
};

// Checks dtypes, shapes and the CSR structure (everything, before the GIL is released).
CsrArrays csr_from(pyb::handle indptr, pyb::handle indices, pyb::handle targets,
                   pyb::handle weights, std::int64_t n_cols) {
  CsrArrays c;
  c.indptr = require_array<std::int64_t>(indptr, "indptr", 1);
  c.indices = require_array<std::int64_t>(indices, "indices", 1);
  c.targets = require_array<float>(targets, "targets", 1);
  if (c.indptr.shape(0) < 1) throw std::invalid_argument("indptr: expected at least one entry");
  const std::int64_t nnz = c.indices.shape(0);
  if (c.targets.shape(0) != nnz) {
    throw std::invalid_argument(str_cat("targets: expected ", nnz,
                                        " values (one per index), got ", c.targets.shape(0)));
  }
  if (c.indptr.data()[c.indptr.shape(0) - 1] != nnz) {
    throw std::invalid_argument(str_cat("indptr: last entry must equal the number of indices ",
                                        nnz, ", got ", c.indptr.data()[c.indptr.shape(0) - 1]));
  }
  if (!weights.is_none()) {
    c.weights = require_array<float>(weights, "weights", 1);
    if (c.weights->shape(0) != nnz) {
      throw std::invalid_argument(
          str_cat("weights: expected ", nnz, " values (one per index), got ", c.weights->shape(0)));
    }
  }
  if (n_cols < 0) throw std::invalid_argument(str_cat("n_cols: expected >= 0, got ", n_cols));
  c.view.n_rows = c.indptr.shape(0) - 1;
  c.view.n_cols = n_cols;
  c.view.indptr = c.indptr.data();
  c.view.indices = c.indices.data();
  c.view.targets = c.targets.data();
  c.view.weights = c.weights ? c.weights->data() : nullptr;
  check_csr(c.view, "interactions");
  return c;
}

pyb::array_t<float, pyb::array::c_style> require_factors(pyb::handle obj, const char* name,
                                                          std::int64_t rows, std::int64_t dim) {
  auto a = require_array<float>(obj, name, 2);
  if (a.shape(0) != rows || (dim >= 0 && a.shape(1) != dim)) {
    throw std::invalid_argument(str_cat(name, ": expected shape (", rows, ", ",
                                        dim >= 0 ? std::to_string(dim) : std::string("dim"),
                                        "), got (", a.shape(0), ", ", a.shape(1), ")"));
  }
  return a;
}

WalsSolver solver_from(const std::string& solver) {
  if (solver == "cholesky") return WalsSolver::kCholesky;
  if (solver == "cg") return WalsSolver::kCg;
  throw std::invalid_argument(
      str_cat("solver: expected 'cholesky' or 'cg', got '", solver, "'"));
}

}  // namespace

void bind_wals(pyb::module_& m) {
  // Rows per float32 partial sum of wals_gramian: Gramians of row blocks that start at multiples
  // of it add up (in float64) to the Gramian of the whole matrix up to float64 rounding.
  m.attr("wals_gramian_chunk") = kGramianChunk;

  m.def(
      "wals_gramian",
      [](pyb::handle factors, int num_threads) {
        auto y = require_array<float>(factors, "factors", 2);
        if (y.shape(1) < 1) throw std::invalid_argument("factors: expected at least one column");
        resolve_num_threads(num_threads);
        const std::int64_t dim = y.shape(1);
        pyb::array_t<double> out({dim, dim});
        double* data = out.mutable_data();
        {
          ReleaseGil release;
          gramian(y.data(), y.shape(0), dim, data, num_threads);
        }
        return out;
      },
      pyb::arg("factors"), pyb::arg("num_threads"),
      "Y^T Y (float64, dim x dim) of float32 factors Y (n x dim); same result for any num_threads.");

  m.def(
      "wals_solve_rows",
      [](pyb::handle indptr, pyb::handle indices, pyb::handle targets, pyb::handle weights,
         pyb::handle fixed, pyb::handle gram, pyb::handle x, double unobserved_weight,
         double regularization, const std::string& solver, int cg_steps, int num_threads,
         pyb::handle row_loss) {
        auto y = require_array<float>(fixed, "fixed", 2);
        const std::int64_t dim = y.shape(1);
        if (dim < 1) throw std::invalid_argument("fixed: expected at least one column");
        CsrArrays a = csr_from(indptr, indices, targets, weights, y.shape(0));
        auto g = require_array<double>(gram, "gramian", 2);
        if (g.shape(0) != dim || g.shape(1) != dim) {
          throw std::invalid_argument(str_cat("gramian: expected shape (", dim, ", ", dim,
                                              "), got (", g.shape(0), ", ", g.shape(1), ")"));
        }
        auto out = require_factors(x, "x", a.view.n_rows, dim);
        if (!out.writeable()) throw std::invalid_argument("x: expected a writeable array");
        std::optional<pyb::array_t<double, pyb::array::c_style>> loss;
        if (!row_loss.is_none()) {
          loss = require_array<double>(row_loss, "row_loss", 1);
          if (loss->shape(0) != a.view.n_rows) {
            throw std::invalid_argument(str_cat("row_loss: expected ", a.view.n_rows,
                                                " entries, got ", loss->shape(0)));
          }
          if (!loss->writeable()) {
            throw std::invalid_argument("row_loss: expected a writeable array");
          }
        }
        WalsOptions options;
        options.unobserved_weight = unobserved_weight;
        options.regularization = regularization;
        options.solver = solver_from(solver);
        options.cg_steps = cg_steps;
        options.num_threads = num_threads;
        check_wals_options(options);
        float* x_data = out.mutable_data();
        double* loss_data = loss ? loss->mutable_data() : nullptr;
        {
          ReleaseGil release;
          solve_rows(a.view, y.data(), g.data(), dim, options, x_data, loss_data);
        }
      },
      pyb::arg("indptr"), pyb::arg("indices"), pyb::arg("targets"), pyb::arg("weights"),
      pyb::arg("fixed"), pyb::arg("gramian"), pyb::arg("x"), pyb::arg("unobserved_weight"),
      pyb::arg("regularization"), pyb::arg("solver"), pyb::arg("cg_steps"),
      pyb::arg("num_threads"), pyb::arg("row_loss") = pyb::none(),
      "One WALS half-sweep over a block of CSR rows (in place on x); see fastsoftmax/wals.h.");

  m.def(
      "wals_objective",
      [](pyb::handle indptr, pyb::handle indices, pyb::handle targets, pyb::handle weights,
         pyb::handle user_factors, pyb::handle item_factors, double unobserved_weight,
         double regularization, int num_threads) {
        auto v = require_array<float>(item_factors, "item_factors", 2);
        const std::int64_t dim = v.shape(1);
        if (dim < 1) throw std::invalid_argument("item_factors: expected at least one column");
        CsrArrays a = csr_from(indptr, indices, targets, weights, v.shape(0));
        auto u = require_factors(user_factors, "user_factors", a.view.n_rows, dim);
        resolve_num_threads(num_threads);
        ReleaseGil release;
        return wals_objective(a.view, u.data(), v.data(), dim, unobserved_weight,
                              regularization, num_threads);
      },
      pyb::arg("indptr"), pyb::arg("indices"), pyb::arg("targets"), pyb::arg("weights"),
      pyb::arg("user_factors"), pyb::arg("item_factors"), pyb::arg("unobserved_weight"),
      pyb::arg("regularization"), pyb::arg("num_threads"),
      "The exact WALS objective (float), without a dense n x m matrix.");
}

}  // namespace fastsoftmax::py
