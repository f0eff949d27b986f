#pragma once
// Sampled softmax for one batch (DESIGN.md section 2), and the gravity regulariser.
//
// Candidates of query b: its positives P_b and the sampled negatives S (shared by the batch, or
// its own row of draws). Corrected logits, with m_b the number of draws that are negatives of b
// (m, or for the in-batch sampler m minus b's own entries):
//   * negatives: z'_bi = z_bi - log(m_b Q(s_i))  (the expected count of s_i among the draws);
//   * accidental hits (a draw equal to one of b's positives): masked to -inf when
//     remove_accidental_hits; otherwise kept, and the positive and each of its hits are corrected by
//     log(1 + m_b Q(j)), the expected multiplicity of j among b's candidates;
//   * positives: with accidental hits removed a positive is a candidate exactly once, with
//     certainty, so its correction is log(1) = 0.
// Without logq_correction no candidate is corrected. With these corrections the candidates'
// corrected exponentials sum to an unbiased estimate of sum_j exp(z_bj) for every m, so the
// expected gradient approaches the full-softmax gradient as m grows (measured in
// tests/test_sampled_softmax.py). DESIGN.md's z - log(m Q) on the positives too is the large-m Q
// approximation of log(1 + m Q); applied together with accidental-hit removal it would converge to
// a softmax whose denominator omits the positives, so it is not used.
//
// Loss of row b: sum_{j in P_b} y_bj (lse_b - z'_bj), lse_b over all candidates (max-shifted:
// finite for |z| ~ 1e4); its gradient in z'_bj is mass_b softmax_bj - y_bj with mass_b = sum_j y_bj
// (1 for a target distribution). Gradients reach psi_b and the rows (and bias) of V for the candidates only:
// the item gradient is row-sparse.
//
// Gravity (Krichene et al.): g_b = psi_b^T (V^T V / n) psi_b per query, coefficient gamma; summed over
// the rows like the loss, so gamma * mean_b g_b = gamma * <Psi^T Psi / B, V^T V / n>_F. Sampled
// version: V^T V / n estimated on the draws as sum_s v_s v_s^T / (D n Q(s)) (D = all draws of the
// batch), unbiased for any proposal; exact version: the full Gramian and a dense item gradient.

#include <cstdint>
#include <vector>

#include "fastsoftmax/common.h"
#include "fastsoftmax/embedding.h"
#include "fastsoftmax/negative_sampler.h"
#include "fastsoftmax/softmax_loss.h"

