#include "fastsoftmax/loss_factory.h"

#include <utility>

namespace fastsoftmax {
namespace {

// Wraps a full / positives loss with gravity when its coefficient is not 0.
std::unique_ptr<Loss> with_gravity(std::unique_ptr<Loss> inner, const LossConfig& config,
                                   index_t n_items) {
  if (config.gravity == 0.0) return inner;
  return std::make_unique<GravityLoss>(std::move(inner), n_items, config.gravity,
                                       config.gravity_samples);
}

}  // namespace

std::unique_ptr<Loss> make_loss(const LossConfig& config, index_t n_items) {
  if (config.kind == "sampled") return std::make_unique<SampledSoftmaxLoss>(n_items, config.sampled);
  if (config.kind == "full") {
    return with_gravity(
        std::make_unique<FullSoftmaxLoss>(config.max_buffer_bytes, config.portable_kernel), config,
        n_items);
  }
  if (config.kind == "positives") {
    return with_gravity(std::make_unique<PositivesOnlyLoss>(), config, n_items);
  }
  throw_invalid("loss: expected one of 'full', 'positives', 'sampled', got '", config.kind, "'");
}

}  // namespace fastsoftmax
