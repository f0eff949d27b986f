#include "fastsoftmax/ivf_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <utility>

#include "fastsoftmax/panel_scan.h"
#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

using scan::kInf;
using scan::kMR;
using scan::kNR;

constexpr index_t kAssignBlock = 16384;      // points per nearest-centroid top-k call
constexpr index_t kProbeBlock = 192;         // queries per probe-selection task
constexpr index_t kMinProbeChunk = 512;      // centroids per task when one query block is split
constexpr index_t kMaxProbeChunks = 8;
constexpr index_t kMaxSlotEntries = 1 << 22;  // bound on a search block's (query, probe) heaps
constexpr float kSplitEps = 1.0f / 1024;     // relative perturbation when splitting a cluster

// ---- k-means ---------------------------------------------------------------------------------

// A seeded sample of m distinct rows of items (in random order), copied into a matrix.
RowMatrixXf sample_rows(const float* items, index_t n, index_t d, index_t m, std::uint64_t seed) {
  RowMatrixXf sample(m, d);
  std::vector<index_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  Rng rng(seed, 0);
  for (index_t i = 0; i < m; ++i) {  // partial Fisher-Yates
    const auto j = i + static_cast<index_t>(rng.uniform_int(static_cast<std::uint64_t>(n - i)));
    std::swap(perm[i], perm[j]);
    std::memcpy(sample.row(i).data(), items + perm[i] * d, sizeof(float) * d);
  }
  return sample;
}

// labels[i] = the list of point i (lowest id on ties), by the top-1 inner product on the top-k
// kernel: spherical lists take the largest x . c (unit centroids); L2 lists the nearest centroid,
// the largest [x, 1] . [c, -|c|^2 / 2]. Points are processed in blocks of kAssignBlock.
void assign_lists(const float* points, index_t m, index_t d, const RowMatrixXf& centroids,
                  bool spherical, std::int64_t* labels, int num_threads) {
  const index_t n_lists = centroids.rows(), da = spherical ? d : d + 1;
  RowMatrixXf c_aug(n_lists, da);
  c_aug.leftCols(d) = centroids;
  if (!spherical) c_aug.col(d) = -0.5f * centroids.rowwise().squaredNorm();
  RowMatrixXf x_aug(spherical ? 0 : std::min(m, kAssignBlock), da);
  std::vector<float> best(static_cast<std::size_t>(std::min(m, kAssignBlock)));
  for (index_t i0 = 0; i0 < m; i0 += kAssignBlock) {
    const index_t nb = std::min(kAssignBlock, m - i0);
    const float* block = points + i0 * d;
    if (!spherical) {
      x_aug.topRows(nb).leftCols(d) = ConstMapRowMatrixXf(block, nb, d);
      x_aug.topRows(nb).col(d).setOnes();
      block = x_aug.data();
    }
    topk(block, nb, c_aug.data(), n_lists, da, 1, labels + i0, best.data(), num_threads);
    for (index_t i = 0; i < nb; ++i) labels[i0 + i] = std::max<std::int64_t>(labels[i0 + i], 0);
    check_interrupt();
  }
}

// Spherical lists: centroids scaled to unit norm (a zero centroid stays zero).
void normalize_rows(RowMatrixXf& centroids) {
  for (index_t c = 0; c < centroids.rows(); ++c) {
    const float norm = centroids.row(c).norm();
    if (norm > 0) centroids.row(c) /= norm;
  }
}

// Every empty cluster takes half of the largest one: a copy of its centroid, both perturbed in
// opposite directions so that the next assignment separates them.
void split_empty(RowMatrixXf& centroids, std::vector<index_t>& counts) {
  const index_t n_lists = centroids.rows();
  for (index_t e = 0; e < n_lists; ++e) {
    if (counts[e] > 0) continue;
    const auto big = static_cast<index_t>(
        std::max_element(counts.begin(), counts.end()) - counts.begin());  // first maximum
    for (index_t p = 0; p < centroids.cols(); ++p) {
      const float sign = (p % 2 == 0) ? 1.0f : -1.0f;
      const float v = centroids(big, p);
      centroids(e, p) = v * (1 + sign * kSplitEps);
      centroids(big, p) = v * (1 - sign * kSplitEps);
    }
    counts[e] = counts[big] / 2;
    counts[big] -= counts[e];
  }
}

