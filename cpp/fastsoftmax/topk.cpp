#include "fastsoftmax/topk.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "fastsoftmax/simd_kernels.h"
#include "fastsoftmax/thread_pool.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTSOFTMAX_TOPK_X86 1
#include <immintrin.h>
#define FASTSOFTMAX_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTSOFTMAX_TOPK_X86 0
#endif

namespace fastsoftmax {
namespace {

constexpr int kMR = 6;                  // queries per register tile
constexpr int kNR = 16;                 // items per panel / register tile
constexpr index_t kQueryBlock = 192;    // queries per task (32 tiles)
constexpr index_t kMinChunk = 8192;     // smallest item chunk worth a task (multiple of kNR)
constexpr index_t kTargetTasks = 32;    // split items into chunks until there are this many tasks
constexpr index_t kPrefetchPanels = 4;  // how far ahead item rows are prefetched
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- Selection: a binary heap per query with the worst entry on top. -------------------------

// Strict total order "a is worse than b": lower score, or equal score and higher id.
inline bool worse(float sa, std::int64_t ia, float sb, std::int64_t ib) {
  return sa < sb || (sa == sb && ia > ib);
}

struct Heap {
  float* s;
  std::int64_t* id;
  index_t cap;
  index_t size;

  // Inserts (score, item) if it is better than the current worst (or the heap is not full).
  // Returns the new threshold: the score an item must exceed to enter, -inf while not full.
  float offer(float score, std::int64_t item) {
    if (size < cap) {
      index_t pos = size++;
      while (pos > 0) {
        const index_t parent = (pos - 1) / 2;
        if (!worse(score, item, s[parent], id[parent])) break;
        s[pos] = s[parent];
        id[pos] = id[parent];
        pos = parent;
      }
      s[pos] = score;
      id[pos] = item;
    } else {
      if (!worse(s[0], id[0], score, item)) return s[0];
      index_t pos = 0;
      for (;;) {
        const index_t l = 2 * pos + 1;
        if (l >= size) break;
        index_t c = l;
        if (l + 1 < size && worse(s[l + 1], id[l + 1], s[l], id[l])) c = l + 1;
        if (!worse(s[c], id[c], score, item)) break;
        s[pos] = s[c];
        id[pos] = id[c];
        pos = c;
      }
      s[pos] = score;
      id[pos] = item;
    }
    return size < cap ? -kInf : s[0];
  }
};

// ---- Kernels: pack a panel of 16 items (transpose to d x 16, simd_kernels' exact packing) and
// score a tile of MR x 16. The scoring tile is top-k's own: unlike simd::gemm's tile it compares
// the scores with the running thresholds in registers and stores the tile only when a lane
// passes. Both versions compute every score as the same sequential FMA chain over the d
// dimensions, so the AVX2 and the scalar path give bit-identical results.

// panel[p * 16 + l] = items[l * d + p] for l < valid, 0 for valid <= l < 16 (exact copies).
void pack_panel(const float* items, int valid, index_t d, float* panel) {
  simd::pack_rows_transposed(items, valid, d, d, panel);
  if (valid == kNR) return;
  for (index_t p = 0; p < d; ++p) std::fill(panel + p * kNR + valid, panel + (p + 1) * kNR, 0.0f);
}

// Scores q_i . x_l for i < MR, l < 16 (q packed as q[p * kMR + i]). lanes[i] gets the bit mask
// of the lanes l with score > thr[i]; if any is set, the tile is stored (row-major, 16 per row)
// into `tile` and true is returned.
template <int MR>
bool tile_scalar(const float* q, const float* panel, index_t d, const float* thr, float* tile,
                 std::uint32_t* lanes) {
  float acc[MR][kNR] = {};
  for (index_t p = 0; p < d; ++p) {
    const float* x = panel + p * kNR;
    for (int i = 0; i < MR; ++i) {
      const float qi = q[p * kMR + i];
      for (int l = 0; l < kNR; ++l) acc[i][l] = std::fma(qi, x[l], acc[i][l]);
    }
  }
  std::uint32_t any = 0;
  for (int i = 0; i < MR; ++i) {
    std::uint32_t m = 0;
    for (int l = 0; l < kNR; ++l) m |= static_cast<std::uint32_t>(acc[i][l] > thr[i]) << l;
    lanes[i] = m;
    any |= m;
  }
  if (any != 0) std::memcpy(tile, acc, sizeof(acc));
  return any != 0;
}

#if FASTSOFTMAX_TOPK_X86

// Named accumulators (not arrays): GCC otherwise spills the array to the stack on every step.
#define FASTSOFTMAX_ROW_FMA(i)                           \
  if constexpr (MR > i) {                                \
    const __m256 b = _mm256_broadcast_ss(qp + i);       \
    a##i##0 = _mm256_fmadd_ps(b, x0, a##i##0);           \
    a##i##1 = _mm256_fmadd_ps(b, x1, a##i##1);           \
  }
#define FASTSOFTMAX_ROW_CHECK(i)                                                        \
  if constexpr (MR > i) {                                                               \
    const __m256 t = _mm256_broadcast_ss(thr + i);                                      \
    const auto lo = static_cast<std::uint32_t>(                                         \
        _mm256_movemask_ps(_mm256_cmp_ps(a##i##0, t, _CMP_GT_OQ)));                     \
    const auto hi = static_cast<std::uint32_t>(                                         \
        _mm256_movemask_ps(_mm256_cmp_ps(a##i##1, t, _CMP_GT_OQ)));                     \
    lanes[i] = lo | (hi << 8);                                                          \
    any |= lanes[i];                                                                    \
  }
#define FASTSOFTMAX_ROW_STORE(i)                      \
  if constexpr (MR > i) {                             \
    _mm256_storeu_ps(tile + i * kNR, a##i##0);        \
    _mm256_storeu_ps(tile + i * kNR + 8, a##i##1);    \
  }

template <int MR>
FASTSOFTMAX_AVX2 bool tile_avx2(const float* q, const float* panel, index_t d, const float* thr,
                                float* tile, std::uint32_t* lanes) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
  __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
  for (index_t p = 0; p < d; ++p) {
    const __m256 x0 = _mm256_load_ps(panel + p * kNR);
    const __m256 x1 = _mm256_load_ps(panel + p * kNR + 8);
    const float* qp = q + p * kMR;
    FASTSOFTMAX_ROW_FMA(0)
    FASTSOFTMAX_ROW_FMA(1)
    FASTSOFTMAX_ROW_FMA(2)
    FASTSOFTMAX_ROW_FMA(3)
    FASTSOFTMAX_ROW_FMA(4)
    FASTSOFTMAX_ROW_FMA(5)
  }
  std::uint32_t any = 0;
  FASTSOFTMAX_ROW_CHECK(0)
  FASTSOFTMAX_ROW_CHECK(1)
  FASTSOFTMAX_ROW_CHECK(2)
  FASTSOFTMAX_ROW_CHECK(3)
  FASTSOFTMAX_ROW_CHECK(4)
  FASTSOFTMAX_ROW_CHECK(5)
  if (any != 0) {
    FASTSOFTMAX_ROW_STORE(0)
    FASTSOFTMAX_ROW_STORE(1)
    FASTSOFTMAX_ROW_STORE(2)
    FASTSOFTMAX_ROW_STORE(3)
    FASTSOFTMAX_ROW_STORE(4)
    FASTSOFTMAX_ROW_STORE(5)
  }
  return any != 0;
}
#undef FASTSOFTMAX_ROW_FMA
#undef FASTSOFTMAX_ROW_CHECK
#undef FASTSOFTMAX_ROW_STORE

#endif

using TileFn = bool (*)(const float*, const float*, index_t, const float*, float*,
                        std::uint32_t*);

struct Kernels {
  TileFn tile[kMR + 1];
};

std::atomic<bool> g_force_scalar{false};

Kernels select_kernels() {
#if FASTSOFTMAX_TOPK_X86
  if (simd::avx2_fma_available() && !g_force_scalar.load()) {
    return {{nullptr, &tile_avx2<1>, &tile_avx2<2>, &tile_avx2<3>, &tile_avx2<4>, &tile_avx2<5>,
             &tile_avx2<6>}};
  }
#endif
  return {{nullptr, &tile_scalar<1>, &tile_scalar<2>, &tile_scalar<3>, &tile_scalar<4>,
           &tile_scalar<5>, &tile_scalar<6>}};
}

// 64-byte aligned float scratch.
struct AlignedBuffer {
  explicit AlignedBuffer(std::size_t n) : raw(new float[n + 16]) {
    auto addr = reinterpret_cast<std::uintptr_t>(raw.get());
    data = reinterpret_cast<float*>((addr + 63) & ~static_cast<std::uintptr_t>(63));
  }
  std::unique_ptr<float[]> raw;
  float* data;
};

// Sorts the first `size` entries best first (score descending, id ascending) and writes a row of
// k outputs, padded with (-1, -inf).
void write_sorted(std::vector<std::pair<float, std::int64_t>>& entries, index_t k,
                  std::int64_t* ids, float* scores) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    return worse(b.first, b.second, a.first, a.second);
  });
  const auto m = static_cast<index_t>(entries.size());
  for (index_t i = 0; i < m; ++i) {
    scores[i] = entries[i].first;
    ids[i] = entries[i].second;
  }
  for (index_t i = m; i < k; ++i) {
    scores[i] = -kInf;
    ids[i] = -1;
  }
}

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

  const Kernels kern = select_kernels();
  const bool has_exclude = exclude.indptr != nullptr;

  parallel_for(n_qblocks * n_chunks, num_threads, [&](std::int64_t task, int) {
    const index_t qb = task / n_chunks;
    const index_t c = task % n_chunks;
    const index_t q0 = qb * kQueryBlock;
    const index_t nq = std::min(kQueryBlock, n_queries - q0);
    const index_t j_begin = c * chunk;
    const index_t j_end = std::min(n_items, j_begin + chunk);

    std::vector<Heap> heaps(nq);
    std::vector<float> thr(nq + kMR, kInf);  // +inf pads the rows beyond nq
    const bool use_exclude = has_exclude;  // a local: the hot loop must not reload it
    std::vector<std::int64_t> cursor(has_exclude ? nq : 0);
    for (index_t i = 0; i < nq; ++i) {
      const std::size_t slot = static_cast<std::size_t>(c) * n_queries + q0 + i;
      heaps[i] = Heap{heap_s.data() + slot * kk, heap_id.data() + slot * kk, kk, 0};
      thr[i] = -kInf;
      if (has_exclude) {
        const Index* row_begin = exclude.indices + exclude.indptr[q0 + i];
        const Index* row_end = exclude.indices + exclude.indptr[q0 + i + 1];
        cursor[i] = std::lower_bound(row_begin, row_end, static_cast<Index>(j_begin)) -
                    exclude.indices;
      }
    }
    AlignedBuffer panel(static_cast<std::size_t>(kNR) * std::max<index_t>(dim, 1));
    alignas(64) float tile[kMR * kNR];
    std::uint32_t lanes[kMR];
    // Queries packed tile by tile: qpack[(t * dim + p) * kMR + i] = query (t * kMR + i), dim p.
    const index_t n_tiles = (nq + kMR - 1) / kMR;
    AlignedBuffer qpack(static_cast<std::size_t>(n_tiles * kMR) * std::max<index_t>(dim, 1));
    for (index_t t = 0; t < n_tiles; ++t) {
      for (int i = 0; i < kMR; ++i) {
        const index_t qi = t * kMR + i;
        float* dst = qpack.data + t * dim * kMR + i;
        if (qi < nq) {
          const float* src = queries + (q0 + qi) * dim;
          for (index_t p = 0; p < dim; ++p) dst[p * kMR] = src[p];
        } else {
          for (index_t p = 0; p < dim; ++p) dst[p * kMR] = 0.0f;
        }
      }
    }

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
      pack_panel(items + j0 * dim, valid, dim, panel.data);
      const std::uint32_t valid_lanes = (1u << valid) - 1;
      for (index_t i0 = 0; i0 < nq; i0 += kMR) {
        const int mr = static_cast<int>(std::min<index_t>(kMR, nq - i0));
        const float* qtile = qpack.data + i0 * dim;  // i0 = tile * kMR
        if (!kern.tile[mr](qtile, panel.data, dim, thr.data() + i0, tile, lanes)) continue;
        for (int i = 0; i < mr; ++i) {
          std::uint32_t m = lanes[i] & valid_lanes;
          if (m == 0) continue;
          const index_t qi = i0 + i;
          float t = thr[qi];
          const float* row = tile + i * kNR;
          for (; m != 0; m &= m - 1) {
            const int l = __builtin_ctz(m);
            if (!(row[l] > t)) continue;  // the threshold may have risen since the kernel
            const std::int64_t item = j0 + l;
            if (use_exclude) {
              const std::int64_t end = exclude.indptr[q0 + qi + 1];
              std::int64_t& cur = cursor[qi];
              while (cur < end && exclude.indices[cur] < item) ++cur;
              if (cur < end && exclude.indices[cur] == item) continue;
            }
            t = heaps[qi].offer(row[l], item);
          }
          thr[qi] = t;
        }
      }
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
        Heap merged{ms.data(), mi.data(), kk, 0};
        for (index_t c = 0; c < n_chunks; ++c) {
          const std::size_t slot = static_cast<std::size_t>(c) * n_queries + b;
          for (index_t e = 0; e < heap_size[slot]; ++e) {
            merged.offer(heap_s[slot * kk + e], heap_id[slot * kk + e]);
          }
        }
        for (index_t e = 0; e < merged.size; ++e) entries.emplace_back(ms[e], mi[e]);
      }
      write_sorted(entries, k, out_ids + b * k, out_scores + b * k);
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

bool topk_uses_avx2() { return simd::avx2_fma_available() && !g_force_scalar.load(); }

void topk_force_scalar(bool on) { g_force_scalar.store(on); }

template void validate_exclude<std::int32_t>(const std::int64_t*, index_t, const std::int32_t*,
                                             index_t, index_t, index_t);
template void validate_exclude<std::int64_t>(const std::int64_t*, index_t, const std::int64_t*,
                                             index_t, index_t, index_t);
template void topk<std::int32_t>(const float*, index_t, const float*, index_t, index_t, index_t,
                                 ExcludeCsr<std::int32_t>, std::int64_t*, float*, int);
template void topk<std::int64_t>(const float*, index_t, const float*, index_t, index_t, index_t,
                                 ExcludeCsr<std::int64_t>, std::int64_t*, float*, int);

}  // namespace fastsoftmax
