#pragma once
// The `exclude` argument of top-k searches (fs.topk, index searches): a CSR given as
// (indptr int64, indices int32 or int64, rows sorted), checked and turned into an ExcludeCsr.

#include <cstdint>

#include "binding_utils.h"
#include "fastsoftmax/topk.h"

namespace fastsoftmax::py {

/// Calls fn(ExcludeCsr<Index>) with the exclusion lists (Index = the dtype of `indices`;
/// indptr None: no exclusion, ExcludeCsr<std::int64_t>{}). The CSR is validated against
/// (n_queries, n_items) first; the arrays stay alive during the call.
template <class Fn>
auto with_exclude(pyb::handle indptr_obj, pyb::handle indices_obj, index_t n_queries,
                  index_t n_items, Fn&& fn) {
  if (indptr_obj.is_none()) return fn(ExcludeCsr<std::int64_t>{});
  auto indptr = require_array<std::int64_t>(indptr_obj, "exclude.indptr", 1);
  auto run = [&](auto tag) {
    using Index = decltype(tag);
    auto indices = require_array<Index>(indices_obj, "exclude.indices", 1);
    validate_exclude<Index>(indptr.data(), indptr.shape(0), indices.data(), indices.shape(0),
                            n_queries, n_items);
    return fn(ExcludeCsr<Index>{indptr.data(), indices.data()});
  };
  if (pyb::isinstance<pyb::array>(indices_obj) &&
      pyb::reinterpret_borrow<pyb::array>(indices_obj).dtype().equal(
          pyb::dtype::of<std::int32_t>())) {
    return run(std::int32_t{});
  }
  return run(std::int64_t{});
}

}  // namespace fastsoftmax::py
