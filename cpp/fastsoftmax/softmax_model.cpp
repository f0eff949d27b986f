#include "fastsoftmax/softmax_model.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fastsoftmax/random.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax {

SoftmaxModel::SoftmaxModel(const SoftmaxModelConfig& config, std::unique_ptr<Loss> loss)
    : config_(config), loss_(std::move(loss)) {
  if (config_.n_items < 1) throw_invalid("n_items: expected an integer >= 1, got ", config_.n_items);
  if (config_.dim < 1) throw_invalid("dim: expected an integer >= 1, got ", config_.dim);
  if (config_.batch_size < 1) {
    throw_invalid("batch_size: expected an integer >= 1, got ", config_.batch_size);
  }
  if (!loss_) throw_invalid("loss: expected a loss object, got none");
  query_ = Tower(config_.features, config_.pooling, config_.hidden, config_.dim, "");
  const HistoryConfig& h = config_.history;
  const auto n_bags = config_.features.bag_dim.size();
  if (h.bag < -1 || h.bag >= static_cast<index_t>(n_bags)) {
    throw_invalid("history: expected the index of a bag feature in [0, ", n_bags,
                  ") or -1, got ", h.bag);
  }
  if (!(h.dropout >= 0.0f && h.dropout < 1.0f)) {
    throw_invalid("history_dropout: expected a number in [0, 1), got ", h.dropout);
  }
  if (config_.item_tower && config_.item_buckets > 0) {
    throw_invalid("item_embedding: a compressed item table is not available with item features");
  }
  if (config_.item_tower) {
    if (config_.item_bias) {
      throw_invalid("item_bias: not available with item features (a new item would have none)");
    }
    if (!(config_.item_id_dropout >= 0.0f && config_.item_id_dropout < 1.0f)) {
      throw_invalid("item_id_dropout: expected a number in [0, 1), got ", config_.item_id_dropout);
    }
    // The id embeddings start at 0: the tower's output is where every item starts.
    if (config_.item_id_embedding) items_ = Parameter(config_.n_items, config_.dim);
    item_tower_ = Tower(config_.item_features, config_.pooling, config_.item_hidden, config_.dim,
                        "item_features");
  } else {
    if (config_.item_buckets > 0) {
      qr_ = QrItemTable(config_.n_items, config_.dim, config_.item_buckets, config_.item_dedicated);
    } else {
      items_ = Parameter(config_.n_items, config_.dim);
    }
    if (config_.item_bias) item_bias_ = Parameter(config_.n_items, 1);
  }
  // Initialisation (tower.h); the item table uniform with standard deviation 1 / sqrt(dim).
  std::uint64_t stream = kInitStream;
  query_.initialize(config_.seed, stream);
  if (config_.item_tower) {
    item_tower_.initialize(config_.seed, stream);
  } else if (config_.item_buckets > 0) {
    qr_.initialize(config_.seed, stream);
  } else {
    fill_uniform(items_.value, static_cast<float>(std::sqrt(3.0 / config_.dim)), config_.seed,
                 stream++);
  }
  reset_optimizer_state();
}

void SoftmaxModel::reset_optimizer_state() {
  for (auto& [name, p] : parameters()) p->reset_state(config_.optimizer);
}

std::vector<std::pair<std::string, Parameter*>> SoftmaxModel::parameters() {
  std::vector<std::pair<std::string, Parameter*>> out;
  query_.parameters("", out);
  if (config_.item_tower) {
    item_tower_.parameters("item_tower.", out);
    if (config_.item_id_embedding) out.emplace_back("item_id_embeddings", &items_);
  } else {
    if (config_.item_buckets > 0) {
      qr_.parameters(out);
    } else {
      out.emplace_back("item_embeddings", &items_);
    }
    if (config_.item_bias) out.emplace_back("item_bias", &item_bias_);
  }
  return out;
}

void SoftmaxModel::check_item_features(const FeaturesView& x) const {
  if (!config_.item_tower) throw_invalid("item_features: the model has no item tower");
  item_tower_.check_features(x);
}

