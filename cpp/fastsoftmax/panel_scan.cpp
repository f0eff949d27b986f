#include "fastsoftmax/panel_scan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "fastsoftmax/simd_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTSOFTMAX_SCAN_X86 1
#include <immintrin.h>
#define FASTSOFTMAX_AVX2 __attribute__((target("avx2,fma")))
#else
#define FASTSOFTMAX_SCAN_X86 0
#endif

namespace fastsoftmax::scan {

float Heap::offer(float score, std::int64_t item) {
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

namespace {

// ---- Kernels. The scoring tile is the scan's own: unlike simd::gemm's tile it compares the
// scores with the running thresholds in registers and stores the tile only when a lane passes.

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

#if FASTSOFTMAX_SCAN_X86

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


// One query x 4 panels: eight accumulators (two per panel), each lane one sequential FMA chain.
FASTSOFTMAX_AVX2 std::uint64_t quad_avx2(const float* q, const float* panels, index_t d,
                                         float thr, float* scores) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  const float* x0 = panels;
  const float* x1 = panels + kNR * d;
  const float* x2 = panels + 2 * kNR * d;
  const float* x3 = panels + 3 * kNR * d;
  for (index_t p = 0; p < d; ++p) {
    const __m256 b = _mm256_broadcast_ss(q + p * kMR);
    const index_t o = p * kNR;
    a0 = _mm256_fmadd_ps(b, _mm256_load_ps(x0 + o), a0);
    a1 = _mm256_fmadd_ps(b, _mm256_load_ps(x0 + o + 8), a1);
    a2 = _mm256_fmadd_ps(b, _mm256_load_ps(x1 + o), a2);
    a3 = _mm256_fmadd_ps(b, _mm256_load_ps(x1 + o + 8), a3);
    a4 = _mm256_fmadd_ps(b, _mm256_load_ps(x2 + o), a4);
    a5 = _mm256_fmadd_ps(b, _mm256_load_ps(x2 + o + 8), a5);
    a6 = _mm256_fmadd_ps(b, _mm256_load_ps(x3 + o), a6);
    a7 = _mm256_fmadd_ps(b, _mm256_load_ps(x3 + o + 8), a7);
  }
  // (no lambda here: it would not inherit the function's AVX2 target)
  const __m256 t = _mm256_set1_ps(thr);
#define FASTSOFTMAX_BITS(a, shift)                                                      \
  (static_cast<std::uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(a, t, _CMP_GT_OQ))) << shift)
  const std::uint64_t mask = FASTSOFTMAX_BITS(a0, 0) | FASTSOFTMAX_BITS(a1, 8) |
                             FASTSOFTMAX_BITS(a2, 16) | FASTSOFTMAX_BITS(a3, 24) |
                             FASTSOFTMAX_BITS(a4, 32) | FASTSOFTMAX_BITS(a5, 40) |
                             FASTSOFTMAX_BITS(a6, 48) | FASTSOFTMAX_BITS(a7, 56);
#undef FASTSOFTMAX_BITS
  if (mask != 0) {
    _mm256_storeu_ps(scores, a0);
    _mm256_storeu_ps(scores + 8, a1);
    _mm256_storeu_ps(scores + 16, a2);
    _mm256_storeu_ps(scores + 24, a3);
    _mm256_storeu_ps(scores + 32, a4);
    _mm256_storeu_ps(scores + 40, a5);
    _mm256_storeu_ps(scores + 48, a6);
    _mm256_storeu_ps(scores + 56, a7);
  }
  return mask;
}

#endif


std::atomic<bool> g_force_scalar{false};

}  // namespace

Kernels select_kernels() {
#if FASTSOFTMAX_SCAN_X86
  if (uses_avx2()) {
    return {{nullptr, &tile_avx2<1>, &tile_avx2<2>, &tile_avx2<3>, &tile_avx2<4>, &tile_avx2<5>,
             &tile_avx2<6>},
            &quad_avx2};
  }
#endif
  return {{nullptr, &tile_scalar<1>, &tile_scalar<2>, &tile_scalar<3>, &tile_scalar<4>,
           &tile_scalar<5>, &tile_scalar<6>},
          nullptr};
}

bool uses_avx2() {
#if FASTSOFTMAX_SCAN_X86
  return simd::avx2_fma_available() && !g_force_scalar.load();
#else
  return false;
#endif
}

void force_scalar(bool on) { g_force_scalar.store(on); }

AlignedBuffer::AlignedBuffer(std::size_t n) : raw(new float[n + 16]) {
  auto addr = reinterpret_cast<std::uintptr_t>(raw.get());
  data = reinterpret_cast<float*>((addr + 63) & ~static_cast<std::uintptr_t>(63));
}

void pack_panel(const float* items, int valid, index_t d, float* panel) {
  simd::pack_rows_transposed(items, valid, d, d, panel);
  if (valid == kNR) return;
  for (index_t p = 0; p < d; ++p) std::fill(panel + p * kNR + valid, panel + (p + 1) * kNR, 0.0f);
}

void pack_queries(const float* rows, const index_t* order, index_t nq, index_t d, float* qpack) {
  const index_t n_tiles = (nq + kMR - 1) / kMR;
  for (index_t t = 0; t < n_tiles; ++t) {
    for (int i = 0; i < kMR; ++i) {
      const index_t qi = t * kMR + i;
      float* dst = qpack + t * d * kMR + i;
      if (qi < nq) {
        const float* src = rows + (order != nullptr ? order[qi] : qi) * d;
        for (index_t p = 0; p < d; ++p) dst[p * kMR] = src[p];
      } else {
        for (index_t p = 0; p < d; ++p) dst[p * kMR] = 0.0f;
      }
    }
  }
}

