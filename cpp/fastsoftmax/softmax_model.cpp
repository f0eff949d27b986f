#include "fastsoftmax/softmax_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {
namespace {

// Uniform(-a, a) fill from one random stream.
void fill_uniform(RowMatrixXf& m, float a, std::uint64_t seed, std::uint64_t stream) {
  Rng rng(seed, stream);
  float* p = m.data();
  for (index_t i = 0; i < m.size(); ++i) p[i] = a * (2.0f * rng.uniform_float() - 1.0f);
}

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

SoftmaxModel::SoftmaxModel(const SoftmaxModelConfig& config, std::unique_ptr<Loss> loss)
    : config_(config), loss_(std::move(loss)) {
  const auto& f = config_.features;
  if (config_.n_items < 1) throw_invalid("n_items: expected an integer >= 1, got ", config_.n_items);
  if (config_.dim < 1) throw_invalid("dim: expected an integer >= 1, got ", config_.dim);
  if (config_.batch_size < 1) {
    throw_invalid("batch_size: expected an integer >= 1, got ", config_.batch_size);
  }
  if (!loss_) throw_invalid("loss: expected a loss object, got none");
  if (f.n_dense < 0) throw_invalid("dense: expected >= 0 columns, got ", f.n_dense);
  if (f.categorical_vocab.size() != f.categorical_dim.size() ||
      f.categorical_names.size() != f.categorical_dim.size() ||
      f.bag_vocab.size() != f.bag_dim.size() || f.bag_names.size() != f.bag_dim.size()) {
    throw_invalid("features: names, vocabulary sizes and dimensions must have equal lengths");
  }
  index_t input = f.n_dense;
  for (std::size_t i = 0; i < f.categorical_dim.size(); ++i) {
    if (f.categorical_vocab[i] < 1 || f.categorical_dim[i] < 1) {
      throw_invalid("categorical '", f.categorical_names[i],
                    "': expected vocabulary size and embedding_dim >= 1, got ",
                    f.categorical_vocab[i], " and ", f.categorical_dim[i]);
    }
    offsets_cat_.push_back(input);
    input += f.categorical_dim[i];
  }
  for (std::size_t i = 0; i < f.bag_dim.size(); ++i) {
    if (f.bag_vocab[i] < 1 || f.bag_dim[i] < 1) {
      throw_invalid("bags '", f.bag_names[i],
                    "': expected vocabulary size and embedding_dim >= 1, got ", f.bag_vocab[i],
                    " and ", f.bag_dim[i]);
    }
    offsets_bag_.push_back(input);
    input += f.bag_dim[i];
  }
  if (input < 1) throw_invalid("features: expected at least one feature column, got none");
  const HistoryConfig& h = config_.history;
  if (h.bag < -1 || h.bag >= static_cast<index_t>(f.bag_dim.size())) {
    throw_invalid("history: expected the index of a bag feature in [0, ", f.bag_dim.size(),
                  ") or -1, got ", h.bag);
  }
  if (!(h.dropout >= 0.0f && h.dropout < 1.0f)) {
    throw_invalid("history_dropout: expected a number in [0, 1), got ", h.dropout);
  }
  std::vector<index_t> sizes{input};
  for (const index_t h : config_.hidden) {
    if (h < 1) throw_invalid("hidden: expected layer sizes >= 1, got ", h);
    sizes.push_back(h);
  }
  sizes.push_back(config_.dim);
  mlp_ = Mlp(sizes);
  for (std::size_t i = 0; i < f.categorical_dim.size(); ++i) {
    categorical_tables_.emplace_back(f.categorical_vocab[i], f.categorical_dim[i]);
  }
  for (std::size_t i = 0; i < f.bag_dim.size(); ++i) {
    bag_tables_.emplace_back(f.bag_vocab[i], f.bag_dim[i]);
  }
  items_ = Parameter(config_.n_items, config_.dim);
  if (config_.item_bias) item_bias_ = Parameter(config_.n_items, 1);

  // Initialisation: He-uniform for ReLU layers, Glorot-uniform for the output layer, biases 0;
  // embedding tables and V uniform with standard deviation 1 / sqrt(columns).
  std::uint64_t stream = kInitStream;
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    const double in = static_cast<double>(sizes[l]), out = static_cast<double>(sizes[l + 1]);
    const bool last = l + 1 == mlp_.num_layers();
    const double a = last ? std::sqrt(6.0 / (in + out)) : std::sqrt(6.0 / in);
    fill_uniform(mlp_.weights[l].value, static_cast<float>(a), config_.seed, stream++);
  }
  for (auto* tables : {&categorical_tables_, &bag_tables_}) {
    for (auto& t : *tables) {
      fill_uniform(t.value, static_cast<float>(std::sqrt(3.0 / t.cols())), config_.seed, stream++);
    }
  }
  fill_uniform(items_.value, static_cast<float>(std::sqrt(3.0 / config_.dim)), config_.seed,
               stream++);
  reset_optimizer_state();
  cat_grads_.resize(categorical_tables_.size());
  bag_grads_.resize(bag_tables_.size());
}