// Spherical lists are probed by q . c_l with c_l = (unit centroid) x (largest item norm in the
// list): an estimate of the list's best inner product. Lists of a direction hold items of very
// different norms (a popular item's embedding may be 1000 times longer than a rare one's), and
// the best inner products come from the long ones; probing by direction alone misses them.
void scale_by_max_norm(const float* items, index_t d, const std::vector<std::int64_t>& labels,
                       RowMatrixXf& centroids) {
  std::vector<float> max_norm(static_cast<std::size_t>(centroids.rows()), 0.0f);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    const float norm = ConstMapRowMatrixXf(items + i * d, 1, d).norm();
    max_norm[labels[i]] = std::max(max_norm[labels[i]], norm);
  }
  for (index_t c = 0; c < centroids.rows(); ++c) centroids.row(c) *= max_norm[c];
}

// Lloyd's k-means on the rows of `train` (a random sample in random order), starting from its
// first n_lists rows.
RowMatrixXf kmeans(const RowMatrixXf& train, index_t n_lists, int iterations, bool spherical,
                   int num_threads) {
  const index_t m = train.rows(), d = train.cols();
  RowMatrixXf centroids = train.topRows(n_lists);
  if (spherical) normalize_rows(centroids);

  std::vector<std::int64_t> labels(m);
  std::vector<index_t> counts(n_lists);
  RowMatrixXd sums(n_lists, d);
  for (int it = 0; it < iterations; ++it) {
    assign_lists(train.data(), m, d, centroids, spherical, labels.data(), num_threads);
    sums.setZero();
    std::fill(counts.begin(), counts.end(), 0);
    for (index_t i = 0; i < m; ++i) {  // in row order: deterministic
      sums.row(labels[i]) += train.row(i).cast<double>();
      ++counts[labels[i]];
    }
    for (index_t c = 0; c < n_lists; ++c) {
      if (counts[c] > 0) centroids.row(c) = (sums.row(c) / counts[c]).cast<float>();
    }
    split_empty(centroids, counts);
    if (spherical) normalize_rows(centroids);
  }
  return centroids;
}

// ---- search ------------------------------------------------------------------------------------

// Per-query exclusion cursors positioned at the first excluded id >= first_id.
template <class Index>
void position_cursors(const ExcludeCsr<Index>& exclude, const index_t* queries, index_t nq,
                      std::int64_t first_id, std::int64_t* cursor, std::int64_t* end) {
  for (index_t i = 0; i < nq; ++i) {
    const index_t b = queries[i];
    const Index* row_begin = exclude.indices + exclude.indptr[b];
    const Index* row_end = exclude.indices + exclude.indptr[b + 1];
    cursor[i] = std::lower_bound(row_begin, row_end, static_cast<Index>(first_id)) -
                exclude.indices;
    end[i] = exclude.indptr[b + 1];
  }
}

}  // namespace

// The probes of one block of queries: probes[b * n_probe + r] is query b's r-th best list
// (-1 beyond n_probed[b], when fewer lists have a finite score).
struct IvfIndex::Probes {
  std::vector<std::int64_t> lists;
  std::vector<index_t> count;
};

// The (query, probe) pairs of a block grouped by list: entries [offsets[l], offsets[l + 1]) probe
// list l, in query order.
struct IvfIndex::ListGroups {
  std::vector<index_t> offsets;
  std::vector<index_t> query;
  std::vector<index_t> rank;
  std::vector<index_t> active;  // lists with at least one entry
};

// Heaps of kk entries per (query, probe) slot of a search block.
struct IvfIndex::SlotHeaps {
  index_t cap = 0;
  std::vector<float> s;
  std::vector<std::int64_t> id;
  std::vector<index_t> size;
};

// ---- construction ------------------------------------------------------------------------------

