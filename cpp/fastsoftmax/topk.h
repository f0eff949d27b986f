#pragma once
// Exact top-k retrieval by inner product: for every query q_b, the k items j with the largest
// scores q_b . x_j, best first, ties broken by the lower item id.
//
// How it works (no B x n score matrix is ever materialised):
// * Items are processed in panels of 16: a panel is transposed into a 16 x d buffer (L1-resident)
//   and a register-tiled micro-kernel computes 6 queries x 16 items of scores at a time with FMA.
// * The tile is compared with each query's current k-th best score in registers; only a score that
//   beats it touches the query's heap (a binary heap of size k, worst on top).
// * Work is split into tasks (query block x item chunk) whose shape depends on B, n and k only,
//   never on the thread count; chunk results are merged per query in chunk order.
//
// Every score is one sequential FMA chain over the d dimensions, whatever the batch size, the
// position of the query in its block or the thread count, and the selection order (score
// descending, id ascending) is a strict total order: results are bit-identical for every
// num_threads and for every way of batching the same queries.
//
// Items whose score is NaN or -inf are never returned (they count as not eligible).

#include <cstdint>

#include "fastsoftmax/common.h"

namespace fastsoftmax {

/// Optional per-query exclusion lists in CSR form: the items of query b are
/// indices[indptr[b] .. indptr[b+1]), sorted ascending (duplicates allowed). The index type of
/// `indices` may be int32 or int64 (scipy uses either).
template <class Index>
struct ExcludeCsr {
  const std::int64_t* indptr = nullptr;  // n_queries + 1 entries
  const Index* indices = nullptr;
};

/// Checks an exclusion CSR against (n_queries, n_items): indptr starts at 0, is non-decreasing and
/// ends at nnz; every index lies in [0, n_items) (std::out_of_range otherwise) and each row is
/// sorted (std::invalid_argument otherwise). Messages name `exclude`.
template <class Index>
void validate_exclude(const std::int64_t* indptr, index_t indptr_size, const Index* indices,
                      index_t nnz, index_t n_queries, index_t n_items);

/// Top-k by inner product.
///   queries: n_queries x dim, row-major float32; items: n_items x dim, row-major float32.
///   k >= 1. exclude: optional (indptr == nullptr for none), validated by validate_exclude.
///   out_ids / out_scores: n_queries x k, row-major, caller-owned. Row b holds the best items of
///   query b, best first; positions beyond the number of eligible items hold id -1, score -inf.
template <class Index>
void topk(const float* queries, index_t n_queries, const float* items, index_t n_items,
          index_t dim, index_t k, ExcludeCsr<Index> exclude, std::int64_t* out_ids,
          float* out_scores, int num_threads);

/// The same without exclusions.
void topk(const float* queries, index_t n_queries, const float* items, index_t n_items,
          index_t dim, index_t k, std::int64_t* out_ids, float* out_scores, int num_threads);

/// True when the AVX2+FMA micro-kernel is used on this CPU (otherwise a portable scalar kernel
/// with identical results).
bool topk_uses_avx2();

/// Test hook: use the scalar kernel even when AVX2 is available (process-wide).
void topk_force_scalar(bool on);

}  // namespace fastsoftmax