void SoftmaxModel::draw_ids(const index_t* rows, index_t C, std::uint64_t batch_index,
                            bool training) {
  id_kept_.assign(static_cast<std::size_t>(C), config_.item_id_embedding ? 1 : 0);
  if (!config_.item_id_embedding || !training || config_.item_id_dropout == 0.0f) return;
  const double p = config_.item_id_dropout;
  const std::uint64_t key = mix64(mix64(config_.seed ^ 0x69642D64726F70ULL) ^ batch_index);
  for (index_t c = 0; c < C; ++c) {
    const auto j = static_cast<std::uint64_t>(rows[c]);
    const double u = static_cast<double>(mix64(key ^ j) >> 11) * 0x1.0p-53;
    id_kept_[static_cast<std::size_t>(c)] = u >= p;
  }
}

const FeaturesView& SoftmaxModel::require_items(const FeaturesView* items) const {
  if (!config_.item_tower) return *items;  // unused
  if (items == nullptr) throw_invalid("item_features: the model's item tower needs them");
  if (items->rows != config_.n_items) {
    throw_invalid("item_features: expected ", config_.n_items, " rows (n_items), got ",
                  items->rows);
  }
  return *items;
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
  if (computed_items()) {
    // Losses that build proposals from the targets do not read V in prepare().
    loss_->prepare(targets, ItemParamsView{config_.n_items, config_.dim, nullptr, nullptr});
  } else {
    loss_->prepare(targets, ItemParamsView{config_.n_items, config_.dim, items_.value.data(),
                                           config_.item_bias ? item_bias_.value.data() : nullptr});
  }
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

ItemParamsView SoftmaxModel::item_view(const TargetsView& targets, const LossContext& ctx,
                                       const float* psi, const FeaturesView* items,
                                       bool for_backward, bool training) {
  const index_t n = config_.n_items, d = config_.dim;
  const float* bias = config_.item_bias ? item_bias_.value.data() : nullptr;
  if (!computed_items()) return ItemParamsView{n, d, items_.value.data(), bias};
  tower_all_ = !loss_->candidates(targets, ctx, psi, &tower_rows_);
  if (tower_all_ && static_cast<index_t>(all_items_.size()) != n) {
    all_items_.resize(static_cast<std::size_t>(n));
    std::iota(all_items_.begin(), all_items_.end(), index_t{0});
  }
  const index_t* rows = tower_all_ ? all_items_.data() : tower_rows_.data();
  const index_t C = tower_all_ ? n : static_cast<index_t>(tower_rows_.size());
  item_values_.resize(static_cast<std::size_t>(C * d));
  if (config_.item_tower) {
    item_tower_.forward(require_items(items), rows, C, ctx.num_threads, for_backward);
    draw_ids(rows, C, ctx.batch_index, training);
    tower_values(rows, C);
  } else {
    qr_.materialize(rows, C, item_values_.data(), ctx.num_threads);
  }
  if (tower_all_) return ItemParamsView{n, d, item_values_.data(), bias};
  // The loss reads the candidates' rows through their slots (a compact table, not n x d).
  if (static_cast<index_t>(item_slot_.size()) != n) {
    item_slot_.assign(static_cast<std::size_t>(n), 0);
  }
  for (index_t c = 0; c < C; ++c) {
    item_slot_[static_cast<std::size_t>(rows[c])] = static_cast<std::int32_t>(c);
  }
  return ItemParamsView{n, d, item_values_.data(), bias, item_slot_.data()};
}

void SoftmaxModel::tower_values(const index_t* rows, index_t C) {
  // The tower's output, plus the kept id embeddings.
  const index_t d = config_.dim;
  const float* out = item_tower_.output().data();
  std::copy_n(out, C * d, item_values_.data());
  for (index_t c = 0; c < C; ++c) {
    if (!id_kept_[static_cast<std::size_t>(c)]) continue;
    float* v = item_values_.data() + c * d;
    const float* e = items_.value.data() + rows[c] * d;
    for (index_t k = 0; k < d; ++k) v[k] += e[k];
  }
}

void SoftmaxModel::computed_items_backward(const FeaturesView& items, bool accumulate) {
  if (config_.item_tower) {
    item_tower_backward(items, accumulate);
    return;
  }
  if (item_grad_.kind == ItemGradient::Kind::kDense) {
    qr_.backward(all_items_.data(), config_.n_items, item_grad_.dense_weights.data(),
                 config_.num_threads);
  } else {
    qr_.backward(item_grad_.rows.data(), static_cast<index_t>(item_grad_.rows.size()),
                 item_grad_.sparse_weights.data(), config_.num_threads);
  }
}

void SoftmaxModel::item_tower_backward(const FeaturesView& x, bool accumulate) {
  const index_t d = config_.dim;
  const index_t* rows = tower_all_ ? all_items_.data() : tower_rows_.data();
  const index_t C = tower_all_ ? config_.n_items : static_cast<index_t>(tower_rows_.size());
  float* dout = item_tower_.output_grad();
  if (item_grad_.kind == ItemGradient::Kind::kDense) {
    // Dense gradient over all items: the tower ran over all of them, in item order.
    std::copy_n(item_grad_.dense_weights.data(), C * d, dout);
  } else {
    std::fill_n(dout, C * d, 0.0f);
    for (std::size_t i = 0; i < item_grad_.rows.size(); ++i) {
      const index_t j = item_grad_.rows[i];
      const index_t c = tower_all_ ? j : item_slot_[static_cast<std::size_t>(j)];
      const float* g = item_grad_.sparse_weights.data() + static_cast<index_t>(i) * d;
      for (index_t e = 0; e < d; ++e) dout[c * d + e] += g[e];
    }
  }
  item_tower_.backward(x, rows, C, config_.num_threads, accumulate);
  // The kept id embeddings get their rows' gradient dL/dV_j.
  id_rows_.clear();
  for (index_t c = 0; c < C; ++c) {
    if (id_kept_[static_cast<std::size_t>(c)]) id_rows_.push_back(rows[c]);
  }
  const auto k = static_cast<index_t>(id_rows_.size());
  if (id_grad_.rows() < k || id_grad_.cols() != d) id_grad_.resize(std::max<index_t>(k, 1), d);
  for (index_t c = 0, i = 0; c < C; ++c) {
    if (id_kept_[static_cast<std::size_t>(c)]) std::copy_n(dout + c * d, d, id_grad_.data() + d * i++);
  }
}

void SoftmaxModel::add_item_table_steps(const OptimizerConfig& opt) {
  const bool dense = item_grad_.kind == ItemGradient::Kind::kDense;
  const index_t k = static_cast<index_t>(item_grad_.rows.size());
  if (config_.item_buckets > 0) {
    qr_.add_steps(opt, update_jobs_);
  } else if (dense) {
    update_jobs_.push_back(items_.dense_step(item_grad_.dense_weights.data(), opt));
  } else {
    update_jobs_.push_back(
        item_grad_.deferred != nullptr
            ? items_.row_gradient_step(*item_grad_.deferred, opt)
            : items_.rows_step(item_grad_.rows.data(), k, item_grad_.sparse_weights.data(), opt));
  }
  if (!config_.item_bias) return;
  update_jobs_.push_back(dense ? item_bias_.dense_step(item_grad_.dense_bias.data(), opt)
                               : item_bias_.rows_step(item_grad_.rows.data(), k,
                                                      item_grad_.sparse_bias.data(), opt));
}

void SoftmaxModel::step(const OptimizerConfig& opt) {
  // Optimiser steps of every parameter in one parallel region: the bag tables' parts (each
  // collects its staged gradient first) and the item rows, then the smaller ones.
  update_jobs_.clear();
  query_.add_table_steps(opt, update_jobs_);
  if (config_.item_tower) {
    item_tower_.add_table_steps(opt, update_jobs_);
    if (!id_rows_.empty()) {
      update_jobs_.push_back(items_.rows_step(id_rows_.data(), static_cast<index_t>(id_rows_.size()),
                                              id_grad_.data(), opt));
    }
    item_tower_.add_dense_steps(opt, update_jobs_);
  } else {
    add_item_table_steps(opt);
  }
  query_.add_dense_steps(opt, update_jobs_);
  run_update_jobs(update_jobs_, config_.num_threads);
  query_.steps_done();
  if (config_.item_tower) item_tower_.steps_done();
}

double SoftmaxModel::fit_epoch(const FeaturesView& x, const TargetsView& targets,
                               std::int64_t epoch, const FeaturesView* items) {
  std::lock_guard<std::mutex> lock(mutex_);
  const FeaturesView& item_x = require_items(items);
  const index_t N = x.rows;
  const index_t bs = config_.batch_size;
  const int threads = config_.num_threads;
  perm_.resize(N);
  std::iota(perm_.begin(), perm_.end(), index_t{0});
  Rng rng(config_.seed, kShuffleStream + static_cast<std::uint64_t>(epoch));
  for (index_t i = N - 1; i > 0; --i) {
    std::swap(perm_[i], perm_[static_cast<index_t>(rng.uniform_int(i + 1))]);
  }
  const index_t n_batches = (N + bs - 1) / bs;
  query_.prepare_gradients(false);
  // The optimiser steps below also pack the MLPs' new weights for the next batch (see
  // Mlp::step_and_pack); outside this loop the weights may change (parameters are numpy views),
  // so the first forward here packs them itself and the packs are stale once this returns.
  struct StalePacks {
    SoftmaxModel& m;
    ~StalePacks() {
      m.query_.invalidate_packs();
      m.item_tower_.invalidate_packs();
    }
  } stale_packs{*this};
  query_.invalidate_packs();
  item_tower_.invalidate_packs();
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
    query_.forward(xh, rows, B, threads, true, [&] {
      if (gather) tv = gather_targets(targets, rows, B);
    }, positions_.data());
    LossContext ctx{config_.seed, static_cast<std::uint64_t>(epoch * n_batches + bi), threads,
                    1.0f / static_cast<float>(B)};
    // The item rows' step sums each row as it steps it; the item tower needs the rows summed.
    ctx.defer_item_rows = !computed_items();
    ctx.training = true;
    ctx.rows = rows;
    const ConstMapRowMatrixXf psi(query_.output().data(), B, config_.dim);
    MapRowMatrixXf dpsi(query_.output_grad(), B, config_.dim);
    const ItemParamsView iv = item_view(tv, ctx, psi.data(), items, true, true);
    item_grad_.deferred = nullptr;
    total += loss_->forward_backward(psi, iv, tv, ctx, &dpsi, &item_grad_);
    query_.backward(xh, rows, B, threads, false, positions_.data());  // written over dW / db
    if (computed_items()) computed_items_backward(item_x, false);
    step(config_.optimizer);
    ++steps_;
  }
  return rows_seen > 0 ? total / static_cast<double>(rows_seen) : 0.0;
}

