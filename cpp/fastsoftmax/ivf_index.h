#pragma once
// An inverted-file (IVF) index for approximate maximum-inner-product search.
//
// Build: k-means (Lloyd, on a seeded sample of the items) splits the items into n_lists lists.
// Spherical lists (the default) group items by direction: unit centroids, each item in the list
// of its largest x . c; each centroid is then scaled by the largest item norm in its list, so
// that probing by q . c estimates a list's best inner product (directions alone miss the long
// embeddings of popular items, which win inner-product searches). L2 lists: each item in the list
// of its nearest mean. Either assignment is a top-1 inner product ([x, 1] . [c, -|c|^2 / 2] for
// L2), so it runs on the exact top-k kernel. Each list stores its items' vectors as pre-transposed
// panels of 16 (panel_scan.h) in ascending item-id order.
//
// Search: a query probes the n_probe lists whose centroids have the largest inner product with it
// and returns the best k items of those lists by exact inner product. Queries of a batch are
// grouped by list, so every probed list is read once per batch and scored against all the queries
// that probe it with the register-tiled kernel (a small GEMM per list, not one dot product per
// query and item). When the probed lists hold fewer than k eligible items (small lists, or items
// excluded), the next lists in the query's centroid ranking are scanned until k are found.
//
// Results are exact inner products of the probed items and are bit-identical for every thread
// count and every batching of the queries (each query's probes and scores do not depend on the
// other queries); ties are broken by the lower item id, as in topk.h.

#include <Eigen/Core>
#include <cstdint>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/panel_scan.h"
#include "fastsoftmax/topk.h"

namespace fastsoftmax {

/// Options of IvfIndex::build.
struct IvfBuildOptions {
  index_t n_lists = 1;      // number of lists, in [1, n_items]
  int iterations = 10;      // Lloyd iterations, >= 0 (0: the initial sample is the centroids)
  index_t max_train = 0;    // items used to train k-means (a seeded sample), >= n_lists
  bool spherical = true;    // lists by direction, probed by norm-scaled centroids (else L2 k-means)
  std::uint64_t seed = 0;   // sample and initialisation
  int num_threads = 0;      // 0 = all cores
};

class IvfIndex {
 public:
  /// Trains the lists on `items` (n_items x dim, row-major float32, finite) and fills them.
  static IvfIndex build(const float* items, index_t n_items, index_t dim,
                        const IvfBuildOptions& options);

  /// Rebuilds an index from its parts (as returned by the accessors): centroids (n_lists x dim),
  /// list_offsets (n_lists + 1, from 0 to n_items), list_ids (n_items, a permutation of
  /// [0, n_items) ascending within each list) and vectors (n_items x dim in list order).
  /// std::invalid_argument naming the part if they are inconsistent.
  IvfIndex(index_t dim, std::vector<float> centroids, std::vector<std::int64_t> list_offsets,
           std::vector<std::int64_t> list_ids, const float* vectors);

  /// Approximate top-k by inner product, as topk() (same output layout and exclusion format)
  /// but over the n_probe best lists of each query. 1 <= n_probe <= n_lists, 1 <= k.
  template <class Index>
  void search(const float* queries, index_t n_queries, index_t k, index_t n_probe,
              ExcludeCsr<Index> exclude, std::int64_t* out_ids, float* out_scores,
              int num_threads) const;

  index_t n_items() const { return static_cast<index_t>(list_ids_.size()); }
  index_t dim() const { return dim_; }
  index_t n_lists() const { return static_cast<index_t>(list_offsets_.size()) - 1; }
  const std::vector<float>& centroids() const { return centroids_; }
  const std::vector<std::int64_t>& list_offsets() const { return list_offsets_; }
  const std::vector<std::int64_t>& list_ids() const { return list_ids_; }

  /// Writes the vectors in list order (n_items x dim) into out.
  void copy_vectors(float* out) const;

  /// Writes the vectors of the given item ids (each in [0, n_items)) into out (n x dim).
  void gather(const std::int64_t* ids, index_t n, float* out) const;

 private:
  struct Probes;      // each query's probed lists
  struct ListGroups;  // the (query, probe) pairs of a batch grouped by list
  struct SlotHeaps;   // the best items of each (query, probe) pair

  IvfIndex() = default;
  void pack_rows(const float* rows, const std::int64_t* ids);
  void gather_position(std::int64_t pos, float* out) const;
  Probes select_probes(const float* queries, index_t nb, index_t n_probe, int num_threads) const;
  static ListGroups group_by_list(const Probes& probes, index_t nb, index_t n_probe,
                                  index_t n_lists);
  template <class Index>
  void scan_lists(const float* queries, const ListGroups& groups, index_t n_probe,
                  ExcludeCsr<Index> exclude, index_t q_base, SlotHeaps& slots,
                  int num_threads) const;
  template <class Index>
  void merge_probes(const float* queries, const Probes& probes, const SlotHeaps& slots,
                    index_t nb, index_t n_probe, index_t k, ExcludeCsr<Index> exclude,
                    index_t q_base, std::int64_t* out_ids, float* out_scores,
                    int num_threads) const;
  template <class Index>
  void scan_more_lists(const float* query, const std::int64_t* probed, index_t n_probed,
                       ExcludeCsr<Index> exclude, index_t q_global, scan::Heap& heap) const;

  using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;  // 64-byte aligned

  index_t dim_ = 0;
  std::vector<float> centroids_;             // n_lists x dim
  std::vector<std::int64_t> list_offsets_;   // n_lists + 1 positions
  std::vector<std::int64_t> list_ids_;       // item id at each position
  std::vector<std::int64_t> position_;       // position of each item id
  std::vector<std::int64_t> panel_offsets_;  // n_lists + 1, in panels
  AlignedFloats panels_;                     // every list's panels, dim x 16 floats each
  AlignedFloats centroid_panels_;            // the centroids as panels
};

}  // namespace fastsoftmax
