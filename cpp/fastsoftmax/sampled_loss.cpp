#include "fastsoftmax/sampled_loss.h"

#include <algorithm>
#include <cmath>

#include "fastsoftmax/random.h"

namespace fastsoftmax {

std::uint64_t batch_seed(std::uint64_t seed, std::uint64_t batch_index) {
  return mix64(seed ^ mix64(batch_index ^ 0x6A09E667F3BCC909ULL));
}

SampledSoftmaxLoss::SampledSoftmaxLoss(index_t n_items, const SampledLossConfig& config)
    : n_items_(n_items), config_(config) {
  const std::string& s = config.sampler;
  auto& so = config_.sampler_options;
  if (s == "uniform") {
    so.kind = SamplerKind::kUniform;
  } else if (s == "popularity" || s == "weights") {
    so.kind = SamplerKind::kWeights;
  } else if (s == "in_batch") {
    so.kind = SamplerKind::kInBatch;
  } else if (s == "score") {
    so.kind = SamplerKind::kScore;
  } else {
    throw_invalid("sampler: expected one of 'uniform', 'popularity', 'weights', 'in_batch', ",
                  "'score', got '", s, "'");
  }
  if (!(config.sampler_alpha >= 0) || !std::isfinite(config.sampler_alpha)) {
    throw_invalid("sampler_alpha: expected a finite value >= 0, got ", config.sampler_alpha);
  }
  if (!config.sampler_weights.empty() &&
      static_cast<index_t>(config.sampler_weights.size()) != n_items) {
    throw_invalid("sampler_weights: expected ", n_items, " weights (n_items), got ",
                  config.sampler_weights.size());
  }
  if (s == "weights" && config.sampler_weights.empty()) {
    throw_invalid("sampler_weights: sampler='weights' needs one weight per item");
  }
  if (s == "popularity" || s == "in_batch") {
    // Validate the options now; the proposal itself comes from the training targets.
    std::vector<double> ones(static_cast<std::size_t>(n_items), 1.0);
    SampledSoftmax check(n_items, so, ones.data(), config_.loss_options);
    return;
  }
  build(config.sampler_weights.empty() ? nullptr : config.sampler_weights.data());
}

void SampledSoftmaxLoss::build(const double* weights) {
  impl_ = std::make_unique<SampledSoftmax>(n_items_, config_.sampler_options, weights,
                                           config_.loss_options);
}

void SampledSoftmaxLoss::prepare(const TargetsView& all, const ItemParamsView& items) {
  const std::string& s = config_.sampler;
  if (s != "popularity" && s != "in_batch") return;
  // The streaming estimate continues across fit calls (partial_fit): it needs no targets.
  if (config_.sampler_options.streaming && impl_) return;
  // Number of training rows with item j as a positive.
  std::vector<double> counts(static_cast<std::size_t>(n_items_), 0.0);
  const index_t nnz = all.indptr[all.rows];
  for (index_t k = 0; k < nnz; ++k) counts[all.indices[k]] += 1.0;
  if (s == "popularity" && config_.sampler_alpha != 1.0) {
    for (auto& c : counts) c = c > 0 ? std::pow(c, config_.sampler_alpha) : 0.0;
  }
  bool any = false;
  for (const auto c : counts) any = any || c > 0;
  if (!any) throw_invalid("targets: no positive entries to build the '", s, "' proposal from");
  build(counts.data());
}

void SampledSoftmaxLoss::require_prepared() const {
  if (!impl_) {
    throw_invalid("sampler: '", config_.sampler,
                  "' is built from the training targets; call fit first");
  }
}

void SampledSoftmaxLoss::observe(const TargetsView& targets, const LossContext& ctx) {
  const auto step = static_cast<std::int64_t>(ctx.batch_index) + 1;
  if (!ctx.training || !config_.sampler_options.streaming || observed_step_ == step) return;
  impl_->observe(targets, step);
  observed_step_ = step;
}

bool SampledSoftmaxLoss::candidates(const TargetsView& targets, const LossContext& ctx,
                                    const float* psi, std::vector<index_t>* ids) {
  require_prepared();
  observe(targets, ctx);
  if (config_.sampler_options.kind == SamplerKind::kScore) return false;
  const NegativeDraws& draws =
      impl_->draw(SampledBatch{psi, ItemParamsView{n_items_, 0, nullptr, nullptr}, targets},
                  batch_seed(ctx.seed, ctx.batch_index), ctx.num_threads, ctx.rows);
  distinct_target_items(targets, ids);
  ids->insert(ids->end(), draws.ids.begin(), draws.ids.end());
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
  return true;
}

double SampledSoftmaxLoss::forward_backward(const ConstMapRowMatrixXf& psi,
                                            const ItemParamsView& items,
                                            const TargetsView& targets, const LossContext& ctx,
                                            MapRowMatrixXf* dpsi, ItemGradient* item_grad) {
  require_prepared();
  observe(targets, ctx);
  const bool backward = dpsi != nullptr && item_grad != nullptr;
  if (backward) {
    item_grad->kind = ItemGradient::Kind::kRowSparse;
    item_grad->deferred = nullptr;
  }
  SampledGradients out;
  if (backward) {
    out.dpsi = dpsi->data();
    out.item_rows = &item_grad->rows;
    out.item_grad = &item_grad->sparse_weights;
    out.item_bias_grad = &item_grad->sparse_bias;
    if (ctx.defer_item_rows) out.deferred_rows = &item_grad->deferred;
  }
  return impl_->forward_backward(SampledBatch{psi.data(), items, targets},
                                 batch_seed(ctx.seed, ctx.batch_index), ctx.grad_scale,
                                 ctx.num_threads, out, ctx.rows);
}

GravityLoss::GravityLoss(std::unique_ptr<Loss> inner, index_t n_items, double gamma,
                         index_t num_samples)
    : inner_(std::move(inner)), n_items_(n_items), gamma_(gamma), num_samples_(num_samples) {
  if (!(gamma >= 0) || !std::isfinite(gamma)) {
    throw_invalid("gravity: expected a finite value >= 0, got ", gamma);
  }
  if (num_samples < 1) throw_invalid("num_negatives: expected an integer >= 1, got ", num_samples);
}

void GravityLoss::draw_gramian_rows(const LossContext& ctx, index_t n_items) {
  Rng rng(batch_seed(ctx.seed, ctx.batch_index), 0x67726176ULL);
  ids_.resize(num_samples_);
  for (auto& id : ids_) {
    id = static_cast<index_t>(rng.uniform_int(static_cast<std::uint64_t>(n_items)));
  }
}

bool GravityLoss::candidates(const TargetsView& targets, const LossContext& ctx,
                             const float* psi, std::vector<index_t>* ids) {
  if (inner_->item_gradient_kind() == ItemGradient::Kind::kDense) return false;
  if (!inner_->candidates(targets, ctx, psi, ids)) return false;
  draw_gramian_rows(ctx, n_items_);
  ids->insert(ids->end(), ids_.begin(), ids_.end());
  std::sort(ids->begin(), ids->end());
  ids->erase(std::unique(ids->begin(), ids->end()), ids->end());
  return true;
}

double GravityLoss::forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                                     const TargetsView& targets, const LossContext& ctx,
                                     MapRowMatrixXf* dpsi, ItemGradient* item_grad) {
  double loss = inner_->forward_backward(psi, items, targets, ctx, dpsi, item_grad);
  const index_t B = targets.rows, d = items.dim, n = items.n_items;
  const bool backward = dpsi != nullptr && item_grad != nullptr;
  if (inner_->item_gradient_kind() == ItemGradient::Kind::kDense) {
    return loss + gravity_exact(psi.data(), B, d, items.weights, n, gamma_, ctx.grad_scale,
                                ctx.num_threads, backward ? dpsi->data() : nullptr,
                                backward ? item_grad->dense_weights.data() : nullptr);
  }
  // Row-sparse inner loss: item Gramian estimated on m uniform rows, (1/m) sum_s v_s v_s^T
  // (= sum_s v_s v_s^T / (m n Q) with Q = 1/n), unbiased for V^T V / n.
  const index_t m = num_samples_;
  draw_gramian_rows(ctx, n);
  rows_.resize(m, d);
  for (index_t i = 0; i < m; ++i) {
    rows_.row(i) = ConstMapRowMatrixXf(items.row(ids_[i]), 1, d);
  }
  const RowMatrixXf gram_items = (rows_.transpose() * rows_) / static_cast<float>(m);
  const RowMatrixXf gram_queries = psi.transpose() * psi;
  loss += gamma_ * static_cast<double>((gram_queries.array() * gram_items.array()).sum());
  if (!backward) return loss;
  const float c = static_cast<float>(2.0 * gamma_) * ctx.grad_scale;
  dpsi->noalias() += c * (psi * gram_items);
  grad_rows_.noalias() = (c / static_cast<float>(m)) * (rows_ * gram_queries);
  // Merge into the row-sparse gradient: union of the keys, old rows copied, new rows added.
  const index_t k_old = static_cast<index_t>(item_grad->rows.size());
  keys_.assign(item_grad->rows.begin(), item_grad->rows.end());
  keys_.insert(keys_.end(), ids_.begin(), ids_.end());
  std::sort(keys_.begin(), keys_.end());
  keys_.erase(std::unique(keys_.begin(), keys_.end()), keys_.end());
  const index_t K = static_cast<index_t>(keys_.size());
  const bool has_bias = items.bias != nullptr;
  merged_.setZero(K, d);
  merged_bias_.assign(has_bias ? K : 0, 0.0f);
  auto slot = [&](index_t j) {
    return static_cast<index_t>(std::lower_bound(keys_.begin(), keys_.end(), j) - keys_.begin());
  };
  for (index_t i = 0; i < k_old; ++i) {
    const index_t s = slot(item_grad->rows[i]);
    merged_.row(s) = item_grad->sparse_weights.row(i);
    if (has_bias) merged_bias_[s] = item_grad->sparse_bias[i];
  }
  for (index_t i = 0; i < m; ++i) merged_.row(slot(ids_[i])) += grad_rows_.row(i);
  item_grad->rows.assign(keys_.begin(), keys_.end());
  if (item_grad->sparse_weights.rows() < K || item_grad->sparse_weights.cols() != d) {
    item_grad->sparse_weights.resize(K, d);
  }
  item_grad->sparse_weights.topRows(K) = merged_;
  if (has_bias) item_grad->sparse_bias = merged_bias_;
  return loss;
}

}  // namespace fastsoftmax
