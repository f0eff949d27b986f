#include "fastsoftmax/tower.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// Whether every id is in [0, bound) and every weight (if any) finite: one pass without early
// exits, which the compiler vectorises (the loop with its throws is not); callers search for the
// offending entry only when false.
bool bag_entries_valid(const index_t* ids, const float* weights, index_t n, index_t bound) {
  const auto ubound = static_cast<std::uint64_t>(bound);
  std::uint64_t bad = 0;
  for (index_t k = 0; k < n; ++k) bad |= static_cast<std::uint64_t>(ids[k]) >= ubound;
  if (weights != nullptr) {
    std::uint32_t non_finite = 0;
    for (index_t k = 0; k < n; ++k) {
      std::uint32_t bits;
      std::memcpy(&bits, weights + k, sizeof bits);
      non_finite |= (bits & 0x7f800000u) == 0x7f800000u;  // exponent all ones: inf or NaN
    }
    bad |= non_finite;
  }
  return bad == 0;
}

}  // namespace

Tower::Tower(const FeatureSchema& schema, Pooling pooling, const std::vector<index_t>& hidden,
             index_t dim, std::string what)
    : schema_(schema), pooling_(pooling), what_(std::move(what)) {
  const auto& f = schema_;
  const std::string where = what_.empty() ? "" : what_ + ": ";
  if (f.n_dense < 0) throw_invalid(where, "dense: expected >= 0 columns, got ", f.n_dense);
  if (f.categorical_vocab.size() != f.categorical_dim.size() ||
      f.categorical_names.size() != f.categorical_dim.size() ||
      f.bag_vocab.size() != f.bag_dim.size() || f.bag_names.size() != f.bag_dim.size()) {
    throw_invalid(where,
                  "features: names, vocabulary sizes and dimensions must have equal lengths");
  }
  index_t input = f.n_dense;
  for (std::size_t i = 0; i < f.categorical_dim.size(); ++i) {
    if (f.categorical_vocab[i] < 1 || f.categorical_dim[i] < 1) {
      throw_invalid(label("categorical", f.categorical_names[i]),
                    ": expected vocabulary size and embedding_dim >= 1, got ",
                    f.categorical_vocab[i], " and ", f.categorical_dim[i]);
    }
    offsets_cat_.push_back(input);
    input += f.categorical_dim[i];
  }
  for (std::size_t i = 0; i < f.bag_dim.size(); ++i) {
    if (f.bag_vocab[i] < 1 || f.bag_dim[i] < 1) {
      throw_invalid(label("bags", f.bag_names[i]),
                    ": expected vocabulary size and embedding_dim >= 1, got ", f.bag_vocab[i],
                    " and ", f.bag_dim[i]);
    }
    offsets_bag_.push_back(input);
    input += f.bag_dim[i];
  }
  if (input < 1) throw_invalid(where, "features: expected at least one feature column, got none");
  std::vector<index_t> sizes{input};
  for (const index_t h : hidden) {
    if (h < 1) throw_invalid(what_.empty() ? "hidden" : "item_hidden",
                             ": expected layer sizes >= 1, got ", h);
    sizes.push_back(h);
  }
  sizes.push_back(dim);
  mlp_ = Mlp(sizes);
  for (std::size_t i = 0; i < f.categorical_dim.size(); ++i) {
    categorical_tables_.emplace_back(f.categorical_vocab[i], f.categorical_dim[i]);
  }
  for (std::size_t i = 0; i < f.bag_dim.size(); ++i) {
    bag_tables_.emplace_back(f.bag_vocab[i], f.bag_dim[i]);
  }
  cat_grads_.resize(categorical_tables_.size());
  bag_grads_.resize(bag_tables_.size());
}

std::string Tower::label(const char* kind, const std::string& name) const {
  return str_cat(what_.empty() ? "" : what_ + ": ", kind, " '", name, "'");
}

void Tower::initialize(std::uint64_t seed, std::uint64_t& stream) {
  const auto& sizes = mlp_.sizes();
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    const double in = static_cast<double>(sizes[l]), out = static_cast<double>(sizes[l + 1]);
    const bool last = l + 1 == mlp_.num_layers();
    const double a = last ? std::sqrt(6.0 / (in + out)) : std::sqrt(6.0 / in);
    fill_uniform(mlp_.weights[l].value, static_cast<float>(a), seed, stream++);
  }
  for (auto* tables : {&categorical_tables_, &bag_tables_}) {
    for (auto& t : *tables) {
      fill_uniform(t.value, static_cast<float>(std::sqrt(3.0 / t.cols())), seed, stream++);
    }
  }
}

