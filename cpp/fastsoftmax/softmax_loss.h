#pragma once
// The loss stage of the softmax DNN: psi (B x d) and the item table V (n x d, optional bias b) in,
// loss value, dL/dpsi and the item gradient out. The training loop (softmax_model.h) owns the
// network and the optimisers and calls a Loss once per batch; every loss kind (full softmax,
// positives-only, sampled softmax, ...) is a subclass, so a new kind plugs into the same loop.
//
// Contract of Loss::forward_backward (all kinds must follow it):
// * Logits z_bj = psi_b . V_j (+ bias_j). Targets are a CSR over the B rows of the batch: row b has
//   entries (indices[k], weights[k]) for k in [indptr[b], indptr[b+1]), indptr[0] == 0, item ids
//   in [0, n_items), no duplicate id within a row, weights y_bj > 0 (the loop guarantees all of
//   this and that every row has a positive). The row's mass m_b = sum_j y_bj is 1 when the row
//   is a target distribution p_b; the loop scales a row by its row weight (SoftmaxModel's
//   row_weights). Per-row loss = sum_j y_bj (lse_b - z_bj) = m_b x the cross-entropy, over the
//   kind's candidate set (all items for "full", P_b for "positives", P_b u S for sampled); its
//   gradient in z_bj is m_b softmax_bj - y_bj.
// * Returns the SUM over the B rows of the per-row losses, in double (unscaled).
// * Gradients are those of grad_scale * (that sum): the loop passes grad_scale = 1 / B for a batch
//   step, or 1 / N when it accumulates an exact mean gradient over N rows in several batches.
// * dpsi (B x d) is OVERWRITTEN. item_grad is OVERWRITTEN, in the layout the kind announces with
//   item_gradient_kind(): dense (all n rows, for full softmax) or row-sparse (sorted unique row ids
//   + one gradient row each, for positives-only / sampled). Bias gradients are filled only when
//   items.bias != nullptr. Buffers are resized by the loss (no reallocation when the size does not
//   change, so steady-state batches do not allocate).
// * dpsi == nullptr and item_grad == nullptr means forward only (evaluation): return the loss.
// * Randomness (sampled kinds) comes only from Rng(ctx.seed, stream) with streams derived from
//   ctx.batch_index; parallel work only through parallel_for over chunks fixed independently of
//   ctx.num_threads, reduced in a fixed order: bit-identical results for a fixed seed and thread
//   count. Logits of magnitude 1e4 must give finite results (max-shifted log-sum-exp).
// * prepare(...) is called once at the start of every fit with all training targets (e.g. for
//   item popularity; these weights are the caller's raw, non-negative values, not normalised);
//   the default does nothing.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastsoftmax/common.h"

namespace fastsoftmax {

/// Read-only CSR view of targets: `rows` rows, ids in [0, n_items), positive weights.
struct TargetsView {
  index_t rows = 0;
  const index_t* indptr = nullptr;   // rows + 1 entries, indptr[0] == 0
  const index_t* indices = nullptr;  // indptr[rows] item ids
  const float* weights = nullptr;    // indptr[rows] weights y (> 0); a row's sum is its mass
  // Only in the training data the model is given (not in what a Loss sees): row r's weights are
  // normalised to a distribution and scaled by row_weights[r] (nullptr: 1) per batch.
  const float* row_weights = nullptr;
};


/// ids = the sorted distinct item ids of the targets' entries.
void distinct_target_items(const TargetsView& targets, std::vector<index_t>* ids);

/// Read-only view of the item side: V (n_items x dim, row-major) and an optional bias (n_items).
/// A model whose V is computed (item tower, compressed table) may pass only the rows a loss's
/// candidates() named, compactly: then row j of V is weights[slot[j] * dim ...] (slot is only
/// meaningful at those items). Losses that read every row (candidates() false) always get the
/// whole table (slot nullptr) and may read `weights` as n_items x dim.
struct ItemParamsView {
  index_t n_items = 0;
  index_t dim = 0;
  const float* weights = nullptr;     // V
  const float* bias = nullptr;        // nullptr: no item bias (indexed by item id)
  const std::int32_t* slot = nullptr;  // nullptr: row j of V is row j of weights

  /// Row j of V (dim floats).
  const float* row(index_t j) const {
    return weights + (slot != nullptr ? static_cast<index_t>(slot[j]) : j) * dim;
  }
};

class RowGradient;  // embedding.h

/// The gradient of the loss with respect to the item table (and bias).
struct ItemGradient {
  enum class Kind { kDense, kRowSparse };
  Kind kind = Kind::kDense;
  // kDense: dense_weights is n_items x dim, dense_bias has n_items entries (empty without bias).
  RowMatrixXf dense_weights;
  std::vector<float> dense_bias;
  // kRowSparse: rows[i] (unique, in no particular order) has gradient row sparse_weights.row(i)
  // and bias gradient sparse_bias[i]. Only the first rows.size() rows of sparse_weights are meaningful
  // (the buffer may be larger so it can be reused across batches); every other item's gradient is 0.
  std::vector<index_t> rows;
  RowMatrixXf sparse_weights;
  std::vector<float> sparse_bias;
  // kRowSparse, only when the caller allowed it (LossContext::defer_item_rows): the rows'
  // gradients as contributions (their rows() are `rows`; sparse_weights is not filled), for an
  // optimiser that sums each row as it steps it. Owned by the loss, valid until its next call.
  RowGradient* deferred = nullptr;
};

/// Per-call settings of a loss evaluation.
struct LossContext {
  std::uint64_t seed = 0;         // the model's seed
  std::uint64_t batch_index = 0;  // global batch counter (distinct per epoch and batch)
  int num_threads = 0;            // as passed to parallel_for (0 = all cores)
  float grad_scale = 1.0f;        // gradients are of grad_scale * sum of row losses
  bool defer_item_rows = false;   // a row-sparse item gradient may come as ItemGradient::deferred
  bool training = false;          // a training step: state kept across steps may advance (the
                                  // in-batch sampler's streaming frequency estimate)
  // The batch's rows in the training data (B entries, or nullptr): per-query negatives are drawn
  // per data row, so they do not depend on the row's place in a shuffled batch.
  const index_t* rows = nullptr;
};

class Loss {
 public:
  virtual ~Loss() = default;