template <class Index>
void scan_panel(const Kernels& kern, const float* qpack, index_t nq, const float* panel, int valid,
                index_t d, const std::int64_t* ids, std::int64_t first_id, Heap* heaps,
                float* thr, ExcludeCursors<Index> exclude, float* tile) {
  std::uint32_t lanes[kMR];
  const std::uint32_t valid_lanes = (1u << valid) - 1;
  const bool use_exclude = exclude.indices != nullptr;
  for (index_t i0 = 0; i0 < nq; i0 += kMR) {
    const int mr = static_cast<int>(std::min<index_t>(kMR, nq - i0));
    const float* qtile = qpack + i0 * d;  // i0 = tile * kMR
    if (!kern.tile[mr](qtile, panel, d, thr + i0, tile, lanes)) continue;
    for (int i = 0; i < mr; ++i) {
      std::uint32_t m = lanes[i] & valid_lanes;
      if (m == 0) continue;
      const index_t qi = i0 + i;
      float t = thr[qi];
      const float* row = tile + i * kNR;
      for (; m != 0; m &= m - 1) {
        const int l = __builtin_ctz(m);
        if (!(row[l] > t)) continue;  // the threshold may have risen since the kernel
        const std::int64_t item = ids != nullptr ? ids[l] : first_id + l;
        if (use_exclude) {
          const std::int64_t end = exclude.end[qi];
          std::int64_t& cur = exclude.cursor[qi];
          while (cur < end && exclude.indices[cur] < item) ++cur;
          if (cur < end && exclude.indices[cur] == item) continue;
        }
        t = heaps[qi].offer(row[l], item);
      }
      thr[qi] = t;
    }
  }
}

template <class Index>
void scan_panels_one_query(const Kernels& kern, const float* qpack, const float* panels,
                           index_t n_items, index_t d, const std::int64_t* ids,
                           std::int64_t first_id, Heap& heap, float& thr,
                           ExcludeCursors<Index> exclude, float* scores) {
  constexpr index_t kQuad = 4 * kNR;
  float thr_pad[kMR] = {thr, kInf, kInf, kInf, kInf, kInf};
  index_t j0 = 0;
  if (kern.quad != nullptr) {
    const bool use_exclude = exclude.indices != nullptr;
    for (; j0 + kQuad <= n_items; j0 += kQuad) {
      // The next four panels are read from memory while these are scored.
      const index_t next = std::min(n_items, j0 + 2 * kQuad);
      const char* from = reinterpret_cast<const char*>(panels + (j0 + kQuad) * d);
      const char* to = reinterpret_cast<const char*>(panels + ((next + kNR - 1) / kNR * kNR) * d);
      for (; from < to; from += 64) __builtin_prefetch(from, 0, 0);
      std::uint64_t m = kern.quad(qpack, panels + j0 * d, d, thr, scores);
      for (; m != 0; m &= m - 1) {
        const int l = __builtin_ctzll(m);
        if (!(scores[l] > thr)) continue;  // the threshold may have risen since the kernel
        const std::int64_t item = ids != nullptr ? ids[j0 + l] : first_id + j0 + l;
        if (use_exclude) {
          const std::int64_t end = exclude.end[0];
          std::int64_t& cur = exclude.cursor[0];
          while (cur < end && exclude.indices[cur] < item) ++cur;
          if (cur < end && exclude.indices[cur] == item) continue;
        }
        thr = heap.offer(scores[l], item);
      }
    }
  }
  for (; j0 < n_items; j0 += kNR) {  // the rest panel by panel
    const int valid = static_cast<int>(std::min<index_t>(kNR, n_items - j0));
    thr_pad[0] = thr;
    scan_panel<Index>(kern, qpack, 1, panels + j0 * d, valid, d,
                      ids != nullptr ? ids + j0 : nullptr, first_id + j0, &heap, thr_pad,
                      exclude, scores);
    thr = thr_pad[0];
  }
}

void write_sorted(std::vector<std::pair<float, std::int64_t>>& entries, index_t k,
                  std::int64_t* ids, float* scores) {
  const auto m = std::min(k, static_cast<index_t>(entries.size()));
  std::partial_sort(entries.begin(), entries.begin() + m, entries.end(),
                    [](const auto& a, const auto& b) {
                      return worse(b.first, b.second, a.first, a.second);
                    });
  for (index_t i = 0; i < m; ++i) {
    scores[i] = entries[i].first;
    ids[i] = entries[i].second;
  }
  for (index_t i = m; i < k; ++i) {
    scores[i] = -kInf;
    ids[i] = -1;
  }
}

template void scan_panels_one_query<std::int32_t>(const Kernels&, const float*, const float*,
                                                  index_t, index_t, const std::int64_t*,
                                                  std::int64_t, Heap&, float&,
                                                  ExcludeCursors<std::int32_t>, float*);
template void scan_panels_one_query<std::int64_t>(const Kernels&, const float*, const float*,
                                                  index_t, index_t, const std::int64_t*,
                                                  std::int64_t, Heap&, float&,
                                                  ExcludeCursors<std::int64_t>, float*);
template void scan_panel<std::int32_t>(const Kernels&, const float*, index_t, const float*, int,
                                       index_t, const std::int64_t*, std::int64_t, Heap*, float*,
                                       ExcludeCursors<std::int32_t>, float*);
template void scan_panel<std::int64_t>(const Kernels&, const float*, index_t, const float*, int,
                                       index_t, const std::int64_t*, std::int64_t, Heap*, float*,
                                       ExcludeCursors<std::int64_t>, float*);

}  // namespace fastsoftmax::scan