void Tower::parameters(const std::string& prefix,
                       std::vector<std::pair<std::string, Parameter*>>& out) {
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    out.emplace_back(str_cat(prefix, "mlp.", l, ".weight"), &mlp_.weights[l]);
    out.emplace_back(str_cat(prefix, "mlp.", l, ".bias"), &mlp_.biases[l]);
  }
  for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
    out.emplace_back(prefix + "categorical." + schema_.categorical_names[i],
                     &categorical_tables_[i]);
  }
  for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
    out.emplace_back(prefix + "bags." + schema_.bag_names[i], &bag_tables_[i]);
  }
}

void Tower::check_features(const FeaturesView& x) const {
  const auto& f = schema_;
  const std::string where = what_.empty() ? "" : what_ + ": ";
  if (f.n_dense > 0 && x.dense == nullptr) {
    throw_invalid(where, "dense: the model was built with ", f.n_dense, " dense features, got none");
  }
  if (x.categorical.size() != f.categorical_vocab.size() || x.bags.size() != f.bag_vocab.size()) {
    throw_invalid(where, "features: expected ", f.categorical_vocab.size(), " categorical and ",
                  f.bag_vocab.size(), " bag features, got ", x.categorical.size(), " and ",
                  x.bags.size());
  }
  for (std::size_t i = 0; i < x.categorical.size(); ++i) {
    const index_t* ids = x.categorical[i];
    for (index_t r = 0; r < x.rows; ++r) {
      if (ids[r] < 0 || ids[r] >= f.categorical_vocab[i]) {
        throw_out_of_range(label("categorical", f.categorical_names[i]),
                           ": expected ids in [0, ", f.categorical_vocab[i], "), got ", ids[r],
                           " in row ", r);
      }
    }
  }
  for (std::size_t i = 0; i < x.bags.size(); ++i) {
    const BagsView& bag = x.bags[i];
    const std::string name = label("bags", f.bag_names[i]);
    if (bag.indptr[0] != 0) throw_invalid(name, ": indptr[0] must be 0");
    for (index_t r = 0; r < x.rows; ++r) {
      if (bag.indptr[r + 1] < bag.indptr[r]) {
        throw_invalid(name, ": indptr must be non-decreasing (row ", r, ")");
      }
    }
    const index_t nnz = bag.indptr[x.rows];
    if (bag_entries_valid(bag.indices, bag.weights, nnz, f.bag_vocab[i])) continue;
    for (index_t k = 0; k < nnz; ++k) {
      if (bag.indices[k] < 0 || bag.indices[k] >= f.bag_vocab[i]) {
        throw_out_of_range(name, ": expected ids in [0, ", f.bag_vocab[i], "), got ",
                           bag.indices[k]);
      }
      if (bag.weights && !std::isfinite(bag.weights[k])) {
        throw_invalid(name, ": expected finite weights, got ", bag.weights[k]);
      }
    }
  }
}

const index_t* Tower::bag_rows(const FeaturesView& x, std::size_t i, const index_t* rows,
                               const index_t* positions) const {
  return static_cast<index_t>(i) == x.by_position_bag ? positions : rows;
}

void Tower::forward(const FeaturesView& x, const index_t* rows, index_t B, int num_threads,
                    bool for_backward, const std::function<void()>& side_task,
                    const index_t* positions) {
  ws_.resize(mlp_, B);
  RowMatrixXf& X = ws_.acts[0];
  const index_t stride = X.cols();
  const index_t F = schema_.n_dense;
  // Each forward task first assembles its rows of the tower input (on its own thread).
  mlp_.forward(ws_, num_threads, [&](index_t r0, index_t n) {
    for (index_t b = r0; b < r0 + n && F > 0; ++b) {
      std::copy_n(x.dense + rows[b] * F, F, X.data() + b * stride);
    }
    float* out = X.data() + r0 * stride;
    for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
      embed_categorical(categorical_tables_[i].value, x.categorical[i], rows + r0, n,
                        out + offsets_cat_[i], stride, 1);
    }
    for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
      embed_bags(bag_tables_[i].value, x.bags[i], bag_rows(x, i, rows, positions) + r0, n,
                 pooling_, out + offsets_bag_[i], stride, 1);
    }
  }, for_backward ? F : -1, side_task);
}