void SoftmaxModel::reset_optimizer_state() {
  for (auto& [name, p] : parameters()) p->reset_state(config_.optimizer);
}

std::vector<std::pair<std::string, Parameter*>> SoftmaxModel::parameters() {
  std::vector<std::pair<std::string, Parameter*>> out;
  for (index_t l = 0; l < mlp_.num_layers(); ++l) {
    out.emplace_back(str_cat("mlp.", l, ".weight"), &mlp_.weights[l]);
    out.emplace_back(str_cat("mlp.", l, ".bias"), &mlp_.biases[l]);
  }
  for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
    out.emplace_back("categorical." + config_.features.categorical_names[i],
                     &categorical_tables_[i]);
  }
  for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
    out.emplace_back("bags." + config_.features.bag_names[i], &bag_tables_[i]);
  }
  out.emplace_back("item_embeddings", &items_);
  if (config_.item_bias) out.emplace_back("item_bias", &item_bias_);
  return out;
}

ItemParamsView SoftmaxModel::item_view() const {
  return ItemParamsView{config_.n_items, config_.dim, items_.value.data(),
                        config_.item_bias ? item_bias_.value.data() : nullptr};
}

void SoftmaxModel::check_features(const FeaturesView& x) const {
  const auto& f = config_.features;
  if (f.n_dense > 0 && x.dense == nullptr) {
    throw_invalid("dense: the model was built with ", f.n_dense, " dense features, got none");
  }
  if (x.categorical.size() != f.categorical_vocab.size() || x.bags.size() != f.bag_vocab.size()) {
    throw_invalid("features: expected ", f.categorical_vocab.size(), " categorical and ",
                  f.bag_vocab.size(), " bag features, got ", x.categorical.size(), " and ",
                  x.bags.size());
  }
  for (std::size_t i = 0; i < x.categorical.size(); ++i) {
    const index_t* ids = x.categorical[i];
    for (index_t r = 0; r < x.rows; ++r) {
      if (ids[r] < 0 || ids[r] >= f.categorical_vocab[i]) {
        throw_out_of_range("categorical '", f.categorical_names[i], "': expected ids in [0, ",
                           f.categorical_vocab[i], "), got ", ids[r], " in row ", r);
      }
    }
  }
  for (std::size_t i = 0; i < x.bags.size(); ++i) {
    const BagsView& bag = x.bags[i];
    if (bag.indptr[0] != 0) throw_invalid("bags '", f.bag_names[i], "': indptr[0] must be 0");
    for (index_t r = 0; r < x.rows; ++r) {
      if (bag.indptr[r + 1] < bag.indptr[r]) {
        throw_invalid("bags '", f.bag_names[i], "': indptr must be non-decreasing (row ", r, ")");
      }
    }
    const index_t nnz = bag.indptr[x.rows];
    if (bag_entries_valid(bag.indices, bag.weights, nnz, f.bag_vocab[i])) continue;
    for (index_t k = 0; k < nnz; ++k) {
      if (bag.indices[k] < 0 || bag.indices[k] >= f.bag_vocab[i]) {
        throw_out_of_range("bags '", f.bag_names[i], "': expected ids in [0, ", f.bag_vocab[i],
                           "), got ", bag.indices[k]);
      }
      if (bag.weights && !std::isfinite(bag.weights[k])) {
        throw_invalid("bags '", f.bag_names[i], "': expected finite weights, got ",
                      bag.weights[k]);
      }
    }
  }
}