IvfIndex IvfIndex::build(const float* items, index_t n_items, index_t dim,
                         const IvfBuildOptions& options) {
  if (n_items < 1 || dim < 1) {
    throw_invalid("items: expected a non-empty (n_items, dim) matrix, got (", n_items, ", ", dim,
                  ")");
  }
  if (options.n_lists < 1 || options.n_lists > n_items) {
    throw_invalid("n_lists: expected an integer in [1, n_items = ", n_items, "], got ",
                  options.n_lists);
  }
  if (options.iterations < 0) {
    throw_invalid("iterations: expected an integer >= 0, got ", options.iterations);
  }
  if (options.max_train < options.n_lists) {
    throw_invalid("max_train: expected at least n_lists = ", options.n_lists, " points, got ",
                  options.max_train);
  }
  const int threads = resolve_num_threads(options.num_threads);
  for (index_t i = 0; i < n_items * dim; ++i) {
    if (!std::isfinite(items[i])) {
      throw_invalid("items: expected finite values, got ", items[i], " in row ", i / dim);
    }
  }
  const index_t m = std::min(n_items, options.max_train);
  const RowMatrixXf train = sample_rows(items, n_items, dim, m, options.seed);
  RowMatrixXf centroids =
      kmeans(train, options.n_lists, options.iterations, options.spherical, threads);

  std::vector<std::int64_t> labels(n_items);
  assign_lists(items, n_items, dim, centroids, options.spherical, labels.data(), threads);
  if (options.spherical) scale_by_max_norm(items, dim, labels, centroids);

  IvfIndex index;
  index.dim_ = dim;
  index.centroids_.assign(centroids.data(), centroids.data() + centroids.size());
  index.list_offsets_.assign(options.n_lists + 1, 0);
  for (index_t i = 0; i < n_items; ++i) ++index.list_offsets_[labels[i] + 1];
  std::partial_sum(index.list_offsets_.begin(), index.list_offsets_.end(),
                   index.list_offsets_.begin());
  index.list_ids_.resize(n_items);
  std::vector<std::int64_t> fill(index.list_offsets_.begin(), index.list_offsets_.end() - 1);
  for (index_t i = 0; i < n_items; ++i) index.list_ids_[fill[labels[i]]++] = i;  // ascending
  index.position_.resize(n_items);
  for (index_t pos = 0; pos < n_items; ++pos) index.position_[index.list_ids_[pos]] = pos;
  index.pack_rows(items, index.list_ids_.data());  // rows in id order
  return index;
}

IvfIndex::IvfIndex(index_t dim, std::vector<float> centroids,
                   std::vector<std::int64_t> list_offsets, std::vector<std::int64_t> list_ids,
                   const float* vectors)
    : dim_(dim),
      centroids_(std::move(centroids)),
      list_offsets_(std::move(list_offsets)),
      list_ids_(std::move(list_ids)) {
  const auto n = static_cast<index_t>(list_ids_.size());
  if (dim < 1) throw_invalid("dim: expected >= 1, got ", dim);
  if (list_offsets_.size() < 2) throw_invalid("list_offsets: expected at least 2 entries");
  const index_t n_lists = this->n_lists();
  if (static_cast<index_t>(centroids_.size()) != n_lists * dim) {
    throw_invalid("centroids: expected ", n_lists, " x ", dim, " values, got ", centroids_.size());
  }
  if (list_offsets_.front() != 0 || list_offsets_.back() != n) {
    throw_invalid("list_offsets: expected to run from 0 to n_items = ", n);
  }
  position_.assign(n, -1);
  for (index_t l = 0; l < n_lists; ++l) {
    if (list_offsets_[l + 1] < list_offsets_[l] || list_offsets_[l + 1] > n) {
      throw_invalid("list_offsets: expected non-decreasing offsets in [0, ", n, "], list ", l,
                    " is not");
    }
    for (std::int64_t pos = list_offsets_[l]; pos < list_offsets_[l + 1]; ++pos) {
      const std::int64_t id = list_ids_[pos];
      if (id < 0 || id >= n || position_[id] >= 0) {
        throw_invalid("list_ids: expected a permutation of [0, ", n, "), got ", id,
                      " at position ", pos);
      }
      if (pos > list_offsets_[l] && id < list_ids_[pos - 1]) {
        throw_invalid("list_ids: expected ascending ids within each list, list ", l, " is not");
      }
      position_[id] = pos;
    }
  }
  for (index_t i = 0; i < n * dim; ++i) {
    if (!std::isfinite(vectors[i])) throw_invalid("vectors: expected finite values");
  }
  for (const float c : centroids_) {
    if (!std::isfinite(c)) throw_invalid("centroids: expected finite values");
  }
  pack_rows(vectors, nullptr);  // rows in list order
}