void Tower::backward(const FeaturesView& x, const index_t* rows, index_t B, int num_threads,
                     bool accumulate, const index_t* positions) {
  const RowMatrixXf& dX = ws_.grads[0];
  for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
    bag_grads_[i].begin(x.bags[i], bag_rows(x, i, rows, positions), B, pooling_,
                        dX.data() + offsets_bag_[i], dX.cols(), bag_tables_[i].rows(),
                        bag_tables_[i].cols());
  }
  // Dense features come first in the input and have no parameters: no gradient for them. The
  // bag gradients stage their entries as soon as the tasks have their rows of dX (whole chunks).
  static_assert(Mlp::kInputGradRows % BagGradient::kChunkRows == 0);
  Mlp::RowRange stage = nullptr;
  if (!bag_tables_.empty()) {
    stage = [&](index_t r0, index_t n) {
      for (auto& g : bag_grads_) g.stage(r0, r0 + n);
    };
  }
  prepare_gradients(false);
  mlp_.backward(ws_, dW_, db_, num_threads, schema_.n_dense, stage, accumulate);
  for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
    cat_grads_[i].reset(categorical_tables_[i].rows(), categorical_tables_[i].cols());
    embed_categorical_backward(x.categorical[i], rows, B, dX.data() + offsets_cat_[i], dX.cols(),
                               &cat_grads_[i]);
  }
}

void Tower::prepare_gradients(bool zero) {
  if (dW_.size() != mlp_.weights.size()) {
    dW_.clear();
    db_.clear();
    for (index_t l = 0; l < mlp_.num_layers(); ++l) {
      dW_.emplace_back(mlp_.weights[l].rows(), mlp_.weights[l].cols());
      db_.emplace_back(1, mlp_.weights[l].cols());
    }
  }
  if (zero) {
    for (auto& g : dW_) g.setZero();
    for (auto& g : db_) g.setZero();
  }
}

void Tower::add_table_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs) {
  for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
    jobs.push_back(bag_tables_[i].bag_gradient_step(bag_grads_[i], opt));
  }
}

void Tower::add_dense_steps(const OptimizerConfig& opt, std::vector<UpdateJob>& jobs) {
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    jobs.push_back(mlp_.step_and_pack(l, dW_[l].data(), opt, ws_, schema_.n_dense));
    jobs.push_back(mlp_.biases[l].dense_step(db_[l].data(), opt));
  }
  for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
    jobs.push_back(categorical_tables_[i].row_gradient_step(cat_grads_[i], opt));
  }
  ws_.packs_current = false;  // until every step has run (steps_done)
}

void Tower::add_table_gradients(std::vector<RowMatrixXf>& out, std::size_t first,
                                int num_threads) {
  std::size_t g = first + 2 * static_cast<std::size_t>(mlp_.num_layers());
  auto scatter = [&](RowGradient& rg, RowMatrixXf& dst) {
    rg.materialize(num_threads);
    for (index_t i = 0; i < rg.size(); ++i) {
      dst.row(rg.rows()[i]) +=
          Eigen::Map<const Eigen::RowVectorXf>(rg.grad() + i * dst.cols(), dst.cols());
    }
  };
  for (auto& rg : cat_grads_) scatter(rg, out[g++]);
  for (auto& bg : bag_grads_) {
    RowMatrixXf& dst = out[g++];
    parallel_for(BagGradient::kParts, num_threads,
                 [&](std::int64_t q, int) { bg.collect(static_cast<int>(q)); });
    for (int q = 0; q < BagGradient::kParts; ++q) scatter(bg.part(q), dst);
  }
}

void Tower::copy_mlp_gradients(std::vector<RowMatrixXf>& out, std::size_t first) const {
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    out[first + 2 * l] = dW_[l];
    out[first + 2 * l + 1] = db_[l];
  }
}

}  // namespace fastsoftmax