void SoftmaxModel::check_targets(const TargetsView& t, index_t expected_rows) const {
  if (t.rows != expected_rows) {
    throw_invalid("targets: expected ", expected_rows, " rows (one per feature row), got ",
                  t.rows);
  }
  if (t.indptr[0] != 0) throw_invalid("targets: indptr[0] must be 0");
  for (index_t r = 0; r < t.rows; ++r) {
    double sum = 0.0;
    if (t.indptr[r + 1] < t.indptr[r]) throw_invalid("targets: indptr must be non-decreasing");
    for (index_t k = t.indptr[r]; k < t.indptr[r + 1]; ++k) {
      const index_t j = t.indices[k];
      if (j < 0 || j >= config_.n_items) {
        throw_out_of_range("targets: expected item ids in [0, ", config_.n_items, "), got ", j);
      }
      if (k > t.indptr[r] && j <= t.indices[k - 1]) {
        throw_invalid("targets: row ", r, " has unsorted or duplicate item ids");
      }
      const float w = t.weights[k];
      if (!std::isfinite(w) || w < 0.0f) {
        throw_invalid("targets: expected finite weights >= 0, got ", w, " in row ", r);
      }
      sum += w;
    }
    if (!(sum > 0.0)) {
      throw_invalid("targets: row ", r,
                    " has no positive weight (every query needs at least one positive; drop such "
                    "rows before fitting)");
    }
    if (t.row_weights && !(std::isfinite(t.row_weights[r]) && t.row_weights[r] >= 0.0f)) {
      throw_invalid("sample_weight: expected finite weights >= 0, got ", t.row_weights[r],
                    " for row ", r);
    }
  }
}

void SoftmaxModel::prepare_loss(const TargetsView& targets) {
  std::lock_guard<std::mutex> lock(mutex_);
  loss_->prepare(targets, item_view());
}

const index_t* SoftmaxModel::bag_rows(const FeaturesView& x, std::size_t i,
                                      const index_t* rows) const {
  return static_cast<index_t>(i) == x.by_position_bag ? positions_.data() : rows;
}

void SoftmaxModel::history_kept(const FeaturesView& x, std::int64_t epoch,
                                std::uint8_t* keep) const {
  const HistoryConfig& h = config_.history;
  if (h.bag < 0) throw_invalid("history: the model has no history feature");
  const BagsView& bag = x.bags[static_cast<std::size_t>(h.bag)];
  for (index_t r = 0; r < x.rows; ++r) {
    HistoryCorruption::draw(config_.seed, epoch, r, h.dropout, bag.indptr[r + 1] - bag.indptr[r],
                            keep + bag.indptr[r]);
  }
}

void SoftmaxModel::forward_tower(const FeaturesView& x, const index_t* rows, index_t B,
                                 bool for_backward, const std::function<void()>& side_task) {
  ws_.resize(mlp_, B);
  RowMatrixXf& X = ws_.acts[0];
  const index_t stride = X.cols();
  const index_t F = config_.features.n_dense;
  // Each forward task first assembles its rows of the tower input (on its own thread).
  mlp_.forward(ws_, config_.num_threads, [&](index_t r0, index_t n) {
    for (index_t b = r0; b < r0 + n && F > 0; ++b) {
      std::copy_n(x.dense + rows[b] * F, F, X.data() + b * stride);
    }
    float* out = X.data() + r0 * stride;
    for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
      embed_categorical(categorical_tables_[i].value, x.categorical[i], rows + r0, n,
                        out + offsets_cat_[i], stride, 1);
    }
    for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
      embed_bags(bag_tables_[i].value, x.bags[i], bag_rows(x, i, rows) + r0, n, config_.pooling,
                 out + offsets_bag_[i], stride, 1);
    }
  }, for_backward ? config_.features.n_dense : -1, side_task);
}

