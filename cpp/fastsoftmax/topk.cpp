#include "fastsoftmax/topk.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "fastsoftmax/panel_scan.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

using scan::kInf;
using scan::kMR;
using scan::kNR;

constexpr index_t kQueryBlock = 192;    // queries per task (32 tiles)
constexpr index_t kMinChunk = 8192;     // smallest item chunk worth a task (multiple of kNR)
constexpr index_t kTargetTasks = 32;    // split items into chunks until there are this many tasks
constexpr index_t kPrefetchPanels = 4;  // how far ahead item rows are prefetched

template <class Index>
void topk_impl(const float* queries, index_t n_queries, const float* items, index_t n_items,
               index_t dim, index_t k, ExcludeCsr<Index> exclude, std::int64_t* out_ids,
               float* out_scores, int num_threads) {
  if (k <= 0) throw_invalid("k: expected an integer >= 1, got ", k);
  if (n_queries < 0 || n_items < 0 || dim < 0) {
    throw_invalid("topk: negative shape (", n_queries, ", ", n_items, ", ", dim, ")");
  }
  resolve_num_threads(num_threads);
  if (n_queries == 0) return;
  const index_t kk = std::min(k, n_items);  // heap capacity
  if (kk == 0) {
    std::fill(out_ids, out_ids + n_queries * k, std::int64_t{-1});
    std::fill(out_scores, out_scores + n_queries * k, -kInf);
    return;
  }

  // Task grid: query blocks x item chunks, from (B, n, k) only.
  const index_t n_qblocks = (n_queries + kQueryBlock - 1) / kQueryBlock;
  const index_t max_chunks = std::max<index_t>(1, n_items / std::max(kMinChunk, 16 * kk));
  const index_t want_chunks = (kTargetTasks + n_qblocks - 1) / n_qblocks;
  index_t n_chunks = std::min(max_chunks, want_chunks);
  index_t chunk = (n_items + n_chunks - 1) / n_chunks;
  chunk = (chunk + kNR - 1) / kNR * kNR;
  n_chunks = (n_items + chunk - 1) / chunk;

  // Per (chunk, query) heaps.
  const std::size_t slots = static_cast<std::size_t>(n_chunks) * n_queries;
  std::vector<float> heap_s(slots * kk);
  std::vector<std::int64_t> heap_id(slots * kk);
  std::vector<index_t> heap_size(slots, 0);

  const scan::Kernels kern = scan::select_kernels();
  const bool has_exclude = exclude.indptr != nullptr;

  parallel_for(n_qblocks * n_chunks, num_threads, [&](std::int64_t task, int) {
    const index_t qb = task / n_chunks;
    const index_t c = task % n_chunks;
    const index_t q0 = qb * kQueryBlock;
    const index_t nq = std::min(kQueryBlock, n_queries - q0);
    const index_t j_begin = c * chunk;
    const index_t j_end = std::min(n_items, j_begin + chunk);

    std::vector<scan::Heap> heaps(nq);
    std::vector<float> thr(nq + kMR, kInf);  // +inf pads the rows beyond nq
    std::vector<std::int64_t> cursor(has_exclude ? nq : 0), cursor_end(has_exclude ? nq : 0);
    for (index_t i = 0; i < nq; ++i) {
      const std::size_t slot = static_cast<std::size_t>(c) * n_queries + q0 + i;
      heaps[i] = scan::Heap{heap_s.data() + slot * kk, heap_id.data() + slot * kk, kk, 0};
      thr[i] = -kInf;
      if (has_exclude) {
        const Index* row_begin = exclude.indices + exclude.indptr[q0 + i];
        const Index* row_end = exclude.indices + exclude.indptr[q0 + i + 1];
        cursor[i] = std::lower_bound(row_begin, row_end, static_cast<Index>(j_begin)) -
                    exclude.indices;
        cursor_end[i] = exclude.indptr[q0 + i + 1];
      }
    }
    const scan::ExcludeCursors<Index> cursors{has_exclude ? exclude.indices : nullptr,
                                              cursor.data(), cursor_end.data()};
    scan::AlignedBuffer panel(static_cast<std::size_t>(kNR) * std::max<index_t>(dim, 1));
    alignas(64) float tile[kMR * kNR];
    const index_t n_tiles = (nq + kMR - 1) / kMR;
    scan::AlignedBuffer qpack(static_cast<std::size_t>(n_tiles * kMR) * std::max<index_t>(dim, 1));
    scan::pack_queries(queries + q0 * dim, nullptr, nq, dim, qpack.data);

    index_t panels_done = 0;
    for (index_t j0 = j_begin; j0 < j_end; j0 += kNR) {
      const int valid = static_cast<int>(std::min<index_t>(kNR, j_end - j0));
      // Prefetch the item rows a few panels ahead (streaming from memory when n is large).
      const index_t ahead = j0 + kPrefetchPanels * kNR;
      if (ahead < j_end) {
        const char* from = reinterpret_cast<const char*>(items + ahead * dim);
        const index_t bytes = std::min<index_t>(kNR, j_end - ahead) * dim * 4;
        for (index_t off = 0; off < bytes; off += 64) __builtin_prefetch(from + off, 0, 0);
      }
      scan::pack_panel(items + j0 * dim, valid, dim, panel.data);
      scan::scan_panel<Index>(kern, qpack.data, nq, panel.data, valid, dim, nullptr, j0,
                              heaps.data(), thr.data(), cursors, tile);
      if ((++panels_done & 63) == 0) check_interrupt();
    }
    for (index_t i = 0; i < nq; ++i) {
      heap_size[static_cast<std::size_t>(c) * n_queries + q0 + i] = heaps[i].size;
    }
  });

  // Merge the chunks of each query in chunk order, sort, pad.
  parallel_for(n_qblocks, num_threads, [&](std::int64_t qb, int) {
    const index_t q0 = qb * kQueryBlock;
    const index_t nq = std::min(kQueryBlock, n_queries - q0);
    std::vector<std::pair<float, std::int64_t>> entries;
    std::vector<float> ms(n_chunks > 1 ? kk : 0);
    std::vector<std::int64_t> mi(n_chunks > 1 ? kk : 0);
    for (index_t b = q0; b < q0 + nq; ++b) {
      entries.clear();
      if (n_chunks == 1) {
        const std::size_t slot = static_cast<std::size_t>(b);
        for (index_t e = 0; e < heap_size[slot]; ++e) {
          entries.emplace_back(heap_s[slot * kk + e], heap_id[slot * kk + e]);
        }
      } else {
        scan::Heap merged{ms.data(), mi.data(), kk, 0};
        for (index_t c = 0; c < n_chunks; ++c) {
          const std::size_t slot = static_cast<std::size_t>(c) * n_queries + b;
          for (index_t e = 0; e < heap_size[slot]; ++e) {
            merged.offer(heap_s[slot * kk + e], heap_id[slot * kk + e]);
          }
        }
        for (index_t e = 0; e < merged.size; ++e) entries.emplace_back(ms[e], mi[e]);
      }
      scan::write_sorted(entries, k, out_ids + b * k, out_scores + b * k);
    }
  });
}

}  // namespace

