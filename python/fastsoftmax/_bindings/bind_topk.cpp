#include <cstdint>
#include <type_traits>

#include "binding_utils.h"
#include "exclude_arg.h"
#include "fastsoftmax/topk.h"

namespace fastsoftmax::py {

namespace {

pyb::tuple run_topk(const pyb::array_t<float, pyb::array::c_style>& q,
                    const pyb::array_t<float, pyb::array::c_style>& x, std::int64_t k,
                    pyb::handle indptr_obj, pyb::handle indices_obj, int num_threads) {
  const index_t n_queries = q.shape(0), dim = q.shape(1), n_items = x.shape(0);
  pyb::array_t<std::int64_t> ids({n_queries, static_cast<index_t>(k)});
  pyb::array_t<float> scores({n_queries, static_cast<index_t>(k)});
  std::int64_t* ids_ptr = ids.mutable_data();
  float* scores_ptr = scores.mutable_data();
  with_exclude(indptr_obj, indices_obj, n_queries, n_items, [&](auto exclude) {
    using Index = std::remove_cv_t<std::remove_pointer_t<decltype(exclude.indices)>>;
    ReleaseGil release;
    topk<Index>(q.data(), n_queries, x.data(), n_items, dim, k, exclude, ids_ptr, scores_ptr,
                num_threads);
  });
  return pyb::make_tuple(ids, scores);
}

}  // namespace

void bind_topk(pyb::module_& m) {
  m.def(
      "topk",
      [](pyb::handle queries, pyb::handle items, std::int64_t k, pyb::handle indptr_obj,
         pyb::handle indices_obj, int num_threads) {
        auto q = require_array<float>(queries, "queries", 2);
        auto x = require_array<float>(items, "items", 2);
        if (x.shape(1) != q.shape(1)) {
          throw std::invalid_argument(str_cat("items: expected ", q.shape(1),
                                              " columns to match queries, got ", x.shape(1)));
        }
        if (k <= 0) throw std::invalid_argument(str_cat("k: expected an integer >= 1, got ", k));
        resolve_num_threads(num_threads);
        return run_topk(q, x, k, indptr_obj, indices_obj, num_threads);
      },
      pyb::arg("queries"), pyb::arg("items"), pyb::arg("k"), pyb::arg("exclude_indptr"),
      pyb::arg("exclude_indices"), pyb::arg("num_threads"),
      "Exact top-k by inner product (see fastsoftmax.topk). Returns (ids int64, scores float32).");
  testing_module(m).def(
      "topk_uses_avx2", &topk_uses_avx2, "True if the AVX2+FMA top-k kernel is in use.");
  testing_module(m).def(
      "topk_force_scalar", &topk_force_scalar, pyb::arg("on"),
        "Test hook: use the portable scalar top-k kernel even on AVX2 CPUs.");
}

}  // namespace fastsoftmax::py