  /// Short name ("full", "positives", "sampled", ...).
  virtual std::string name() const = 0;

  /// Layout of the item gradient this loss writes.
  virtual ItemGradient::Kind item_gradient_kind() const = 0;

  /// Called once at the start of each fit with the targets of all training rows.
  virtual void prepare(const TargetsView& all_targets, const ItemParamsView& items) {}

  /// The items whose rows of V (and bias) the next forward_backward with these targets and
  /// context reads, when they are known before V is: writes them to *ids (sorted, unique) and
  /// returns true (a sampled loss draws its negatives here and keeps them for that call). False
  /// (the default) when it reads every row or needs V to choose them (hard negatives). A model
  /// whose V is computed (an item tower) computes only these rows.
  virtual bool candidates(const TargetsView& targets, const LossContext& ctx, const float* psi,
                          std::vector<index_t>* ids) {
    return false;
  }

  /// See the contract above. psi is B x d (B == targets.rows, d == items.dim).
  virtual double forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                                  const TargetsView& targets, const LossContext& ctx,
                                  MapRowMatrixXf* dpsi, ItemGradient* item_grad) = 0;
};

/// Exact softmax over all n items. Logits are computed block by block over items in parallel
/// tasks (a fixed partition of the items); the B x n logits are kept in a buffer only when it is
/// smaller than `max_buffer_bytes`, otherwise they are recomputed in the second pass.
/// Dense item gradient.
///
/// On CPUs with AVX2 and FMA the three B x n x d products, the exponentials and the online
/// log-sum-exp run in hand-written kernels (simd_kernels.h) on an item-major layout of the logits;
/// elsewhere (or with `portable = true`) the same algorithm runs on Eigen's GEMM.
class FullSoftmaxLoss final : public Loss {
 public:
  explicit FullSoftmaxLoss(std::size_t max_buffer_bytes = std::size_t{512} << 20,
                           bool portable = false);
  std::string name() const override { return "full"; }
  ItemGradient::Kind item_gradient_kind() const override { return ItemGradient::Kind::kDense; }
  double forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                          const TargetsView& targets, const LossContext& ctx, MapRowMatrixXf* dpsi,
                          ItemGradient* item_grad) override;

 private:
  double forward_backward_simd(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                               const TargetsView& targets, const LossContext& ctx,
                               MapRowMatrixXf* dpsi, ItemGradient* item_grad);
  void reduce_dpsi(index_t n_tasks, index_t Bp, MapRowMatrixXf* dpsi) const;
  double forward_backward_eigen(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                                const TargetsView& targets, const LossContext& ctx,
                                MapRowMatrixXf* dpsi, ItemGradient* item_grad);

  std::size_t max_buffer_bytes_;
  bool simd_;
  // SIMD path (item-major: logits of item j for the batch are one row of Bp = round16(B) floats).
  std::vector<float> psi_t_;               // d x Bp, psi transposed and zero-padded
  std::vector<float> exps_;                // n x Bp exponentials when they fit the budget
  std::vector<float> task_m_, task_s_;     // per item task: running max and sum, Bp each
  std::vector<float> task_p_;              // per item task: d x Bp partial of dL/dpsi (transposed)
  std::vector<float> slot_buf_;            // per slot: block scratch, scaled psi, dV block, alpha
  RowMatrixXf logits_;                     // B x n when it fits the budget
  std::vector<float> row_max_, row_sum_;   // per item task and row: max logit, sum exp(z - max)
  std::vector<float> lse_;                 // per row: log-sum-exp over all items
  std::vector<float> coef_;                // per row: grad_scale x the row's mass
  std::vector<float> block_max_;           // per item block and row: max of the stored exps
  std::vector<RowMatrixXf> scaled_psi_;    // per-slot B x d scratch
  std::vector<RowMatrixXf> partial_dpsi_;  // one B x d partial per item task
  std::vector<RowMatrixXf> scratch_;       // per-slot B x block scratch
};

/// Softmax restricted to each query's positives P_b (positives-only training: cheap, but folds).
/// Row-sparse item gradient over the unique positives of the batch.
class PositivesOnlyLoss final : public Loss {
 public:
  std::string name() const override { return "positives"; }
  ItemGradient::Kind item_gradient_kind() const override { return ItemGradient::Kind::kRowSparse; }
  bool candidates(const TargetsView& targets, const LossContext& ctx, const float* psi,
                  std::vector<index_t>* ids) override;
  double forward_backward(const ConstMapRowMatrixXf& psi, const ItemParamsView& items,
                          const TargetsView& targets, const LossContext& ctx, MapRowMatrixXf* dpsi,
                          ItemGradient* item_grad) override;

 private:
  std::vector<float> dz_;          // scratch: dL/dz per target entry
  std::vector<double> row_loss_;  // scratch: loss per row
};

}  // namespace fastsoftmax