void SoftmaxModel::embed_rows(Tower& tower, const FeaturesView& x, float* out) {
  const index_t N = x.rows, d = config_.dim;
  const index_t bs = std::max<index_t>(config_.batch_size, 1024);
  std::vector<index_t> rows(static_cast<std::size_t>(std::min(N, bs)));
  for (index_t r0 = 0; r0 < N; r0 += bs) {
    check_interrupt();
    const index_t B = std::min(bs, N - r0);
    std::iota(rows.begin(), rows.begin() + B, r0);
    tower.forward(x, rows.data(), B, config_.num_threads);
    std::copy_n(tower.output().data(), B * d, out + r0 * d);
  }
}

void SoftmaxModel::query_embeddings(const FeaturesView& x, float* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  embed_rows(query_, x, out);
}

void SoftmaxModel::item_rows(index_t begin, index_t end, float* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (config_.item_buckets <= 0) {
    throw_invalid("item_rows: the model has no compressed item table");
  }
  if (begin < 0 || end < begin || end > config_.n_items) {
    throw_out_of_range("item_rows: expected 0 <= begin <= end <= n_items = ", config_.n_items,
                       ", got [", begin, ", ", end, ")");
  }
  constexpr index_t kBlock = 4096;
  std::vector<index_t> rows(static_cast<std::size_t>(std::min(kBlock, end - begin)));
  for (index_t j0 = begin; j0 < end; j0 += kBlock) {
    check_interrupt();
    const index_t C = std::min(kBlock, end - j0);
    std::iota(rows.begin(), rows.begin() + C, j0);
    qr_.materialize(rows.data(), C, out + (j0 - begin) * config_.dim, config_.num_threads);
  }
}

