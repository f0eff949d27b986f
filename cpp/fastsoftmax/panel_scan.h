#pragma once
// The inner loop of inner-product top-k search, shared by exact top-k (topk.cpp) and the IVF
// index's list scan (ivf_index.cpp): score a panel of 16 items against tiles of 6 queries and
// offer every score that beats a query's running k-th best to its heap.
//
// * A panel is 16 items transposed to d x 16 (panel[p * 16 + l] = item l, dimension p), padded
//   with zero items. Queries are packed tile by tile (qpack[(t * d + p) * 6 + i] = query
//   t * 6 + i, dimension p), padded with zero queries.
// * The register-tiled kernel compares the scores with the thresholds in registers and stores the
//   tile only when a lane passes. Every score is one sequential FMA chain over the d dimensions
//   (AVX2 and scalar kernels alike), so results do not depend on the kernel, the tiling or the
//   thread count.
// * Selection order is a strict total order: score descending, then item id ascending. Items whose
//   score is NaN or -inf never enter a heap.

#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "fastsoftmax/common.h"

namespace fastsoftmax::scan {

constexpr int kMR = 6;   // queries per register tile
constexpr int kNR = 16;  // items per panel / register tile
constexpr float kInf = std::numeric_limits<float>::infinity();

/// Strict total order "a is worse than b": lower score, or equal score and higher id.
inline bool worse(float sa, std::int64_t ia, float sb, std::int64_t ib) {
  return sa < sb || (sa == sb && ia > ib);
}

/// A binary heap of at most `cap` (score, id) entries with the worst on top, in caller memory.
struct Heap {
  float* s;
  std::int64_t* id;
  index_t cap;
  index_t size;

  /// Inserts (score, item) if it beats the current worst (or the heap is not full). Returns the
  /// new threshold: the score an item must exceed to enter, -inf while the heap is not full.
  float offer(float score, std::int64_t item);
};

/// Scores a tile: q (packed, MR queries) x panel (16 items) over d dimensions. lanes[i] gets the
/// mask of the lanes whose score is > thr[i]; if any lane passes, the MR x 16 tile is stored
/// row-major into `tile` and true is returned.
using TileFn = bool (*)(const float* q, const float* panel, index_t d, const float* thr,
                        float* tile, std::uint32_t* lanes);

/// Scores one packed query (q[p * kMR]) against 4 consecutive panels (panel j at
/// panels + j * 16 * d): the 64 lanes whose score is > thr are set in the returned mask, and if
/// any is, the 64 scores are stored into `scores` (panel by panel). Four panels at a time give
/// a lone query eight independent FMA chains instead of two.
using QuadFn = std::uint64_t (*)(const float* q, const float* panels, index_t d, float thr,
                                 float* scores);

/// The tile kernels for MR = 1..6 (index 0 unused) and the one-query kernel: AVX2+FMA when the
/// CPU has it (and the scalar kernel is not forced), else the portable scalar kernels (identical
/// results; quad is then nullptr and scan_panels_one_query uses tile[1]).
struct Kernels {
  TileFn tile[kMR + 1];
  QuadFn quad;
};
Kernels select_kernels();

/// True when select_kernels() returns the AVX2 kernels.
bool uses_avx2();

/// Test hook: select the scalar kernels even on AVX2 CPUs (process-wide).
void force_scalar(bool on);

/// 64-byte aligned float scratch of n floats.
struct AlignedBuffer {
  explicit AlignedBuffer(std::size_t n);
  std::unique_ptr<float[]> raw;
  float* data;
};

/// Packs `valid` <= 16 item rows (row stride d) as a panel (exact copies; zeros beyond valid).
void pack_panel(const float* items, int valid, index_t d, float* panel);

/// Packs nq query rows into tiles of kMR: row i is rows[i * d ..] (or rows[order[i] * d ..] when
/// order is given); qpack holds ceil(nq / kMR) * kMR * d floats.
void pack_queries(const float* rows, const index_t* order, index_t nq, index_t d, float* qpack);

/// Optional exclusion lists of the queries of a scan: query i skips the items
/// indices[cursor[i] .. end[i]) (sorted ascending). The cursors advance as items are offered, so
/// the items of a scan must be visited in ascending id order. indices == nullptr: no exclusion.
template <class Index>
struct ExcludeCursors {
  const Index* indices = nullptr;
  std::int64_t* cursor = nullptr;
  const std::int64_t* end = nullptr;
};

/// One panel against nq packed queries: offers every passing score to heaps[i] and keeps thr[i]
/// (nq + kMR entries, +inf beyond nq) equal to the heap's threshold. Item l of the panel has id
/// `ids[l]`, or `first_id + l` when ids is nullptr. `tile` is kMR * kNR floats of scratch.
template <class Index>
void scan_panel(const Kernels& kern, const float* qpack, index_t nq, const float* panel, int valid,
                index_t d, const std::int64_t* ids, std::int64_t first_id, Heap* heaps,
                float* thr, ExcludeCursors<Index> exclude, float* tile);

/// One packed query against consecutive panels holding n_items items (panel j at
/// panels + j * 16 * d; the last one may be partial): the same offers to `heap` as scan_panel
/// on each panel in turn (identical scores and results), faster for a lone query. thr is the
/// heap's threshold (kept up to date); `exclude` has one cursor; `scores` holds 64 floats.
template <class Index>
void scan_panels_one_query(const Kernels& kern, const float* qpack, const float* panels,
                           index_t n_items, index_t d, const std::int64_t* ids,
                           std::int64_t first_id, Heap& heap, float& thr,
                           ExcludeCursors<Index> exclude, float* scores);

/// Writes the best min(k, entries) of `entries` (reordered) best first as a row of k outputs,
/// padded with (-1, -inf).
void write_sorted(std::vector<std::pair<float, std::int64_t>>& entries, index_t k,
                  std::int64_t* ids, float* scores);

}  // namespace fastsoftmax::scan
