#pragma once
// The one place that turns a loss configuration into a Loss: the kind ("full", "positives",
// "sampled"), its settings, and the gravity term (exact for "full", estimated on uniform item rows
// for "positives", on the draws for "sampled"). The Python layer fills a LossConfig from
// fs.SoftmaxModel's options; C++ users fill it directly.

#include <cstddef>
#include <memory>
#include <string>

#include "fastsoftmax/common.h"
#include "fastsoftmax/sampled_loss.h"
#include "fastsoftmax/softmax_loss.h"

namespace fastsoftmax {

struct LossConfig {
  std::string kind = "full";  // "full" | "positives" | "sampled"
  // Gravity coefficient (>= 0) of "full" and "positives"; "sampled" carries its own in
  // sampled.loss_options.gravity.
  double gravity = 0.0;
  index_t gravity_samples = 256;  // "positives": uniform rows the item Gramian is estimated on
  // "full": B x n logits are stored, not recomputed, when they fit in this many bytes.
  std::size_t max_buffer_bytes = std::size_t{512} << 20;
  bool portable_kernel = false;  // "full": Eigen's GEMM instead of the AVX2 kernels
  SampledLossConfig sampled;     // "sampled"
};

/// The Loss for `config` over n_items items; throws std::invalid_argument naming the bad setting.
std::unique_ptr<Loss> make_loss(const LossConfig& config, index_t n_items);

}  // namespace fastsoftmax