void SoftmaxModel::item_embeddings(const FeaturesView& items, float* out, bool own_ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!config_.item_tower) throw_invalid("item_features: the model has no item tower");
  if (own_ids) require_items(&items);
  embed_rows(item_tower_, items, out);
  if (own_ids && config_.item_id_embedding) {  // + E_j (new items have none)
    const float* e = items_.value.data();
    for (index_t i = 0; i < items.rows * config_.dim; ++i) out[i] += e[i];
  }
}

void SoftmaxModel::add_item_gradients(std::vector<RowMatrixXf>& gradients, std::size_t g) {
  if (config_.item_tower) {
    item_tower_.add_table_gradients(gradients, g, config_.num_threads);
    if (config_.item_id_embedding) {
      RowMatrixXf& ge = gradients.back();  // item_id_embeddings: the last parameter
      for (std::size_t i = 0; i < id_rows_.size(); ++i) {
        ge.row(id_rows_[i]) += id_grad_.row(static_cast<index_t>(i));
      }
    }
    return;
  }
  const bool dense = item_grad_.kind == ItemGradient::Kind::kDense;
  std::size_t g_bias = g + 1;
  if (config_.item_buckets > 0) {
    qr_.add_gradients(gradients, g, config_.num_threads);
    g_bias = g + (config_.item_dedicated.empty() ? 2 : 3);
  } else if (dense) {
    gradients[g] += item_grad_.dense_weights;
  } else {
    for (std::size_t i = 0; i < item_grad_.rows.size(); ++i) {
      gradients[g].row(item_grad_.rows[i]) +=
          item_grad_.sparse_weights.row(static_cast<index_t>(i));
    }
  }
  if (!config_.item_bias) return;
  if (dense) {
    gradients[g_bias] +=
        Eigen::Map<const Eigen::VectorXf>(item_grad_.dense_bias.data(), config_.n_items);
    return;
  }
  for (std::size_t i = 0; i < item_grad_.rows.size(); ++i) {
    gradients[g_bias](item_grad_.rows[i], 0) += item_grad_.sparse_bias[i];
  }
}