// panels_: each list's rows (row of position pos: rows[ids[pos]] or rows[pos]) as panels of 16.
void IvfIndex::pack_rows(const float* rows, const std::int64_t* ids) {
  const index_t n_lists = this->n_lists(), d = dim_;
  panel_offsets_.assign(n_lists + 1, 0);
  for (index_t l = 0; l < n_lists; ++l) {
    const index_t size = list_offsets_[l + 1] - list_offsets_[l];
    panel_offsets_[l + 1] = panel_offsets_[l] + (size + kNR - 1) / kNR;
  }
  panels_.assign(static_cast<std::size_t>(panel_offsets_[n_lists] * kNR * d), 0.0f);
  std::vector<float> gathered(static_cast<std::size_t>(kNR * d));
  for (index_t l = 0; l < n_lists; ++l) {
    for (std::int64_t pos = list_offsets_[l]; pos < list_offsets_[l + 1]; pos += kNR) {
      const int valid = static_cast<int>(std::min<std::int64_t>(kNR, list_offsets_[l + 1] - pos));
      const float* src = rows + pos * d;
      if (ids != nullptr) {
        for (int i = 0; i < valid; ++i) {
          std::memcpy(gathered.data() + i * d, rows + ids[pos + i] * d, sizeof(float) * d);
        }
        src = gathered.data();
      }
      const index_t panel = panel_offsets_[l] + (pos - list_offsets_[l]) / kNR;
      scan::pack_panel(src, valid, d, panels_.data() + panel * kNR * d);
    }
  }
  centroid_panels_.assign(static_cast<std::size_t>((n_lists + kNR - 1) / kNR * kNR * d), 0.0f);
  for (index_t c0 = 0; c0 < n_lists; c0 += kNR) {
    const int valid = static_cast<int>(std::min<index_t>(kNR, n_lists - c0));
    scan::pack_panel(centroids_.data() + c0 * d, valid, d, centroid_panels_.data() + c0 * d);
  }
}

void IvfIndex::copy_vectors(float* out) const {
  for (index_t pos = 0; pos < n_items(); ++pos) gather_position(pos, out + pos * dim_);
}

void IvfIndex::gather(const std::int64_t* ids, index_t n, float* out) const {
  for (index_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= n_items()) {
      throw_out_of_range("ids: item id ", ids[i], " out of range [0, ", n_items(), ")");
    }
    gather_position(position_[ids[i]], out + i * dim_);
  }
}

// The vector at list position pos, read back from its panel (exact copies).
void IvfIndex::gather_position(std::int64_t pos, float* out) const {
  const auto list = static_cast<index_t>(
      std::upper_bound(list_offsets_.begin(), list_offsets_.end(), pos) - list_offsets_.begin() -
      1);
  const index_t in_list = pos - list_offsets_[list];
  const float* panel = panels_.data() + (panel_offsets_[list] + in_list / kNR) * kNR * dim_;
  for (index_t p = 0; p < dim_; ++p) out[p] = panel[p * kNR + in_list % kNR];
}

// ---- search stages -----------------------------------------------------------------------------

