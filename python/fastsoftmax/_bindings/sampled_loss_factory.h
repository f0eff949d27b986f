#pragma once
// Builds the sampled-softmax loss and the gravity wrapper from the loss_options dict that
// fs.SoftmaxModel passes to _core.SoftmaxModel (used by bind_softmax_model.cpp's make_loss).
#include <memory>
#include <string>
#include <vector>

#include "binding_utils.h"
#include "fastsoftmax/sampled_loss.h"

namespace fastsoftmax::py {

/// loss="sampled": every key of `options` is consumed; unknown keys are an error.
inline std::unique_ptr<Loss> make_sampled_loss(index_t n_items, const pyb::dict& options) {
  SampledLossConfig c;
  std::size_t used = 0;
  auto take = [&](const char* key) -> pyb::object {
    if (!options.contains(key)) return pyb::none();
    ++used;
    return options[key];
  };
  pyb::object v;
  if (!(v = take("sampler")).is_none()) c.sampler = v.cast<std::string>();
  if (!(v = take("sampler_alpha")).is_none()) c.sampler_alpha = v.cast<double>();
  if (!(v = take("sampler_weights")).is_none()) {
    auto w = require_array<double>(v, "sampler_weights", 1);
    c.sampler_weights.assign(w.data(), w.data() + w.shape(0));
  }
  auto& so = c.sampler_options;
  if (!(v = take("num_negatives")).is_none()) so.num_negatives = v.cast<index_t>();
  if (!(v = take("share_negatives")).is_none()) so.share = v.cast<bool>();
  if (!(v = take("hard_pool")).is_none()) so.hard_pool = v.cast<index_t>();
  if (!(v = take("temperature")).is_none()) so.temperature = v.cast<double>();
  if (!(v = take("hard_fraction")).is_none()) so.hard_fraction = v.cast<double>();
  auto& lo = c.loss_options;
  if (!(v = take("logq_correction")).is_none()) lo.logq_correction = v.cast<bool>();
  if (!(v = take("remove_accidental_hits")).is_none()) lo.remove_accidental_hits = v.cast<bool>();
  if (!(v = take("gravity")).is_none()) lo.gravity = v.cast<double>();
  if (options.size() != used) {
    throw std::invalid_argument(str_cat("loss_options: unexpected options for loss 'sampled': ",
                                        std::string(pyb::str(options))));
  }
  return std::make_unique<SampledSoftmaxLoss>(n_items, c);
}

/// Removes "gravity" and "num_negatives" from `options` (a copy is made); returns the copy and
/// the values (gravity 0 when absent).
inline pyb::dict pop_gravity_options(const pyb::dict& options, double* gravity,
                                     index_t* num_samples) {
  auto copy = pyb::reinterpret_steal<pyb::dict>(PyDict_Copy(options.ptr()));
  *gravity = 0.0;
  *num_samples = 256;
  if (copy.contains("gravity")) *gravity = pyb::cast<double>(copy.attr("pop")("gravity"));
  if (copy.contains("num_negatives")) {
    *num_samples = pyb::cast<index_t>(copy.attr("pop")("num_negatives"));
  }
  return copy;
}

/// Wraps a full / positives loss with gravity when gravity > 0.
inline std::unique_ptr<Loss> with_gravity(std::unique_ptr<Loss> inner, double gravity,
                                          index_t num_samples) {
  if (gravity == 0.0) return inner;
  return std::make_unique<GravityLoss>(std::move(inner), gravity, num_samples);
}

}  // namespace fastsoftmax::py