TargetsView SoftmaxModel::gather_targets(const TargetsView& t, const index_t* rows, index_t B) {
  batch_indptr_.resize(B + 1);
  batch_indptr_[0] = 0;
  batch_indices_.clear();
  batch_weights_.clear();
  // Random rows of the targets: their indptr entries, then their entries, fetched ahead.
  constexpr index_t kAhead = 8;
  for (index_t b = 0; b < std::min(B, kAhead); ++b) __builtin_prefetch(t.indptr + rows[b]);
  for (index_t b = 0; b < B; ++b) {
    if (b + 2 * kAhead < B) __builtin_prefetch(t.indptr + rows[b + 2 * kAhead]);
    if (b + kAhead < B) {
      const index_t k = t.indptr[rows[b + kAhead]];
      __builtin_prefetch(t.indices + k);
      __builtin_prefetch(t.weights + k);
    }
    const index_t r = rows[b];
    double sum = 0.0;
    for (index_t k = t.indptr[r]; k < t.indptr[r + 1]; ++k) sum += t.weights[k];
    const double scale = (t.row_weights ? t.row_weights[r] : 1.0) / sum;
    for (index_t k = t.indptr[r]; k < t.indptr[r + 1]; ++k) {
      if (t.weights[k] > 0.0f) {
        batch_indices_.push_back(t.indices[k]);
        batch_weights_.push_back(static_cast<float>(t.weights[k] * scale));
      }
    }
    batch_indptr_[b + 1] = static_cast<index_t>(batch_indices_.size());
  }
  return TargetsView{B, batch_indptr_.data(), batch_indices_.data(), batch_weights_.data()};
}

void SoftmaxModel::backward_tower(const FeaturesView& x, const index_t* rows, index_t B,
                                  bool accumulate) {
  const RowMatrixXf& dX = ws_.grads[0];
  for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
    bag_grads_[i].begin(x.bags[i], bag_rows(x, i, rows), B, config_.pooling,
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
  mlp_.backward(ws_, dW_, db_, config_.num_threads, config_.features.n_dense, stage, accumulate);
  for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
    cat_grads_[i].reset(categorical_tables_[i].rows(), categorical_tables_[i].cols());
    embed_categorical_backward(x.categorical[i], rows, B, dX.data() + offsets_cat_[i], dX.cols(),
                               &cat_grads_[i]);
  }
}