// Probes of queries [0, nb): the n_probe centroids with the largest inner products.
IvfIndex::Probes IvfIndex::select_probes(const float* queries, index_t nb, index_t n_probe,
                                          int num_threads) const {
  const index_t n_lists = this->n_lists(), d = dim_;
  // Tasks: query blocks x centroid chunks. A single block (a lone query, a small batch) splits
  // the centroids so that the threads share the scan; the split depends on (nb, n_lists) only.
  const index_t n_blocks = (nb + kProbeBlock - 1) / kProbeBlock;
  const index_t n_chunks =
      n_blocks > 1 ? 1 : std::clamp<index_t>(n_lists / kMinProbeChunk, 1, kMaxProbeChunks);
  const index_t chunk = (n_lists + n_chunks - 1) / n_chunks / kNR * kNR + kNR;
  std::vector<float> found_s(static_cast<std::size_t>(n_chunks * nb * n_probe));
  std::vector<std::int64_t> found_id(found_s.size());
  std::vector<index_t> found(static_cast<std::size_t>(n_chunks * nb), 0);
  const scan::Kernels kern = scan::select_kernels();
  parallel_for(n_blocks * n_chunks, num_threads, [&](std::int64_t task, int) {
    const index_t q0 = task / n_chunks * kProbeBlock, nq = std::min(kProbeBlock, nb - q0);
    const index_t c = task % n_chunks, c0 = c * chunk, c1 = std::min(n_lists, c0 + chunk);
    if (c0 >= c1) return;
    std::vector<scan::Heap> heaps(nq);
    std::vector<float> thr(nq + kMR, kInf);
    for (index_t i = 0; i < nq; ++i) {
      const std::size_t slot = (c * nb + q0 + i) * n_probe;
      heaps[i] = scan::Heap{found_s.data() + slot, found_id.data() + slot, n_probe, 0};
      thr[i] = -kInf;
    }
    scan::AlignedBuffer qpack(static_cast<std::size_t>((nq + kMR - 1) / kMR * kMR * d));
    scan::pack_queries(queries + q0 * d, nullptr, nq, d, qpack.data);
    alignas(64) float tile[kMR * kNR];
    const float* panels = centroid_panels_.data() + c0 * d;
    if (nq == 1) {
      scan::scan_panels_one_query<std::int64_t>(kern, qpack.data, panels, c1 - c0, d, nullptr,
                                                c0, heaps[0], thr[0], {}, tile);
    } else {
      for (index_t j = c0; j < c1; j += kNR) {
        const int valid = static_cast<int>(std::min<index_t>(kNR, c1 - j));
        scan::scan_panel<std::int64_t>(kern, qpack.data, nq, panels + (j - c0) * d, valid, d,
                                       nullptr, j, heaps.data(), thr.data(), {}, tile);
      }
    }
    for (index_t i = 0; i < nq; ++i) found[c * nb + q0 + i] = heaps[i].size;
  });
  // Each query's best n_probe lists over the chunks, best first.
  Probes probes{std::vector<std::int64_t>(nb * n_probe, -1), std::vector<index_t>(nb, 0)};
  std::vector<std::pair<float, std::int64_t>> entries;
  std::vector<float> scores(n_probe);
  for (index_t b = 0; b < nb; ++b) {
    entries.clear();
    for (index_t c = 0; c < n_chunks; ++c) {
      const std::size_t slot = (c * nb + b) * n_probe;
      for (index_t e = 0; e < found[c * nb + b]; ++e) {
        entries.emplace_back(found_s[slot + e], found_id[slot + e]);
      }
    }
    scan::write_sorted(entries, n_probe, probes.lists.data() + b * n_probe, scores.data());
    probes.count[b] = std::min<index_t>(n_probe, static_cast<index_t>(entries.size()));
  }
  return probes;
}

IvfIndex::ListGroups IvfIndex::group_by_list(const Probes& probes, index_t nb, index_t n_probe, index_t n_lists) {
  ListGroups g;
  g.offsets.assign(n_lists + 1, 0);
  for (index_t b = 0; b < nb; ++b) {
    for (index_t r = 0; r < probes.count[b]; ++r) ++g.offsets[probes.lists[b * n_probe + r] + 1];
  }
  for (index_t l = 0; l < n_lists; ++l) {
    if (g.offsets[l + 1] > 0) g.active.push_back(l);
    g.offsets[l + 1] += g.offsets[l];
  }
  g.query.resize(g.offsets[n_lists]);
  g.rank.resize(g.offsets[n_lists]);
  std::vector<index_t> fill(g.offsets.begin(), g.offsets.end() - 1);
  for (index_t b = 0; b < nb; ++b) {
    for (index_t r = 0; r < probes.count[b]; ++r) {
      const index_t e = fill[probes.lists[b * n_probe + r]]++;
      g.query[e] = b;
      g.rank[e] = r;
    }
  }
  return g;
}