template <class Index>
void validate_exclude(const std::int64_t* indptr, index_t indptr_size, const Index* indices,
                      index_t nnz, index_t n_queries, index_t n_items) {
  if (indptr_size != n_queries + 1) {
    throw_invalid("exclude: expected indptr of length n_queries + 1 = ", n_queries + 1, ", got ",
                  indptr_size);
  }
  if (indptr[0] != 0) throw_invalid("exclude: indptr[0] must be 0, got ", indptr[0]);
  if (indptr[n_queries] != nnz) {
    throw_invalid("exclude: indptr[-1] must equal the number of stored entries ", nnz, ", got ",
                  indptr[n_queries]);
  }
  for (index_t b = 0; b < n_queries; ++b) {
    const std::int64_t lo = indptr[b], hi = indptr[b + 1];
    if (hi < lo) throw_invalid("exclude: indptr must be non-decreasing, got a decrease at row ", b);
    if (hi > nnz) {
      throw_invalid("exclude: indptr[", b + 1, "] = ", hi, " exceeds the number of entries ", nnz);
    }
    for (std::int64_t e = lo; e < hi; ++e) {
      const auto j = static_cast<std::int64_t>(indices[e]);
      if (j < 0 || j >= n_items) {
        throw_out_of_range("exclude: item id ", j, " in row ", b, " is out of range [0, ",
                           n_items, ")");
      }
      if (e > lo && j < static_cast<std::int64_t>(indices[e - 1])) {
        throw_invalid("exclude: the item ids of each row must be sorted; row ", b, " is not");
      }
    }
  }
}

template <class Index>
void topk(const float* queries, index_t n_queries, const float* items, index_t n_items,
          index_t dim, index_t k, ExcludeCsr<Index> exclude, std::int64_t* out_ids,
          float* out_scores, int num_threads) {
  topk_impl<Index>(queries, n_queries, items, n_items, dim, k, exclude, out_ids, out_scores,
                   num_threads);
}

void topk(const float* queries, index_t n_queries, const float* items, index_t n_items,
          index_t dim, index_t k, std::int64_t* out_ids, float* out_scores, int num_threads) {
  topk_impl<std::int64_t>(queries, n_queries, items, n_items, dim, k, ExcludeCsr<std::int64_t>{},
                          out_ids, out_scores, num_threads);
}

bool topk_uses_avx2() { return scan::uses_avx2(); }

void topk_force_scalar(bool on) { scan::force_scalar(on); }

template void validate_exclude<std::int32_t>(const std::int64_t*, index_t, const std::int32_t*,
                                             index_t, index_t, index_t);
template void validate_exclude<std::int64_t>(const std::int64_t*, index_t, const std::int64_t*,
                                             index_t, index_t, index_t);
template void topk<std::int32_t>(const float*, index_t, const float*, index_t, index_t, index_t,
                                 ExcludeCsr<std::int32_t>, std::int64_t*, float*, int);
template void topk<std::int64_t>(const float*, index_t, const float*, index_t, index_t, index_t,
                                 ExcludeCsr<std::int64_t>, std::int64_t*, float*, int);

}  // namespace fastsoftmax