double SoftmaxModel::evaluate(const FeaturesView& x, const TargetsView& targets,
                              std::uint64_t seed, std::vector<RowMatrixXf>* gradients,
                              const FeaturesView* items) {
  std::lock_guard<std::mutex> lock(mutex_);
  const FeaturesView& item_x = require_items(items);
  const index_t N = x.rows;
  const index_t bs = config_.batch_size;
  auto params = parameters();
  std::size_t item_first = 0;  // index of the items' first parameter
  if (gradients) {
    gradients->clear();
    for (auto& [name, p] : params) gradients->push_back(RowMatrixXf::Zero(p->rows(), p->cols()));
    std::vector<std::pair<std::string, Parameter*>> query_params;
    query_.parameters("", query_params);
    item_first = query_params.size();
    query_.prepare_gradients(true);
    if (config_.item_tower) item_tower_.prepare_gradients(true);
  }
  std::vector<index_t> rows(static_cast<std::size_t>(std::min(N, bs)));
  double total = 0.0;
  const float scale = N > 0 ? 1.0f / static_cast<float>(N) : 0.0f;
  for (index_t r0 = 0, bi = 0; r0 < N; r0 += bs, ++bi) {
    check_interrupt();
    const index_t B = std::min(bs, N - r0);
    std::iota(rows.begin(), rows.begin() + B, r0);
    TargetsView tv;
    query_.forward(x, rows.data(), B, config_.num_threads, gradients != nullptr,
                   [&] { tv = gather_targets(targets, rows.data(), B); });
    LossContext ctx{seed, static_cast<std::uint64_t>(bi), config_.num_threads, scale};
    ctx.rows = rows.data();
    const ConstMapRowMatrixXf psi(query_.output().data(), B, config_.dim);
    const ItemParamsView iv = item_view(tv, ctx, psi.data(), items, gradients != nullptr, false);
    if (!gradients) {
      total += loss_->forward_backward(psi, iv, tv, ctx, nullptr, nullptr);
      continue;
    }
    MapRowMatrixXf dpsi(query_.output_grad(), B, config_.dim);
    total += loss_->forward_backward(psi, iv, tv, ctx, &dpsi, &item_grad_);
    query_.backward(x, rows.data(), B, config_.num_threads, true);  // MLP gradients accumulate
    query_.add_table_gradients(*gradients, 0, config_.num_threads);
    if (computed_items()) computed_items_backward(item_x, true);
    add_item_gradients(*gradients, item_first);
  }
  if (gradients) {
    query_.copy_mlp_gradients(*gradients, 0);
    if (config_.item_tower) item_tower_.copy_mlp_gradients(*gradients, item_first);
  }
  return N > 0 ? total / static_cast<double>(N) : 0.0;
}

}  // namespace fastsoftmax