// Scans every probed list once against all the queries probing it; the best kk items of (query b,
// probe r) go to slot b * n_probe + r of `slots`.
template <class Index>
void IvfIndex::scan_lists(const float* queries, const ListGroups& groups, index_t n_probe,
                          ExcludeCsr<Index> exclude, index_t q_base, SlotHeaps& slots,
                          int num_threads) const {
  const index_t d = dim_, kk = slots.cap;
  const scan::Kernels kern = scan::select_kernels();
  const auto n_active = static_cast<index_t>(groups.active.size());
  parallel_for(n_active, num_threads, [&](std::int64_t task, int) {
    const index_t list = groups.active[task];
    const index_t e0 = groups.offsets[list], nq = groups.offsets[list + 1] - e0;
    const index_t* order = groups.query.data() + e0;
    std::vector<scan::Heap> heaps(nq);
    std::vector<float> thr(nq + kMR, kInf);
    for (index_t i = 0; i < nq; ++i) {
      const std::size_t slot = order[i] * n_probe + groups.rank[e0 + i];
      heaps[i] = scan::Heap{slots.s.data() + slot * kk, slots.id.data() + slot * kk, kk, 0};
      thr[i] = -kInf;
    }
    scan::AlignedBuffer qpack(static_cast<std::size_t>((nq + kMR - 1) / kMR * kMR * d));
    scan::pack_queries(queries, order, nq, d, qpack.data);
    const std::int64_t pos0 = list_offsets_[list], size = list_offsets_[list + 1] - pos0;
    std::vector<std::int64_t> cursor, end;
    scan::ExcludeCursors<Index> cursors;
    if (exclude.indptr != nullptr && size > 0) {
      cursor.resize(nq);
      end.resize(nq);
      std::vector<index_t> global(order, order + nq);
      for (auto& b : global) b += q_base;
      position_cursors(exclude, global.data(), nq, list_ids_[pos0], cursor.data(), end.data());
      cursors = {exclude.indices, cursor.data(), end.data()};
    }
    alignas(64) float tile[kMR * kNR];
    const float* panels = panels_.data() + panel_offsets_[list] * kNR * d;
    if (nq == 1) {
      scan::scan_panels_one_query<Index>(kern, qpack.data, panels, size, d,
                                         list_ids_.data() + pos0, 0, heaps[0], thr[0], cursors,
                                         tile);
    } else {
      for (std::int64_t off = 0; off < size; off += kNR) {
        const int valid = static_cast<int>(std::min<std::int64_t>(kNR, size - off));
        scan::scan_panel<Index>(kern, qpack.data, nq, panels + off * d, valid, d,
                                list_ids_.data() + pos0 + off, 0, heaps.data(), thr.data(),
                                cursors, tile);
      }
    }
    for (index_t i = 0; i < nq; ++i) slots.size[order[i] * n_probe + groups.rank[e0 + i]] = heaps[i].size;
  });
}

// Scans lists beyond the probed ones, in the query's centroid ranking, into `heap` until it is
// full (or every list has been scanned). `query` is query b of the batch (row q_base + b of the
// exclusion lists).
template <class Index>
void IvfIndex::scan_more_lists(const float* query, const std::int64_t* probed, index_t n_probed,
                               ExcludeCsr<Index> exclude, index_t q_global,
                               scan::Heap& heap) const {
  const index_t n_lists = this->n_lists(), d = dim_;
  std::vector<std::pair<float, std::int64_t>> ranking(n_lists);
  for (index_t l = 0; l < n_lists; ++l) {
    float s = 0.0f;  // the kernel's FMA chain
    for (index_t p = 0; p < d; ++p) s = std::fma(query[p], centroids_[l * d + p], s);
    ranking[l] = {std::isnan(s) ? -kInf : s, l};
  }
  std::sort(ranking.begin(), ranking.end(), [](const auto& a, const auto& b) {
    return scan::worse(b.first, b.second, a.first, a.second);
  });
  const scan::Kernels kern = scan::select_kernels();
  scan::AlignedBuffer qpack(static_cast<std::size_t>(kMR * d));
  scan::pack_queries(query, nullptr, 1, d, qpack.data);
  alignas(64) float tile[kMR * kNR];
  for (const auto& [score, list] : ranking) {
    if (heap.size == heap.cap) break;
    if (std::find(probed, probed + n_probed, list) != probed + n_probed) continue;
    const std::int64_t pos0 = list_offsets_[list], size = list_offsets_[list + 1] - pos0;
    if (size == 0) continue;
    std::int64_t cursor = 0, end = 0;
    scan::ExcludeCursors<Index> cursors;
    if (exclude.indptr != nullptr) {
      position_cursors(exclude, &q_global, 1, list_ids_[pos0], &cursor, &end);
      cursors = {exclude.indices, &cursor, &end};
    }
    float thr = heap.size < heap.cap ? -kInf : heap.s[0];
    scan::scan_panels_one_query<Index>(kern, qpack.data,
                                       panels_.data() + panel_offsets_[list] * kNR * d, size, d,
                                       list_ids_.data() + pos0, 0, heap, thr, cursors, tile);
  }
}

