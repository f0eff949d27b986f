#pragma once
// The sampled-softmax and gravity losses of the softmax DNN, behind the Loss interface of
// softmax_loss.h, and the factory the bindings use to build a loss from its options.
//
// * SampledSoftmaxLoss: negatives from a NegativeSampler (negative_sampler.h), loss and gradients
//   from sampled_softmax_forward_backward (sampled_softmax.h); row-sparse item gradient. The
//   proposals "popularity" (item counts ** alpha) and "in_batch" (positive-entry frequencies) are
//   built from the training targets in prepare(). Draws of batch i come from the seed
//   mix(ctx.seed, ctx.batch_index): deterministic per (seed, batch), independent of threads.
// * GravityLoss: wraps "full" (exact gravity: full Gramian, dense item gradient) or "positives"
//   (item Gramian estimated on num_negatives uniform rows per batch, row-sparse gradient).

#include <memory>
#include <string>
#include <vector>

#include "fastsoftmax/negative_sampler.h"
#include "fastsoftmax/sampled_softmax.h"
#include "fastsoftmax/softmax_loss.h"

namespace fastsoftmax {

/// Options of the sampled and gravity losses, as given to fs.SoftmaxModel.
struct SampledLossConfig {
  std::string sampler = "uniform";  // uniform | popularity | weights | in_batch | score
  double sampler_alpha = 0.75;
  std::vector<double> sampler_weights;  // "weights" (and the "score" pool when not empty)
  NegativeSamplerOptions sampler_options;  // kind is derived from `sampler`
  SampledSoftmaxOptions loss_options;
};

class SampledSoftmaxLoss final : public Loss {
 public:
  SampledSoftmaxLoss(index_t n_items, const SampledLossConfig& config);
  std::string name() const override { return "sampled"; }
  ItemGradient::Kind item_gradient_kind() const override { return ItemGradient::Kind::kRowSparse; }
  void prepare(const TargetsView& all_targets, const ItemParamsView& items) override;
  /// The targets' items and the batch's negatives (drawn here; not for the score proposal).
  bool candidates(const TargetsView& targets, const LossContext& ctx, const float* psi,
                  std::vector<index_t>* ids) override;
  double forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                          const TargetsView& targets, const LossContext& ctx, MapRowMatrixXf* dpsi,
                          ItemGradient* item_grad) override;

  /// True when the proposal is ready (always, except popularity / in_batch before prepare()).
  bool prepared() const { return impl_ != nullptr; }

 private:
  void build(const double* weights);
  void require_prepared() const;
  // A training step's targets feed the streaming estimate once (candidates() and
  // forward_backward() of one step both call this).
  void observe(const TargetsView& targets, const LossContext& ctx);
  std::int64_t observed_step_ = 0;
  index_t n_items_;
  SampledLossConfig config_;
  std::unique_ptr<SampledSoftmax> impl_;
};

class GravityLoss final : public Loss {
 public:
  /// `inner`: a "full" (dense) or "positives" (row-sparse) loss over n_items items; gamma > 0.
  GravityLoss(std::unique_ptr<Loss> inner, index_t n_items, double gamma, index_t num_samples);
  std::string name() const override { return inner_->name(); }
  ItemGradient::Kind item_gradient_kind() const override { return inner_->item_gradient_kind(); }
  void prepare(const TargetsView& all_targets, const ItemParamsView& items) override {
    inner_->prepare(all_targets, items);
  }
  /// The inner loss's candidates and the rows of the Gramian estimate (none for "full").
  bool candidates(const TargetsView& targets, const LossContext& ctx, const float* psi,
                  std::vector<index_t>* ids) override;
  double forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                          const TargetsView& targets, const LossContext& ctx, MapRowMatrixXf* dpsi,
                          ItemGradient* item_grad) override;

 private:
  // The batch's uniform rows of the Gramian estimate into ids_.
  void draw_gramian_rows(const LossContext& ctx, index_t n_items);
  std::unique_ptr<Loss> inner_;
  index_t n_items_;
  double gamma_;
  index_t num_samples_;
  std::vector<index_t> ids_, keys_;
  RowMatrixXf rows_, grad_rows_, merged_;
  std::vector<float> merged_bias_;
};

/// Seed of the draws of one batch: a mix of the model's seed and the batch index.
std::uint64_t batch_seed(std::uint64_t seed, std::uint64_t batch_index);

}  // namespace fastsoftmax