double SoftmaxModel::fit_epoch(const FeaturesView& x, const TargetsView& targets,
                               std::int64_t epoch) {
  std::lock_guard<std::mutex> lock(mutex_);
  const index_t N = x.rows;
  const index_t bs = config_.batch_size;
  const int threads = config_.num_threads;
  const OptimizerConfig& opt = config_.optimizer;
  perm_.resize(N);
  std::iota(perm_.begin(), perm_.end(), index_t{0});
  Rng rng(config_.seed, kShuffleStream + static_cast<std::uint64_t>(epoch));
  for (index_t i = N - 1; i > 0; --i) {
    std::swap(perm_[i], perm_[static_cast<index_t>(rng.uniform_int(i + 1))]);
  }
  const index_t n_batches = (N + bs - 1) / bs;
  if (dW_.size() != mlp_.weights.size()) {
    dW_.clear();
    db_.clear();
    for (index_t l = 0; l < mlp_.num_layers(); ++l) {
      dW_.emplace_back(mlp_.weights[l].rows(), mlp_.weights[l].cols());
      db_.emplace_back(1, mlp_.weights[l].cols());
    }
  }
  // The optimiser steps below also pack the MLP's new weights for the next batch (see
  // Mlp::step_and_pack); outside this loop the weights may change (parameters are numpy views),
  // so the first forward here packs them itself and the packs are stale once this returns.
  ws_.packs_current = false;
  struct StalePacks {
    Mlp::Workspace& ws;
    ~StalePacks() { ws.packs_current = false; }
  } stale_packs{ws_};
  // With a history feature, each batch reads its corrupted history from history_ (by position).
  const HistoryConfig& hist = config_.history;
  FeaturesView xh = x;
  if (hist.bag >= 0) {
    xh.by_position_bag = hist.bag;
    if (static_cast<index_t>(positions_.size()) < bs) {
      positions_.resize(static_cast<std::size_t>(bs));
      std::iota(positions_.begin(), positions_.end(), index_t{0});
    }
  }
  double total = 0.0;
  index_t rows_seen = 0;
  for (index_t bi = 0; bi < n_batches; ++bi) {
    check_interrupt();
    const index_t* rows = perm_.data() + bi * bs;
    index_t B = std::min(bs, N - bi * bs);
    TargetsView tv;
    bool gather = true;  // by a task of the forward's region
    if (hist.bag >= 0) {
      B = history_.corrupt(hist, config_.pooling, x.bags[static_cast<std::size_t>(hist.bag)],
                           targets, rows, B, config_.seed, epoch);
      if (B == 0) continue;
      rows = history_.rows();
      xh.bags[static_cast<std::size_t>(hist.bag)] = history_.bag();
      if (hist.target == HistoryTarget::kDropped) {
        tv = history_.targets();
        gather = false;
      }
    }
    rows_seen += B;
    forward_tower(xh, rows, B, true, [&] {
      if (gather) tv = gather_targets(targets, rows, B);
    });
    LossContext ctx{config_.seed, static_cast<std::uint64_t>(epoch * n_batches + bi), threads,
                    1.0f / static_cast<float>(B)};
    ctx.defer_item_rows = true;  // the item rows' step below sums each row as it steps it
    ctx.rows = rows;
    const ConstMapRowMatrixXf psi(ws_.acts.back().data(), B, config_.dim);
    MapRowMatrixXf dpsi(ws_.grads.back().data(), B, config_.dim);
    item_grad_.deferred = nullptr;
    total += loss_->forward_backward(psi, item_view(), tv, ctx, &dpsi, &item_grad_);
    backward_tower(xh, rows, B, false);  // this batch's MLP gradients written over dW_ / db_
    // Optimiser steps of every parameter in one parallel region: the bag tables' parts (each
    // collects its staged gradient first) and the item rows, then the smaller ones.
    update_jobs_.clear();
    for (std::size_t i = 0; i < bag_tables_.size(); ++i) {
      update_jobs_.push_back(bag_tables_[i].bag_gradient_step(bag_grads_[i], opt));
    }
    if (item_grad_.kind == ItemGradient::Kind::kDense) {
      update_jobs_.push_back(items_.dense_step(item_grad_.dense_weights.data(), opt));
      if (config_.item_bias) {
        update_jobs_.push_back(item_bias_.dense_step(item_grad_.dense_bias.data(), opt));
      }
    } else {
      const index_t k = static_cast<index_t>(item_grad_.rows.size());
      update_jobs_.push_back(
          item_grad_.deferred != nullptr
              ? items_.row_gradient_step(*item_grad_.deferred, opt)
              : items_.rows_step(item_grad_.rows.data(), k, item_grad_.sparse_weights.data(), opt));
      if (config_.item_bias) {
        update_jobs_.push_back(
            item_bias_.rows_step(item_grad_.rows.data(), k, item_grad_.sparse_bias.data(), opt));
      }
    }
    for (index_t l = 0; l < mlp_.num_layers(); ++l) {
      update_jobs_.push_back(mlp_.step_and_pack(l, dW_[l].data(), opt, ws_, config_.features.n_dense));
      update_jobs_.push_back(mlp_.biases[l].dense_step(db_[l].data(), opt));
    }
    for (std::size_t i = 0; i < categorical_tables_.size(); ++i) {
      update_jobs_.push_back(categorical_tables_[i].row_gradient_step(cat_grads_[i], opt));
    }
    ws_.packs_current = false;  // until every step has run
    run_update_jobs(update_jobs_, threads);
    ws_.packs_current = true;
    ++steps_;
  }
  return rows_seen > 0 ? total / static_cast<double>(rows_seen) : 0.0;
}

void SoftmaxModel::query_embeddings(const FeaturesView& x, float* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  const index_t N = x.rows;
  const index_t bs = std::max<index_t>(config_.batch_size, 1024);
  std::vector<index_t> rows(static_cast<std::size_t>(std::min(N, bs)));
  for (index_t r0 = 0; r0 < N; r0 += bs) {
    check_interrupt();
    const index_t B = std::min(bs, N - r0);
    std::iota(rows.begin(), rows.begin() + B, r0);
    forward_tower(x, rows.data(), B);
    std::copy_n(ws_.acts.back().data(), B * config_.dim, out + r0 * config_.dim);
  }
}