template <class Index>
void IvfIndex::search(const float* queries, index_t n_queries, index_t k, index_t n_probe,
                      ExcludeCsr<Index> exclude, std::int64_t* out_ids, float* out_scores,
                      int num_threads) const {
  if (k < 1) throw_invalid("k: expected an integer >= 1, got ", k);
  if (n_probe < 1 || n_probe > n_lists()) {
    throw_invalid("n_probe: expected an integer in [1, n_lists = ", n_lists(), "], got ", n_probe);
  }
  resolve_num_threads(num_threads);
  const index_t kk = std::min(k, n_items()), d = dim_;
  const index_t block = std::clamp<index_t>(kMaxSlotEntries / (n_probe * kk), 1, 4096);
  SlotHeaps slots;
  slots.cap = kk;
  for (index_t q0 = 0; q0 < n_queries; q0 += block) {
    const index_t nb = std::min(block, n_queries - q0);
    const float* qb = queries + q0 * d;
    const Probes probes = select_probes(qb, nb, n_probe, num_threads);
    const ListGroups groups = group_by_list(probes, nb, n_probe, n_lists());
    slots.s.assign(static_cast<std::size_t>(nb * n_probe * kk), 0.0f);
    slots.id.assign(static_cast<std::size_t>(nb * n_probe * kk), 0);
    slots.size.assign(static_cast<std::size_t>(nb * n_probe), 0);
    scan_lists<Index>(qb, groups, n_probe, exclude, q0, slots, num_threads);
    check_interrupt();
    merge_probes<Index>(qb, probes, slots, nb, n_probe, k, exclude, q0, out_ids + q0 * k,
                        out_scores + q0 * k, num_threads);
  }
}

// Merges each query's probes in rank order and writes its row; scans further lists when fewer
// than k eligible items were found.
template <class Index>
void IvfIndex::merge_probes(const float* queries, const Probes& probes, const SlotHeaps& slots,
                            index_t nb, index_t n_probe, index_t k, ExcludeCsr<Index> exclude,
                            index_t q_base, std::int64_t* out_ids, float* out_scores,
                            int num_threads) const {
  const index_t kk = slots.cap;
  const index_t n_tasks = (nb + kProbeBlock - 1) / kProbeBlock;
  parallel_for(n_tasks, num_threads, [&](std::int64_t task, int) {
    std::vector<float> ms(kk);
    std::vector<std::int64_t> mi(kk);
    std::vector<std::pair<float, std::int64_t>> entries;
    entries.reserve(kk);
    const index_t b_end = std::min(nb, (task + 1) * kProbeBlock);
    for (index_t b = task * kProbeBlock; b < b_end; ++b) {
      scan::Heap merged{ms.data(), mi.data(), kk, 0};
      for (index_t r = 0; r < n_probe; ++r) {
        const std::size_t slot = b * n_probe + r;
        for (index_t e = 0; e < slots.size[slot]; ++e) {
          merged.offer(slots.s[slot * kk + e], slots.id[slot * kk + e]);
        }
      }
      if (merged.size < kk && probes.count[b] < n_lists()) {
        scan_more_lists<Index>(queries + b * dim_, probes.lists.data() + b * n_probe,
                               probes.count[b], exclude, q_base + b, merged);
      }
      entries.clear();
      for (index_t e = 0; e < merged.size; ++e) entries.emplace_back(ms[e], mi[e]);
      scan::write_sorted(entries, k, out_ids + b * k, out_scores + b * k);
    }
  });
}

template void IvfIndex::search<std::int32_t>(const float*, index_t, index_t, index_t,
                                             ExcludeCsr<std::int32_t>, std::int64_t*, float*,
                                             int) const;
template void IvfIndex::search<std::int64_t>(const float*, index_t, index_t, index_t,
                                             ExcludeCsr<std::int64_t>, std::int64_t*, float*,
                                             int) const;

}  // namespace fastsoftmax
