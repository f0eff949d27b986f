#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "binding_utils.h"
#include "exclude_arg.h"
#include "fastsoftmax/ivf_index.h"

namespace fastsoftmax::py {
namespace {

template <class T>
std::vector<T> vector_from(pyb::handle obj, const char* name) {
  auto a = require_array<T>(obj, name, -1);
  return std::vector<T>(a.data(), a.data() + a.size());
}

template <class T>
pyb::array_t<T> array_from(const std::vector<T>& v, std::vector<index_t> shape) {
  pyb::array_t<T> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

}  // namespace

void bind_ivf_index(pyb::module_& m) {
  pyb::class_<IvfIndex>(m, "IvfIndex")
      .def_static(
          "build",
          [](pyb::handle items_obj, index_t n_lists, int iterations, index_t max_train,
             bool spherical, std::uint64_t seed, int num_threads) {
            auto items = require_array<float>(items_obj, "items", 2);
            IvfBuildOptions options{n_lists, iterations, max_train, spherical, seed, num_threads};
            ReleaseGil release;
            return IvfIndex::build(items.data(), items.shape(0), items.shape(1), options);
          },
          pyb::arg("items"), pyb::arg("n_lists"), pyb::arg("iterations"), pyb::arg("max_train"),
          pyb::arg("spherical"), pyb::arg("seed"), pyb::arg("num_threads"),
          "k-means lists over the items (see fastsoftmax.build_index).")
      .def(pyb::init([](pyb::handle centroids_obj, pyb::handle offsets_obj, pyb::handle ids_obj,
                        pyb::handle vectors_obj) {
             auto centroids = require_array<float>(centroids_obj, "centroids", 2);
             auto vectors = require_array<float>(vectors_obj, "vectors", 2);
             auto ids = vector_from<std::int64_t>(ids_obj, "list_ids");
             if (vectors.shape(0) != static_cast<index_t>(ids.size()) ||
                 vectors.shape(1) != centroids.shape(1)) {
               throw std::invalid_argument(str_cat(
                   "vectors: expected shape (", ids.size(), ", ", centroids.shape(1), "), got (",
                   vectors.shape(0), ", ", vectors.shape(1), ")"));
             }
             return IvfIndex(centroids.shape(1),
                             std::vector<float>(centroids.data(),
                                                centroids.data() + centroids.size()),
                             vector_from<std::int64_t>(offsets_obj, "list_offsets"),
                             std::move(ids), vectors.data());
           }),
           pyb::arg("centroids"), pyb::arg("list_offsets"), pyb::arg("list_ids"),
           pyb::arg("vectors"), "An index from the parts of a saved one (checked).")
      .def(
          "search",
          [](const IvfIndex& index, pyb::handle queries_obj, std::int64_t k, std::int64_t n_probe,
             pyb::handle indptr_obj, pyb::handle indices_obj, int num_threads) {
            auto q = require_array<float>(queries_obj, "queries", 2);
            if (q.shape(1) != index.dim()) {
              throw std::invalid_argument(str_cat("queries: expected ", index.dim(),
                                                  " columns, got ", q.shape(1)));
            }
            for (index_t i = 0; i < q.size(); ++i) {  // a NaN / inf query has no ranking
              if (!std::isfinite(q.data()[i])) {
                throw std::invalid_argument("queries: expected finite values, found NaN or inf");
              }
            }
            if (k <= 0) throw std::invalid_argument(str_cat("k: expected >= 1, got ", k));
            resolve_num_threads(num_threads);
            const index_t n_queries = q.shape(0);
            pyb::array_t<std::int64_t> ids({n_queries, static_cast<index_t>(k)});
            pyb::array_t<float> scores({n_queries, static_cast<index_t>(k)});
            std::int64_t* ids_ptr = ids.mutable_data();
            float* scores_ptr = scores.mutable_data();
            with_exclude(indptr_obj, indices_obj, n_queries, index.n_items(), [&](auto exclude) {
              using Index = std::remove_cv_t<std::remove_pointer_t<decltype(exclude.indices)>>;
              ReleaseGil release;
              index.search<Index>(q.data(), n_queries, k, n_probe, exclude, ids_ptr, scores_ptr,
                                  num_threads);
            });
            return pyb::make_tuple(ids, scores);
          },
          pyb::arg("queries"), pyb::arg("k"), pyb::arg("n_probe"), pyb::arg("exclude_indptr"),
          pyb::arg("exclude_indices"), pyb::arg("num_threads"),
          "Approximate top-k (see fastsoftmax.IVFIndex.search). Returns (ids, scores).")
      .def_property_readonly("n_items", &IvfIndex::n_items)
      .def_property_readonly("dim", &IvfIndex::dim)
      .def_property_readonly("n_lists", &IvfIndex::n_lists)
      .def("centroids",
           [](const IvfIndex& index) {
             return array_from(index.centroids(), {index.n_lists(), index.dim()});
           })
      .def("list_offsets",
           [](const IvfIndex& index) {
             return array_from(index.list_offsets(), {index.n_lists() + 1});
           })
      .def("list_ids",
           [](const IvfIndex& index) { return array_from(index.list_ids(), {index.n_items()}); })
      .def("vectors",
           [](const IvfIndex& index) {
             pyb::array_t<float> out({index.n_items(), index.dim()});
             index.copy_vectors(out.mutable_data());
             return out;
           },
           "The item vectors in list order, shape (n_items, dim).")
      .def("gather",
           [](const IvfIndex& index, pyb::handle ids_obj) {
             auto ids = require_array<std::int64_t>(ids_obj, "ids", 1);
             pyb::array_t<float> out({static_cast<index_t>(ids.shape(0)), index.dim()});
             index.gather(ids.data(), ids.shape(0), out.mutable_data());
             return out;
           },
           pyb::arg("ids"), "The vectors of the given item ids, shape (len(ids), dim).");
}

}  // namespace fastsoftmax::py