double SoftmaxModel::evaluate(const FeaturesView& x, const TargetsView& targets,
                              std::uint64_t seed, std::vector<RowMatrixXf>* gradients) {
  std::lock_guard<std::mutex> lock(mutex_);
  const index_t N = x.rows;
  const index_t bs = config_.batch_size;
  auto params = parameters();
  if (gradients) {
    gradients->clear();
    for (auto& [name, p] : params) gradients->push_back(RowMatrixXf::Zero(p->rows(), p->cols()));
    dW_.clear();
    db_.clear();
    for (index_t l = 0; l < mlp_.num_layers(); ++l) {
      dW_.push_back(RowMatrixXf::Zero(mlp_.weights[l].rows(), mlp_.weights[l].cols()));
      db_.push_back(RowMatrixXf::Zero(1, mlp_.weights[l].cols()));
    }
  }
  std::vector<index_t> rows(static_cast<std::size_t>(std::min(N, bs)));
  double total = 0.0;
  const float scale = N > 0 ? 1.0f / static_cast<float>(N) : 0.0f;
  for (index_t r0 = 0, bi = 0; r0 < N; r0 += bs, ++bi) {
    check_interrupt();
    const index_t B = std::min(bs, N - r0);
    std::iota(rows.begin(), rows.begin() + B, r0);
    TargetsView tv;
    forward_tower(x, rows.data(), B, gradients != nullptr,
                  [&] { tv = gather_targets(targets, rows.data(), B); });
    LossContext ctx{seed, static_cast<std::uint64_t>(bi), config_.num_threads, scale};
    ctx.rows = rows.data();
    const ConstMapRowMatrixXf psi(ws_.acts.back().data(), B, config_.dim);
    if (!gradients) {
      total += loss_->forward_backward(psi, item_view(), tv, ctx, nullptr, nullptr);
      continue;
    }
    MapRowMatrixXf dpsi(ws_.grads.back().data(), B, config_.dim);
    total += loss_->forward_backward(psi, item_view(), tv, ctx, &dpsi, &item_grad_);
    backward_tower(x, rows.data(), B, true);  // MLP gradients accumulate in dW_ / db_
    // Scatter the row-sparse gradients into the dense outputs (parameter order as parameters()).
    std::size_t g = 2 * static_cast<std::size_t>(mlp_.num_layers());
    auto scatter = [&](RowGradient& rg, RowMatrixXf& out) {
      rg.materialize(config_.num_threads);
      for (index_t i = 0; i < rg.size(); ++i) {
        out.row(rg.rows()[i]) +=
            Eigen::Map<const Eigen::RowVectorXf>(rg.grad() + i * out.cols(), out.cols());
      }
    };
    for (auto& rg : cat_grads_) scatter(rg, (*gradients)[g++]);
    for (auto& bg : bag_grads_) {
      RowMatrixXf& out = (*gradients)[g++];
      parallel_for(BagGradient::kParts, config_.num_threads,
                   [&](std::int64_t q, int) { bg.collect(static_cast<int>(q)); });
      for (int q = 0; q < BagGradient::kParts; ++q) scatter(bg.part(q), out);
    }
    RowMatrixXf& gv = (*gradients)[g++];
    if (item_grad_.kind == ItemGradient::Kind::kDense) {
      gv += item_grad_.dense_weights;
      if (config_.item_bias) {
        (*gradients)[g] +=
            Eigen::Map<const Eigen::VectorXf>(item_grad_.dense_bias.data(), config_.n_items);
      }
    } else {
      for (std::size_t i = 0; i < item_grad_.rows.size(); ++i) {
        gv.row(item_grad_.rows[i]) += item_grad_.sparse_weights.row(static_cast<index_t>(i));
        if (config_.item_bias) (*gradients)[g](item_grad_.rows[i], 0) += item_grad_.sparse_bias[i];
      }
    }
  }
  if (gradients) {
    for (index_t l = 0; l < mlp_.num_layers(); ++l) {
      (*gradients)[2 * l] = dW_[l];
      (*gradients)[2 * l + 1] = db_[l];
    }
    dW_.clear();  // fit_epoch re-creates its own buffers
    db_.clear();
  }
  return N > 0 ? total / static_cast<double>(N) : 0.0;
}

}  // namespace fastsoftmax
