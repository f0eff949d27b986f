// Bindings of the softmax DNN: the model (parameters as numpy views of its own buffers), a data
// object that checks and pins the arrays of one fit / predict call, and the loss options.
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "binding_utils.h"
#include "fastsoftmax/loss_factory.h"
#include "fastsoftmax/softmax_loss.h"
#include "fastsoftmax/softmax_model.h"

namespace fastsoftmax::py {
namespace {

/// fs.SoftmaxModel's loss options (a dict of the kind's settings) as a LossConfig; a key the kind
/// does not use is an error.
LossConfig loss_config(const std::string& loss, const pyb::dict& options) {
  LossConfig c;
  c.kind = loss;
  std::size_t used = 0;
  auto take = [&](const char* key) -> pyb::object {
    if (!options.contains(key)) return pyb::none();
    ++used;
    return options[key];
  };
  pyb::object v;
  if (loss == "sampled") {
    SampledLossConfig& s = c.sampled;
    if (!(v = take("sampler")).is_none()) s.sampler = v.cast<std::string>();
    if (!(v = take("sampler_alpha")).is_none()) s.sampler_alpha = v.cast<double>();
    if (!(v = take("sampler_weights")).is_none()) {
      auto w = require_array<double>(v, "sampler_weights", 1);
      s.sampler_weights.assign(w.data(), w.data() + w.shape(0));
    }
    auto& so = s.sampler_options;
    if (!(v = take("num_negatives")).is_none()) so.num_negatives = v.cast<index_t>();
    if (!(v = take("share_negatives")).is_none()) so.share = v.cast<bool>();
    if (!(v = take("hard_pool")).is_none()) so.hard_pool = v.cast<index_t>();
    if (!(v = take("temperature")).is_none()) so.temperature = v.cast<double>();
    if (!(v = take("hard_fraction")).is_none()) so.hard_fraction = v.cast<double>();
    if (!(v = take("mixed_negatives")).is_none()) so.mixed_uniform = v.cast<index_t>();
    if (!(v = take("frequency_estimate")).is_none()) {
      const auto f = v.cast<std::string>();
      if (f != "counts" && f != "streaming") {
        throw std::invalid_argument(str_cat("frequency_estimate: expected 'counts' or "
                                            "'streaming', got '", f, "'"));
      }
      so.streaming = f == "streaming";
    }
    auto& lo = s.loss_options;
    if (!(v = take("logq_correction")).is_none()) lo.logq_correction = v.cast<bool>();
    if (!(v = take("remove_accidental_hits")).is_none()) lo.remove_accidental_hits = v.cast<bool>();
    if (!(v = take("gravity")).is_none()) lo.gravity = v.cast<double>();
  } else {
    if (!(v = take("gravity")).is_none()) c.gravity = v.cast<double>();
    if (!(v = take("num_negatives")).is_none()) c.gravity_samples = v.cast<index_t>();
    if (loss == "full") {
      if (!(v = take("max_buffer_bytes")).is_none()) c.max_buffer_bytes = v.cast<std::size_t>();
      if (!(v = take("portable_kernel")).is_none()) c.portable_kernel = v.cast<bool>();
    }
  }
  if (options.size() != used) {
    throw std::invalid_argument(str_cat("loss_options: unexpected options for loss '", loss,
                                        "': ", std::string(pyb::str(options))));
  }
  return c;
}

/// Query features (and optionally targets) of one call, checked against a model and pinned.
struct SoftmaxData {
  FeaturesView features;
  TargetsView targets;
  bool has_targets = false;
  std::vector<pyb::object> keep_alive;
};

/// `items`: item features (checked against the item tower) instead of query features.
SoftmaxData make_data(SoftmaxModel& model, index_t rows, pyb::handle dense,
                      const std::vector<pyb::handle>& categorical,
                      const std::vector<pyb::tuple>& bags, pyb::handle targets,
                      bool items = false) {
  if (items && !model.config().item_tower) {
    throw std::invalid_argument("item_features: the model has no item tower");
  }
  const auto& schema = items ? model.config().item_features : model.config().features;
  SoftmaxData d;
  if (rows < 0) throw std::invalid_argument(str_cat("rows: expected >= 0, got ", rows));
  d.features.rows = rows;
  if (!dense.is_none()) {
    auto a = require_array<float>(dense, "dense", 2);
    if (a.shape(0) != rows || a.shape(1) != schema.n_dense) {
      throw std::invalid_argument(str_cat("dense: expected shape (", rows, ", ", schema.n_dense,
                                          "), got (", a.shape(0), ", ", a.shape(1), ")"));
    }
    d.features.dense = a.data();
    d.keep_alive.push_back(a);
  } else if (schema.n_dense > 0) {
    throw std::invalid_argument(
        str_cat("dense: the model expects ", schema.n_dense, " dense features, got None"));
  }
  for (std::size_t i = 0; i < categorical.size(); ++i) {
    auto a = require_array<std::int64_t>(categorical[i], "categorical", 1);
    if (a.shape(0) != rows) {
      throw std::invalid_argument(str_cat("categorical: expected ", rows, " ids, got ", a.shape(0)));
    }
    d.features.categorical.push_back(a.data());
    d.keep_alive.push_back(a);
  }
  auto csr = [&](const pyb::tuple& t, const char* name, index_t expected_rows) {
    if (t.size() != 3) throw std::invalid_argument(str_cat(name, ": expected (indptr, indices, weights)"));
    auto indptr = require_array<std::int64_t>(t[0], name, 1);
    auto indices = require_array<std::int64_t>(t[1], name, 1);
    if (indptr.shape(0) != expected_rows + 1) {
      throw std::invalid_argument(str_cat(name, ": expected ", expected_rows,
                                          " rows, got ", indptr.shape(0) - 1));
    }
    const index_t nnz = indptr.data()[expected_rows];
    if (indptr.data()[0] != 0 || nnz < 0 || nnz > indices.shape(0)) {
      throw std::invalid_argument(str_cat(name, ": inconsistent indptr"));
    }
    for (index_t r = 0; r < expected_rows; ++r) {  // before anything reads indices by row
      if (indptr.data()[r + 1] < indptr.data()[r]) {
        throw std::invalid_argument(
            str_cat(name, ": indptr must be non-decreasing, got a decrease at row ", r));
      }
    }
    BagsView v{indptr.data(), indices.data(), nullptr};
    d.keep_alive.push_back(indptr);
    d.keep_alive.push_back(indices);
    if (!t[2].is_none()) {
      auto w = require_array<float>(t[2], name, 1);
      if (w.shape(0) < nnz) throw std::invalid_argument(str_cat(name, ": too few weights"));
      v.weights = w.data();
      d.keep_alive.push_back(w);
    }
    return v;
  };
  for (const auto& b : bags) d.features.bags.push_back(csr(b, "bags", rows));
  if (items) {
    model.check_item_features(d.features);
  } else {
    model.check_features(d.features);
  }
  if (!targets.is_none()) {
    const auto t = pyb::reinterpret_borrow<pyb::tuple>(targets);
    if (t.size() != 4) {
      throw std::invalid_argument("targets: expected (indptr, indices, weights, row_weights)");
    }
    const BagsView v = csr(pyb::make_tuple(t[0], t[1], t[2]), "targets", rows);
    if (v.weights == nullptr) throw std::invalid_argument("targets: expected weights");
    d.targets = TargetsView{rows, v.indptr, v.indices, v.weights};
    if (!t[3].is_none()) {
      auto w = require_array<float>(t[3], "sample_weight", 1);
      if (w.shape(0) != rows) {
        throw std::invalid_argument(
            str_cat("sample_weight: expected ", rows, " weights, got ", w.shape(0)));
      }
      d.targets.row_weights = w.data();
      d.keep_alive.push_back(w);
    }
    d.has_targets = true;
    model.check_targets(d.targets, rows);
  }
  return d;
}

pyb::array_t<float> view_of(Parameter& p, bool vector, pyb::handle owner) {
  if (vector) {
    return pyb::array_t<float>({static_cast<pyb::ssize_t>(p.value.size())},
                               {static_cast<pyb::ssize_t>(sizeof(float))}, p.value.data(), owner);
  }
  return pyb::array_t<float>(
      {static_cast<pyb::ssize_t>(p.rows()), static_cast<pyb::ssize_t>(p.cols())},
      {static_cast<pyb::ssize_t>(p.cols() * sizeof(float)), static_cast<pyb::ssize_t>(sizeof(float))},
      p.value.data(), owner);
}

/// The features of a tower from the dict Python builds (fs.SoftmaxModel._build).
FeatureSchema feature_schema(const pyb::dict& s) {
  return FeatureSchema{s["n_dense"].cast<index_t>(),
                       s["categorical_names"].cast<std::vector<std::string>>(),
                       s["categorical_vocab"].cast<std::vector<index_t>>(),
                       s["categorical_dim"].cast<std::vector<index_t>>(),
                       s["bag_names"].cast<std::vector<std::string>>(),
                       s["bag_vocab"].cast<std::vector<index_t>>(),
                       s["bag_dim"].cast<std::vector<index_t>>()};
}

const FeaturesView* items_view(const pyb::object& items) {
  return items.is_none() ? nullptr : &items.cast<const SoftmaxData&>().features;
}

bool is_vector_param(const std::string& name) {
  return name == "item_bias" || (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
}

// Test hook: a bag CSR with more than 2^31 entries whose last row (entries 2^31 + 1 .. + 4) is the
// only one read: its index array is reserved, not allocated (MAP_NORESERVE; only the pages of that
// row are touched), so the kernels' int64 offset arithmetic is exercised without 16 GB of memory.
// Returns (pooled mean of that row, the bag gradient's rows, their gradient) for a table and dout.
pyb::tuple bag_beyond_2_31(const pyb::array_t<float, pyb::array::c_style>& table_arr,
                           const pyb::array_t<float, pyb::array::c_style>& dout_arr) {
#if defined(__linux__)
  const index_t vocab = table_arr.shape(0), d = table_arr.shape(1);
  const index_t first = (index_t{1} << 31) + 1, nnz = first + 3;
  const std::size_t bytes = static_cast<std::size_t>(nnz) * sizeof(index_t);
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("bag_beyond_2_31: cannot reserve 16 GB");
  struct Unmap {
    void* p;
    std::size_t n;
    ~Unmap() { munmap(p, n); }
  } unmap{mem, bytes};
  auto* indices = static_cast<index_t*>(mem);
  for (index_t k = 0; k < 3; ++k) indices[first + k] = (k + 1) % vocab;
  const index_t indptr[3] = {0, first, nnz};
  const BagsView bags{indptr, indices, nullptr};
  const index_t rows[1] = {1};
  RowMatrixXf table = ConstMapRowMatrixXf(table_arr.data(), vocab, d);
  pyb::array_t<float> pooled(static_cast<pyb::ssize_t>(d));
  embed_bags(table, bags, rows, 1, Pooling::kMean, pooled.mutable_data(), d, 1);
  BagGradient grad;
  grad.begin(bags, rows, 1, Pooling::kMean, dout_arr.data(), d, vocab, d);
  grad.stage(0, 1);
  std::vector<index_t> ids;
  std::vector<float> values;
  for (int p = 0; p < BagGradient::kParts; ++p) {
    grad.collect(p);
    RowGradient& rg = grad.part(p);
    rg.materialize(1);
    for (index_t i = 0; i < rg.size(); ++i) {
      ids.push_back(rg.rows()[static_cast<std::size_t>(i)]);
      values.insert(values.end(), rg.grad() + i * d, rg.grad() + (i + 1) * d);
    }
  }
  pyb::array_t<float> g({static_cast<pyb::ssize_t>(ids.size()), static_cast<pyb::ssize_t>(d)});
  std::copy(values.begin(), values.end(), g.mutable_data());
  return pyb::make_tuple(pooled, pyb::array_t<index_t>(ids.size(), ids.data()), g);
#else
  throw std::runtime_error("bag_beyond_2_31: Linux only");
#endif
}

}  // namespace

void bind_softmax_model(pyb::module_& m) {
  testing_module(m).def("bag_beyond_2_31", &bag_beyond_2_31, pyb::arg("table"),
                        pyb::arg("dout"));
  pyb::class_<SoftmaxData>(m, "SoftmaxData");

  pyb::class_<SoftmaxModel>(m, "SoftmaxModel")
      .def(pyb::init([](index_t n_items, index_t dim, std::vector<index_t> hidden, index_t n_dense,
                        std::vector<std::string> categorical_names,
                        std::vector<index_t> categorical_vocab,
                        std::vector<index_t> categorical_dim, std::vector<std::string> bag_names,
                        std::vector<index_t> bag_vocab, std::vector<index_t> bag_dim,
                        const std::string& pooling, index_t history_bag,
                        float history_dropout, const std::string& history_target,
                        bool item_bias, const std::string& loss,
                        const pyb::dict& loss_options, const std::string& optimizer,
                        float learning_rate, float l2, index_t batch_size, std::uint64_t seed,
                        int num_threads, const pyb::object& item_schema,
                        std::vector<index_t> item_hidden, bool item_id_embedding,
                        float item_id_dropout, index_t item_buckets,
                        std::vector<index_t> item_dedicated) {
             SoftmaxModelConfig c;
             c.n_items = n_items;
             c.dim = dim;
             c.hidden = std::move(hidden);
             c.features = FeatureSchema{n_dense,         std::move(categorical_names),
                                        std::move(categorical_vocab), std::move(categorical_dim),
                                        std::move(bag_names),         std::move(bag_vocab),
                                        std::move(bag_dim)};
             c.pooling = parse_pooling(pooling);
             c.history = HistoryConfig{history_bag, history_dropout,
                                       parse_history_target(history_target)};
             c.item_bias = item_bias;
             if (!item_schema.is_none()) {
               c.item_tower = true;
               c.item_features = feature_schema(item_schema.cast<pyb::dict>());
               c.item_hidden = std::move(item_hidden);
               c.item_id_embedding = item_id_embedding;
               c.item_id_dropout = item_id_dropout;
             }
             c.item_buckets = item_buckets;
             c.item_dedicated = std::move(item_dedicated);
             c.optimizer.kind = parse_optimizer(optimizer);
             c.optimizer.learning_rate = learning_rate;
             c.optimizer.l2 = l2;
             c.batch_size = batch_size;
             c.seed = seed;
             resolve_num_threads(num_threads);  // throws for < 0
             c.num_threads = num_threads;
             auto l = make_loss(loss_config(loss, loss_options), n_items);
             ReleaseGil release;
             return new SoftmaxModel(c, std::move(l));
           }),
           pyb::arg("n_items"), pyb::arg("dim"), pyb::arg("hidden"), pyb::arg("n_dense"),
           pyb::arg("categorical_names"), pyb::arg("categorical_vocab"),
           pyb::arg("categorical_dim"), pyb::arg("bag_names"), pyb::arg("bag_vocab"),
           pyb::arg("bag_dim"), pyb::arg("pooling"), pyb::arg("history_bag"),
           pyb::arg("history_dropout"), pyb::arg("history_target"), pyb::arg("item_bias"),
           pyb::arg("loss"),
           pyb::arg("loss_options"), pyb::arg("optimizer"), pyb::arg("learning_rate"),
           pyb::arg("l2"), pyb::arg("batch_size"), pyb::arg("seed"), pyb::arg("num_threads"),
           pyb::arg("item_schema") = pyb::none(), pyb::arg("item_hidden") = std::vector<index_t>{},
           pyb::arg("item_id_embedding") = false, pyb::arg("item_id_dropout") = 0.0f,
           pyb::arg("item_buckets") = 0, pyb::arg("item_dedicated") = std::vector<index_t>{})
      .def(
          "data",
          [](SoftmaxModel& self, index_t rows, pyb::handle dense,
             const std::vector<pyb::handle>& categorical, const std::vector<pyb::tuple>& bags,
             pyb::handle targets) { return make_data(self, rows, dense, categorical, bags, targets); },
          pyb::arg("rows"), pyb::arg("dense"), pyb::arg("categorical"), pyb::arg("bags"),
          pyb::arg("targets"),
          "Checks features (and targets: (indptr, indices, weights) or None) and pins them.")
      .def(
          "item_data",
          [](SoftmaxModel& self, index_t rows, pyb::handle dense,
             const std::vector<pyb::handle>& categorical, const std::vector<pyb::tuple>& bags) {
            return make_data(self, rows, dense, categorical, bags, pyb::none(), true);
          },
          pyb::arg("rows"), pyb::arg("dense"), pyb::arg("categorical"), pyb::arg("bags"),
          "Checks item features against the item tower and pins them.")
      .def(
          "fit_epoch",
          [](SoftmaxModel& self, const SoftmaxData& d, std::int64_t epoch,
             const pyb::object& items) {
            if (!d.has_targets) throw std::invalid_argument("targets: required for fit");
            const FeaturesView* iv = items_view(items);
            ReleaseGil release;
            return self.fit_epoch(d.features, d.targets, epoch, iv);
          },
          pyb::arg("data"), pyb::arg("epoch"), pyb::arg("items") = pyb::none())
      .def(
          "history_kept",
          [](const SoftmaxModel& self, const SoftmaxData& d, std::int64_t epoch) {
            const index_t h = self.config().history.bag;
            if (h < 0) throw std::invalid_argument("history: the model has no history feature");
            const index_t nnz = d.features.bags[static_cast<std::size_t>(h)].indptr[d.features.rows];
            pyb::array_t<bool> out(static_cast<pyb::ssize_t>(nnz));
            static_assert(sizeof(bool) == sizeof(std::uint8_t));
            auto* p = reinterpret_cast<std::uint8_t*>(out.mutable_data());
            {
              ReleaseGil release;
              self.history_kept(d.features, epoch, p);
            }
            return out;
          },
          pyb::arg("data"), pyb::arg("epoch"),
          "Whether each history entry survives the corruption of epoch `epoch` (bool, nnz).")
      .def(
          "query_embeddings",
          [](SoftmaxModel& self, const SoftmaxData& d) {
            pyb::array_t<float> out({static_cast<pyb::ssize_t>(d.features.rows),
                                     static_cast<pyb::ssize_t>(self.config().dim)});
            float* p = out.mutable_data();
            {
              ReleaseGil release;
              self.query_embeddings(d.features, p);
            }
            return out;
          },
          pyb::arg("data"))
      .def(
          "item_embeddings",
          [](SoftmaxModel& self, const SoftmaxData& items, bool own_ids) {
            pyb::array_t<float> out({static_cast<pyb::ssize_t>(items.features.rows),
                                     static_cast<pyb::ssize_t>(self.config().dim)});
            float* p = out.mutable_data();
            {
              ReleaseGil release;
              self.item_embeddings(items.features, p, own_ids);
            }
            return out;
          },
          pyb::arg("items"), pyb::arg("own_ids"),
          "The item tower's embeddings of these items (from item_data); own_ids: they are the "
          "training items, with their id embeddings.")
      .def(
          "item_rows",
          [](SoftmaxModel& self, index_t begin, index_t end) {
            if (begin < 0 || end < begin || end > self.config().n_items) {
              throw std::out_of_range("item_rows: expected 0 <= begin <= end <= n_items");
            }
            pyb::array_t<float> out({static_cast<pyb::ssize_t>(end - begin),
                                     static_cast<pyb::ssize_t>(self.config().dim)});
            float* p = out.mutable_data();
            {
              ReleaseGil release;
              self.item_rows(begin, end, p);
            }
            return out;
          },
          pyb::arg("begin"), pyb::arg("end"),
          "Rows [begin, end) of a compressed item table's V (float32, (end - begin) x dim).")
      .def(
          "evaluate",
          [](SoftmaxModel& self, const SoftmaxData& d, std::uint64_t seed, bool with_gradients,
             const pyb::object& items) {
            if (!d.has_targets) throw std::invalid_argument("targets: required");
            const FeaturesView* iv = items_view(items);
            std::vector<RowMatrixXf> grads;
            double loss;
            {
              ReleaseGil release;
              loss = self.evaluate(d.features, d.targets, seed, with_gradients ? &grads : nullptr,
                                   iv);
            }
            pyb::dict out;
            if (with_gradients) {
              auto params = self.parameters();
              for (std::size_t i = 0; i < params.size(); ++i) {
                const auto& g = grads[i];
                pyb::array_t<float> a({static_cast<pyb::ssize_t>(g.rows()),
                                       static_cast<pyb::ssize_t>(g.cols())});
                std::copy_n(g.data(), g.size(), a.mutable_data());
                out[pyb::str(params[i].first)] =
                    is_vector_param(params[i].first) ? a.attr("reshape")(-1) : pyb::object(a);
              }
            }
            return pyb::make_tuple(loss, out);
          },
          pyb::arg("data"), pyb::arg("seed"), pyb::arg("with_gradients"),
          pyb::arg("items") = pyb::none())
      .def("parameters",
           [](pyb::object self_obj) {
             auto& self = self_obj.cast<SoftmaxModel&>();
             pyb::dict out;
             for (auto& [name, p] : self.parameters()) {
               out[pyb::str(name)] = view_of(*p, is_vector_param(name), self_obj);
             }
             return out;
           })
      .def(
          "prepare_loss",
          [](SoftmaxModel& self, const SoftmaxData& d) {
            if (!d.has_targets) throw std::invalid_argument("targets: required");
            ReleaseGil release;
            self.prepare_loss(d.targets);
          },
          pyb::arg("data"), "Loss::prepare with these targets (e.g. item popularity).")
      .def("reset_optimizer_state", &SoftmaxModel::reset_optimizer_state)
      .def_property_readonly("steps", &SoftmaxModel::steps)
      .def_property_readonly("has_item_tower",
                             [](const SoftmaxModel& s) { return s.config().item_tower; })
      .def_property_readonly("loss_name", [](const SoftmaxModel& s) { return s.loss_function().name(); });
}

}  // namespace fastsoftmax::py