namespace fastsoftmax {

struct SampledSoftmaxOptions {
  bool logq_correction = true;
  bool remove_accidental_hits = true;
  double gravity = 0.0;  // gamma >= 0
};

/// The inputs of one sampled-softmax evaluation (read-only views): psi (B x d, B = targets.rows,
/// d = items.dim), the item table V (n x d) with an optional bias, and the targets: a CSR over the
/// B rows (indices strictly increasing per row, positive weights, a row's sum its mass: 1 for a
/// distribution; a row without entries contributes nothing).
struct SampledBatch {
  const float* psi = nullptr;
  ItemParamsView items;
  TargetsView targets;
};

/// Where the gradients (of grad_scale x the loss) go. dpsi (B x d) and the row-sparse item
/// gradient are overwritten: item_rows (unique ids: sorted for shared draws, first-touch order for
/// per-query draws), item_grad rows [0, item_rows.size()), item_bias_grad (with a bias).
/// dpsi == nullptr: forward only. deferred_rows != nullptr: item_grad is left alone and
/// *deferred_rows is set to the rows' contributions instead (in the workspace, valid until the next
/// call; a row's gradient is their sum, as RowGradient::sum_row; its rows() are item_rows), for an
/// optimiser that sums each row as it steps it.
struct SampledGradients {
  float* dpsi = nullptr;
  std::vector<index_t>* item_rows = nullptr;
  RowMatrixXf* item_grad = nullptr;
  std::vector<float>* item_bias_grad = nullptr;
  RowGradient** deferred_rows = nullptr;
};

/// Scratch of sampled_softmax_forward_backward, reused across batches.
struct SampledSoftmaxWorkspace {
  RowMatrixXf vs;                  // gathered rows of the shared draws (m x d)
  std::vector<float> packed_vs_t, packed_vs, packed_psi;  // panel-major kernel operands
  std::vector<float> bs;           // their bias
  std::vector<float> shared_offset;  // log(m Q(s_i)) of the shared draws
  RowMatrixXf z;                   // B x m logits, then dL/dz
  std::vector<float> pos_z;        // per target entry: corrected logit, then dL/dz
  std::vector<double> row_loss;    // per row
  std::vector<std::pair<index_t, index_t>> sorted;  // (id, column) of the shared draws
  RowMatrixXf dvs;                 // m x d item gradient of the shared draws
  std::vector<float> dbs;          // m
  std::vector<std::pair<index_t, index_t>> pos_sorted;  // (id, entry) of the targets, sorted
  std::vector<index_t> pos_row;    // batch row of each target entry
  RowGradient pq_grad;      // item gradient of per-query draws (a slot per item id)
  RowGradient shared_grad;  // item gradient of shared draws (rows in sorted id order)
  std::vector<float> grav_w;       // gravity: the draws' weights 1 / (m n Q(s))
  RowMatrixXf grav_rows;           // gravity, per-query draws: the rows of row 0's draws
  RowMatrixXf gram_items, gram_queries, tmp, grav_dpsi;
  std::vector<Eigen::ArrayXf> exp_scratch;  // per thread slot, m entries
};

/// Loss (sum over the B rows, unscaled, plus gravity) and gradients of grad_scale * loss, for the
/// negatives `draws` (from NegativeSampler::sample for this batch). pos_log_q: per target entry,
/// log Q(j) of the positive under the row's proposal (read only when logq_correction and not
/// remove_accidental_hits; may be nullptr otherwise).
double sampled_softmax_forward_backward(const SampledBatch& batch, const NegativeDraws& draws,
                                        const float* pos_log_q,
                                        const SampledSoftmaxOptions& options, float grad_scale,
                                        int num_threads, const SampledGradients& out,
                                        SampledSoftmaxWorkspace& ws);

/// A sampler and the sampled-softmax options together: draws the batch's negatives (and the
/// positives' log Q when needed), then calls sampled_softmax_forward_backward. Not thread-safe (it
/// owns its scratch); the draws depend on (seed, inputs) only.
class SampledSoftmax {
 public:
  SampledSoftmax(index_t n_items, const NegativeSamplerOptions& sampler_options,
                 const double* sampler_weights, const SampledSoftmaxOptions& options);

  const NegativeSampler& sampler() const { return sampler_; }
  const SampledSoftmaxOptions& options() const { return options_; }
  const NegativeDraws& last_draws() const { return draws_; }

  /// As sampled_softmax_forward_backward, with the negatives drawn from Rng streams of `seed`
  /// (per-query draws: row b's stream keyed by row_keys[b], or by b when nullptr).
  double forward_backward(const SampledBatch& batch, std::uint64_t seed, float grad_scale,
                          int num_threads, const SampledGradients& out,
                          const index_t* row_keys = nullptr);

  /// Draws the negatives of a batch as forward_backward does first (batch.items is not read:
  /// not for the score proposal) and keeps them: the next forward_backward with the same seed
  /// uses them instead of drawing again.
  const NegativeDraws& draw(const SampledBatch& batch, std::uint64_t seed, int num_threads,
                            const index_t* row_keys = nullptr);

  /// Training step `step` (>= 1) with these targets: advances the sampler's streaming frequency
  /// estimate (in-batch sampler with streaming; nothing otherwise).
  void observe(const TargetsView& targets, std::int64_t step) {
    sampler_.observe(targets.indices, targets.indptr[targets.rows], step);
  }

 private:
  SamplerBatch sampler_batch(const SampledBatch& batch, const index_t* row_keys) const;
  bool predrawn_ = false;  // draws_ were made by draw() for predrawn_seed_
  std::uint64_t predrawn_seed_ = 0;
  NegativeSampler sampler_;
  SampledSoftmaxOptions options_;
  NegativeDraws draws_;
  SampledSoftmaxWorkspace ws_;
  std::vector<float> pos_log_q_;
};

/// Exact gravity: returns gamma * sum_b psi_b^T (V^T V / n) psi_b; adds the gradients of
/// grad_scale times that to dpsi (B x d, may be nullptr) and to the dense item gradient dV (n x d,
/// may be nullptr). Cost O((B + n) d^2).
double gravity_exact(const float* psi, index_t B, index_t d, const float* items, index_t n_items,
                     double gamma, float grad_scale, int num_threads, float* dpsi, float* dV);

}  // namespace fastsoftmax
